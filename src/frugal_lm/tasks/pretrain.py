"""Pretraining: masked LM (MLM), MLM with next-sentence prediction (NSP), or causal LM (CLM), from scratch
(a size preset + `--tokenizer DIR`) or continued from a pretrained model (`--model minilm`).

Data: raw text (see data/corpus.py for the layouts: one sentence per line with a blank line between
documents, the default and what NSP needs; or paragraphs, or lines). It is tokenized once into an on-disk,
memory-mapped cache (Arrow via `datasets`) and training streams from it, so corpora may exceed RAM:
    mlm      [CLS] chunk [SEP] blocks of model.max_length, packed across sentences and documents
    mlm+nsp  BERT's segment pairs [CLS] A [SEP] B [SEP]: half B is A's true continuation, half a segment of
             another document (next_sentence_label 1); token type ids 0 / 1
    clm      the clm task's packing: documents framed by BOS/EOS, joined and cut into overlapping blocks
Masks are drawn per step (pretrain.mlm_probability of the non-special tokens; of those 80% [MASK], 10% a
random token, 10% kept; optionally whole words), from a generator seeded by (seed, epoch, batch, process),
so every epoch sees new masks and `--resume` reproduces them exactly. Evaluation masks are fixed, so
evaluations compare.

Metrics: mlm_loss, mlm_accuracy and mlm_perplexity (exp of mlm_loss) over masked tokens; nsp_loss and
nsp_accuracy; loss (their sum). CLM: loss per token and perplexity, computed by the clm task's code (as
`frugal perplexity`). A checkpoint without the objective's head (the bundled MiniLM is a bare encoder) gets
one initialised with the run's seed, its MLM decoder tied to the input embeddings; the log says so.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from frugal_lm.config import option
from frugal_lm.data.corpus import DOCUMENTS, OBJECTIVES, BuildSettings
from frugal_lm.errors import ConfigError, FrugalError
from frugal_lm.tasks.base import Task
from frugal_lm.tasks.labels import IGNORE

AUTO = {"mlm": "AutoModelForMaskedLM", "mlm+nsp": "AutoModelForPreTraining", "clm": "AutoModelForCausalLM"}
EVAL_EPOCH = 2**31 - 1  # the masking "epoch" of evaluation batches: fixed masks, never a training epoch's


@dataclass
class PretrainOptions:
    objective: str = option("mlm", "mlm (masked LM), mlm+nsp (BERT: masked LM and next-sentence prediction) "
                            "or clm (causal LM)", OBJECTIVES)
    documents: str = option("sentences", "text layout: sentences (one per line, a blank line between "
                            "documents: NSP draws its negatives from other documents), paragraphs (blank-line "
                            "separated, split into sentences at . ! ?), lines (each line a document)", DOCUMENTS)
    mlm_probability: float = option(0.15, "share of (non-special) tokens chosen for prediction per step")
    mask_ratio: float = option(0.8, "of the chosen tokens: share replaced by [MASK]")
    random_ratio: float = option(0.1, "of the chosen tokens: share replaced by a random token (the rest stay)")
    whole_word_mask: bool = option(False, "choose whole words: all word pieces of a chosen word are predicted")
    nsp_probability: float = option(0.5, "mlm+nsp: share of pairs whose second segment is from another document")
    short_seq_probability: float = option(0.1, "mlm+nsp: share of pairs made shorter than max_length (as BERT)")
    cache_dir: str = option("", "where tokenized corpora are cached (empty: $FRUGAL_CACHE/corpora)")
    bos_token: str = option("", "clm: token that starts each document (empty: the tokenizer's BOS)")
    eos_token: str = option("", "clm: token that ends each document (empty: the tokenizer's EOS)")


class MaskingCollator:
    """Pads pretraining rows into a batch and, for MLM, draws the masks.

    Rows hold input_ids (and token_type_ids, next_sentence_label for NSP). The attention mask comes from
    the row lengths (the pad id may be a real token, as GPT-2's). Before each batch the engine calls
    `set_position(epoch, batch, process)`; the masking generator is seeded by those and the run's seed.
    """

    def __init__(self, tokenizer: Any, pad_id: int, options: PretrainOptions | None, seed: int = 0):
        self.pad_id = pad_id
        self.options = options
        self.seed = seed
        self.position = (0, 0, 0)
        if options is None:  # clm: no masking
            return
        vocab = len(tokenizer)
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise ConfigError("pretrain.objective: masked LM needs a tokenizer with a mask token; this one has "
                              "none (use --objective clm, or a WordPiece tokenizer from `frugal tokenizer train`)")
        self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.normal = np.setdiff1d(np.arange(vocab), self.special)  # what a random replacement draws from
        self.continuation = None
        if options.whole_word_mask:
            tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
            self.continuation = word_continuations(tokens)

    def set_position(self, epoch: int, batch: int, process: int = 0) -> None:
        self.position = (epoch, batch, process)

    def pad(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attn = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = r["input_ids"]
            attn[i, :len(r["input_ids"])] = 1
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn)}
        if "token_type_ids" in rows[0]:
            types = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                types[i, :len(r["token_type_ids"])] = r["token_type_ids"]
            batch["token_type_ids"] = torch.from_numpy(types)
        if "next_sentence_label" in rows[0]:
            batch["next_sentence_label"] = torch.tensor([int(r["next_sentence_label"]) for r in rows])
        return batch

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.pad(rows)
        if self.options is not None:
            rng = np.random.default_rng([self.seed, *self.position])
            ids, labels = self.mask(batch["input_ids"].numpy(), batch["attention_mask"].numpy(), rng)
            batch["input_ids"], batch["labels"] = torch.from_numpy(ids), torch.from_numpy(labels)
        return batch

    def mask(self, ids: np.ndarray, attention: np.ndarray, rng: np.random.Generator) -> tuple[Any, Any]:
        """(masked input ids, labels: the original id where a token is to be predicted, else -100)."""
        o = self.options
        maskable = (attention == 1) & ~np.isin(ids, self.special)
        if self.continuation is not None:
            # a word = a start token and the continuation pieces after it; one draw per word
            starts = ~self.continuation[ids] | ~maskable
            word = np.cumsum(starts, axis=1)
            draws = rng.random((ids.shape[0], ids.shape[1] + 1))
            chosen = np.take_along_axis(draws, word, axis=1) < o.mlm_probability
        else:
            chosen = rng.random(ids.shape) < o.mlm_probability
        chosen &= maskable
        labels = np.where(chosen, ids, IGNORE)
        how = rng.random(ids.shape)
        out = ids.copy()
        out[chosen & (how < o.mask_ratio)] = self.mask_id
        swap = chosen & (how >= o.mask_ratio) & (how < o.mask_ratio + o.random_ratio)
        out[swap] = rng.choice(self.normal, size=int(swap.sum()))
        return out, labels


def word_continuations(tokens: list[str]) -> np.ndarray:
    """Per vocabulary id: does the token continue a word? WordPiece marks continuations with `##`;
    byte-level BPE (`Ġ`) and SentencePiece (`▁`) mark word starts instead."""
    marks_start = sum(t.startswith(("Ġ", "▁")) for t in tokens) > len(tokens) // 10
    if marks_start:
        return np.array([not t.startswith(("Ġ", "▁")) and t.isalnum() for t in tokens])
    return np.array([t.startswith("##") for t in tokens])


class PretrainTask(Task):
    """Pretraining from raw text: masked LM (+ next-sentence prediction) or causal LM."""

    name = "pretrain"
    help = "pretraining on raw text (--objective mlm | mlm+nsp | clm), from a preset or a pretrained model"
    auto_class = "AutoModelForMaskedLM"  # per instance: set by the objective
    peft_task_type = "FEATURE_EXTRACTION"
    formats = ("txt",)
    metrics: ClassVar[dict[str, str]] = {
        "loss": "min", "mlm_loss": "min", "mlm_accuracy": "max", "mlm_perplexity": "min",
        "nsp_loss": "min", "nsp_accuracy": "max", "perplexity": "min", "ppl_word": "min"}
    # Blocks are all max_length long, so grouping by length gains nothing; no frozen embeddings: the MLM
    # decoder is tied to them, and a model learning a language needs its vocabulary trained.
    defaults: ClassVar[dict[str, Any]] = {"train.metric": "loss", "train.group_by_length": False,
                                          "train.eval_batch_size": 64, "train.epochs": 1.0}
    Options = PretrainOptions

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        super().__init__(cfg, saved)
        o = self.options
        self.objective = o.objective
        self.auto_class = AUTO[o.objective]
        self.peft_task_type = "CAUSAL_LM" if o.objective == "clm" else "FEATURE_EXTRACTION"
        if not 0 < o.mlm_probability < 1:
            raise ConfigError(f"pretrain.mlm_probability: expected a share in (0, 1), got {o.mlm_probability}")
        if o.mask_ratio < 0 or o.random_ratio < 0 or o.mask_ratio + o.random_ratio > 1:
            raise ConfigError("pretrain.mask_ratio + pretrain.random_ratio: expected shares adding up to at most 1")
        self._clm = self._clm_helper() if o.objective == "clm" else None

    def _clm_helper(self) -> Any:
        """The clm task, sharing this run's config: its boundaries, loss and perplexity code are reused."""
        from frugal_lm.tasks.clm import CausalLMTask, ClmOptions

        cfg = copy.copy(self.cfg)
        docs = "lines" if self.options.documents == "lines" else "paragraphs"
        cfg.options = ClmOptions(documents=docs, bos_token=self.options.bos_token, eos_token=self.options.eos_token)
        return CausalLMTask(cfg)

    def _lm(self) -> Any:
        """The clm helper with this task's tokenizer (load_run sets the tokenizer after construction)."""
        self._clm.tokenizer = self.tokenizer
        return self._clm

    def boundaries(self) -> tuple[int | None, int | None]:
        """clm: the token ids that start and end a document (for `frugal generate` on the run)."""
        if self._clm is None:
            raise FrugalError("pretrain: only a clm run has document boundaries")
        return self._lm().boundaries()

    # -- data --------------------------------------------------------------------------------
    def cache(self) -> Path:
        from frugal_lm.models.registry import cache_dir

        return Path(self.options.cache_dir) if self.options.cache_dir else cache_dir() / "corpora"

    def settings(self) -> BuildSettings:
        tok, o = self.tokenizer, self.options
        if self.objective == "clm":
            bos, eos = self._lm().boundaries()
            return BuildSettings("clm", self.cfg.model.max_length, bos=bos, eos=eos)
        cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        if cls is None or sep is None:
            raise ConfigError("pretrain: masked LM blocks need [CLS]/[SEP] (or BOS/EOS) tokens; this tokenizer "
                              "has none")
        return BuildSettings(self.objective, self.cfg.model.max_length, seed=self.cfg.train.seed,
                             nsp_probability=o.nsp_probability, short_seq_probability=o.short_seq_probability,
                             cls=cls, sep=sep)

    def read(self, path: str, labelled: bool = True) -> Any:
        """Labelled (training / evaluation) text: the cached rows (clm: documents, for perplexity).
        Unlabelled (prediction): one text per line."""
        from frugal_lm.data.readers import read_lines

        if not labelled:
            return read_lines(path)
        if self.objective == "clm":
            return self._lm().read(path)
        from frugal_lm.data.corpus import build_dataset

        return build_dataset(path, self.tokenizer, self.options.documents, self.settings(), self.cache())

    def from_texts(self, texts: list[str]) -> list[str]:
        return list(texts)

    def prepare(self, tokenizer: Any) -> None:
        from frugal_lm.data.corpus import build_dataset

        if tokenizer.pad_token_id is None:  # GPT-2 has none; padding is masked out, so EOS serves
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        d = self.cfg.data
        if not d.train:
            raise FrugalError("data.train: no training file given (--train FILE)")
        self.train_set = build_dataset(d.train, tokenizer, self.options.documents, self.settings(), self.cache())
        self.train_count = len(self.train_set)
        if d.eval:
            self.eval_records = self.read(d.eval)
            self.eval_set = self.eval_records
        print(f"pretrain ({self.objective}): {self.train_count} training rows of up to "
              f"{self.cfg.model.max_length} tokens from {d.train}", file=sys.stderr)

    def encode(self, records: Any) -> Any:
        return records  # rows are encoded when the cache is built

    def lengths(self, examples: Any) -> list[int]:
        if hasattr(examples, "column_names") and "length" in examples.column_names:
            return examples.data.column("length").to_numpy().tolist()  # one column, not the rows
        return [len(e["input_ids"]) for e in examples]

    def collator(self) -> MaskingCollator:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return MaskingCollator(tok, pad, None if self.objective == "clm" else self.options, self.cfg.train.seed)

    # -- model -------------------------------------------------------------------------------
    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        import torch
        import transformers

        from frugal_lm.models.loading import from_pretrained
        from frugal_lm.models.presets import is_preset_dir

        auto = getattr(transformers, self.auto_class)
        model, info = from_pretrained(auto, path, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                      output_loading_info=True)
        if self.objective == "mlm+nsp" and not _has_nsp(model):
            raise ConfigError(f"pretrain.objective: {type(model).__name__} has no next-sentence head; use mlm")
        if is_preset_dir(path):
            n = sum(p.numel() for p in model.parameters())
            print(f"pretrain: {type(model).__name__} from scratch ({n / 1e6:.1f}M parameters, seed "
                  f"{self.cfg.train.seed})", file=sys.stderr)
        elif info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            where = ", ".join(sorted({k.split(".")[0] + ".*" for k in missing}))
            print(f"pretrain: the checkpoint has no {self.objective} head ({len(missing)} tensors: {where}): "
                  f"initialised it (seed {self.cfg.train.seed}); {tie_note(model)}", file=sys.stderr)
        if model.config.pad_token_id is None and self.tokenizer is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    # -- loss --------------------------------------------------------------------------------
    def count(self, batch: dict[str, Any]) -> int:
        if self._clm is not None:
            return self._lm().count(batch)
        return int((batch["labels"] != IGNORE).sum())

    def forward(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(MLM logits of the masked positions only, NSP logits or None). The vocabulary projection, most
        of a small BERT's compute, runs on the ~15% of positions that are predicted, not on all of them."""
        core = getattr(model, "get_base_model", lambda: model)()
        selected = batch["labels"] != IGNORE
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        heads = _split_heads(core) if type(model).__name__ != "DistributedDataParallel" else None
        if heads is None:  # any other masked LM: the model's own forward over all positions
            out = model(**inputs)
            logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
            nsp = getattr(out, "seq_relationship_logits", None)
            return logits[selected], nsp
        encoder, mlm_head, nsp_head = heads
        out = encoder(**inputs)
        logits = mlm_head(out.last_hidden_state[selected])
        nsp = nsp_head(out.pooler_output) if nsp_head is not None else None
        return logits, nsp

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """Summed MLM cross-entropy over masked tokens; with NSP, plus the pair loss scaled so that after
        the engine divides by the masked-token count the loss is mean MLM + mean NSP loss."""
        import torch.nn.functional as F

        if self._clm is not None:
            return self._lm().loss(model, batch)
        logits, nsp = self.forward(model, batch)
        target = batch["labels"][batch["labels"] != IGNORE]
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        n = int(target.numel())
        if self.objective == "mlm+nsp" and nsp is not None:
            nsp_loss = F.cross_entropy(nsp.float(), batch["next_sentence_label"], reduction="sum")
            loss = loss + nsp_loss * (max(1, n) / len(batch["next_sentence_label"]))
        return loss, n

    # -- evaluation and use ------------------------------------------------------------------
    def evaluate(self, model: Any, records: Any = None, device: Any = None) -> dict[str, Any]:
        import math

        import torch
        import torch.nn.functional as F

        records = self.eval_records if records is None else records
        if self._clm is not None:
            return self._lm().evaluate(model, records, device)
        device = device or next(model.parameters()).device
        collate = self.collator()
        size = self.cfg.train.eval_batch_size
        sums = {"mlm": 0.0, "correct": 0, "masked": 0, "nsp": 0.0, "nsp_correct": 0, "pairs": 0}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for b, start in enumerate(range(0, len(records), size)):
                collate.set_position(EVAL_EPOCH, b)
                rows = records[start:start + size]
                rows = [dict(zip(rows, v, strict=True)) for v in zip(*rows.values(), strict=True)] \
                    if isinstance(rows, dict) else rows
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                logits, nsp = self.forward(model, batch)
                target = batch["labels"][batch["labels"] != IGNORE]
                sums["mlm"] += float(F.cross_entropy(logits.float(), target, reduction="sum"))
                sums["correct"] += int((logits.argmax(-1) == target).sum())
                sums["masked"] += int(target.numel())
                if self.objective == "mlm+nsp" and nsp is not None:
                    y = batch["next_sentence_label"]
                    sums["nsp"] += float(F.cross_entropy(nsp.float(), y, reduction="sum"))
                    sums["nsp_correct"] += int((nsp.argmax(-1) == y).sum())
                    sums["pairs"] += int(y.numel())
        model.train(was_training)
        mlm_loss = sums["mlm"] / max(1, sums["masked"])
        metrics = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": sums["correct"] / max(1, sums["masked"]),
                   "mlm_perplexity": math.exp(min(mlm_loss, 50.0)), "masked_tokens": sums["masked"]}
        if sums["pairs"]:
            metrics["nsp_loss"] = sums["nsp"] / sums["pairs"]
            metrics["nsp_accuracy"] = sums["nsp_correct"] / sums["pairs"]
            metrics["loss"] = mlm_loss + metrics["nsp_loss"]
        return metrics

    def predict(self, model: Any, records: list[str]) -> list[dict[str, Any]]:
        """Masked LMs: the top 5 fillers of each text's masks (lm/fill_mask.py); CLM: a continuation."""
        if self._clm is not None:
            from frugal_lm.tasks.clm import Document

            return self._lm().predict(model, [Document(t, i + 1) for i, t in enumerate(records)])
        from frugal_lm.lm.fill_mask import fill_mask

        return [{"text": t, "predictions": p} for t, p in zip(records, fill_mask(model, self.tokenizer, records),
                                                              strict=True)]

    def save_extra(self, folder: Path) -> None:
        """pretrain.png beside the engine's loss.png / eval.png: every evaluation metric over the steps."""
        from frugal_lm.engine.report import MetricsLog

        plot_pretraining(MetricsLog(Path(folder) / "metrics.jsonl").read(), Path(folder) / "pretrain.png")

    def card_lines(self) -> list[str]:
        o = self.options
        line = f"- pretraining objective: {self.objective}; {self.train_count} rows of up to " \
               f"{self.cfg.model.max_length} tokens"
        if self.objective != "clm":
            line += f"; {o.mlm_probability:.0%} of tokens predicted ({o.mask_ratio:.0%} [MASK], " \
                    f"{o.random_ratio:.0%} random){', whole words' if o.whole_word_mask else ''}"
        return [line]


def _has_nsp(model: Any) -> bool:
    return hasattr(getattr(model, "cls", None), "seq_relationship")


def _split_heads(core: Any) -> tuple[Any, Any, Any] | None:
    """(encoder, MLM head over hidden states, NSP head or None) of a BERT- or RoBERTa-style masked LM."""
    encoder = getattr(core, getattr(core, "base_model_prefix", ""), None)
    if encoder is None:
        return None
    cls = getattr(core, "cls", None)
    if cls is not None and hasattr(cls, "predictions"):
        return encoder, cls.predictions, getattr(cls, "seq_relationship", None)
    if hasattr(core, "lm_head") and hasattr(core.lm_head, "decoder"):
        return encoder, core.lm_head, None
    return None


def tie_note(model: Any) -> str:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and inp is not None and out.weight is inp.weight:
        return "its decoder is tied to the input embeddings"
    return "its decoder is NOT tied to the input embeddings (config.tie_word_embeddings is off)"


def plot_pretraining(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Two panels: losses and perplexity (log scale), accuracies; one line per metric the evaluations hold."""
    evals = [r for r in records if r.get("type") == "eval"]
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss / perplexity", ("mlm_loss", "nsp_loss", "mlm_perplexity", "loss", "perplexity")),
              ("accuracy", ("mlm_accuracy", "nsp_accuracy"))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            points = [(r["step"], r[name]) for r in evals if isinstance(r.get(name), (int, float))]
            if points and not (name == "loss" and any("mlm_loss" in r for r in evals)):
                ax.plot(*zip(*points, strict=True), "o-", label=name)
        if title.startswith("loss"):
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
