"""What a served model is and can do, and how each kind loads.

A served model is named (`NAME=PATH`, else the run folder's, model folder's or ARPA file's name, or the
alias) and offers operations by what it is:

    classify run, or a folder of a ...ForSequenceClassification     classify
    ner run                                                         ner
    clm run, causal LM (alias, folder, hub id)                      completions, chat (with a chat template), score
    masked LM (alias, folder)                                       score (pseudo-log-likelihood), fill-mask
    .arpa file                                                      score

Every operation has a batch function (a list of items in, one result per item out) that the micro-batcher
calls on the model's worker thread.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from frugal_lm.errors import FrugalError, ModelError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
# Rows per forward pass on a CPU, by served precision. SST-2 dev on MiniLM, 1 thread, micro-batches of 32
# (a quiet Xeon with AMX): fp32 148 / 140 / 100 texts/s with passes of 8 / 16 / 32 sorted rows; bf16 323 /
# 383 / 311 (one text at a time: 68 fp32, 79 bf16). Padding grows with the pass, so the best is in between.
CPU_FORWARD_ROWS = {"float32": 8, "bfloat16": 16, "float16": 16}
OPS = ("classify", "ner", "score", "fill-mask", "completions", "chat")


@dataclass
class GenItem:
    """One prompt to generate for: its token ids, its own token limit, and where streamed text goes."""

    prompt: Any
    ids: list[int]
    max_new: int
    on_text: Any = None  # called on the worker thread with each new piece of text


@dataclass
class ServedModel:
    name: str
    source: str
    kind: str  # classifier | ner | causal | masked | ngram
    ops: tuple[str, ...]
    run_dir: Path | None = None
    task: Any = None
    model: Any = None
    tokenizer: Any = None
    scorer: Any = None
    generator: Any = None
    encoder: Any = None  # the generator with its own tokenizer copy, for prompts encoded on the event loop
    context: int | None = None  # positions the model can attend to (prompt + generation)
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"  # the weights' precision as served, and why (see `engine.savers.cast_for_inference`)
    created: int = field(default_factory=lambda: int(time.time()))

    def info(self) -> dict[str, Any]:
        """The /v1/models entry: OpenAI's fields, and what frugal adds (operations, kind, labels)."""
        row: dict[str, Any] = {"id": self.name, "object": "model", "created": self.created, "owned_by": "frugal",
                               "kind": self.kind, "operations": list(self.ops), "source": self.source}
        labels = getattr(self.task, "labels", None)
        if labels:
            row["labels"] = list(labels)
        if self.kind == "ner":
            row["entity_types"] = list(self.task.types)
        if self.context:
            row["context_length"] = self.context
        if self.run_dir is not None:
            row["run"] = self.run_dir.name
        if self.notes:
            row["notes"] = list(self.notes)
        row["precision"] = self.precision
        return row

    # -- batch functions (worker thread) -------------------------------------------------------
    def classify(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        from frugal_lm.data.readers import Record

        records = [Record(t, p, None, i + 1) for i, (t, p) in enumerate(items)]
        return self.task.predict(self.model, records)

    def ner(self, records: list[Any]) -> list[dict[str, Any]]:
        return self.task.predict(self.model, records)

    def score(self, texts: list[str]) -> list[Any]:
        return self.scorer.score(texts)

    def fill_mask(self, texts: list[str], top_k: int) -> list[Any]:
        from frugal_lm.lm.fill_mask import fill_mask

        return fill_mask(self.model, self.tokenizer, texts, top_k=top_k)

    def generate(self, items: list[GenItem], opts: Any) -> list[Any]:
        """Generate for prompts that share decoding options, in one `generate` call: the batch runs to the
        largest token limit among them and each row is cut at its own."""
        gen = self.generator
        run_opts = replace(opts, max_new_tokens=max(i.max_new for i in items))
        streamer = _BatchStreamer(gen, items, opts.stop) if any(i.on_text for i in items) else None
        rows = gen._run([i.ids for i in items], run_opts, streamer)
        out = []
        for k, (item, new) in enumerate(zip(items, rows, strict=True)):
            result = gen._finish(item.prompt, new[:item.max_new], replace(opts, max_new_tokens=item.max_new))
            if streamer is not None:
                streamer.flush(k, result.text)
            out.append(result)
        return out


class _BatchStreamer:
    """A `transformers` streamer for a whole batch: each row's new text goes to its item's `on_text` as it is
    decoded, up to the row's end (EOS, its token limit, or a stop string, which is never shown: text that
    might begin one is held back until it cannot)."""

    def __init__(self, generator: Any, items: list[GenItem], stops: list[str]):
        from frugal_lm.lm.generate import find_stop

        self.find_stop, self.tok, self.eos = find_stop, generator.tokenizer, set(generator.eos_ids)
        self.items, self.stops = items, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[list[int]] = [[] for _ in items]
        self.shown = [0] * len(items)
        self.done = [i.on_text is None for i in items]
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        for k, tid in enumerate(ids):
            if self.done[k]:
                continue
            if tid in self.eos:
                self.done[k] = True
                continue
            self.tokens[k].append(tid)
            text = self.tok.decode(self.tokens[k], skip_special_tokens=True)
            cut = self.find_stop(text, self.stops)
            upto = cut if cut is not None else len(text) - self.hold
            while upto > self.shown[k] and text[upto - 1] == "\ufffd":  # half a UTF-8 character so far
                upto -= 1
            if upto > self.shown[k]:
                self.items[k].on_text(text[self.shown[k]:upto])
                self.shown[k] = upto
            if cut is not None or len(self.tokens[k]) >= self.items[k].max_new:
                self.done[k] = True

    def end(self) -> None:
        return None

    def flush(self, k: int, final: str) -> None:
        """Send what the row's final text holds beyond what was shown (held-back text, the last piece)."""
        if self.items[k].on_text is not None and len(final) > self.shown[k]:
            self.items[k].on_text(final[self.shown[k]:])
            self.shown[k] = len(final)


# -- loading ---------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` -> (name, path). The default name: a folder's or file's name, or the alias."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not NAME.match(name):
            raise FrugalError(f"{spec}: model name '{name}' must start with a letter or digit and hold only "
                              "letters, digits and . _ : -")
        if not path:
            raise FrugalError(f"{spec}: nothing after '='; give NAME=PATH")
        return name, path
    p = Path(spec).expanduser()
    if p.exists():
        name = p.stem if p.is_file() else p.resolve().name
    else:
        name = spec.rsplit("/", 1)[-1]  # a hub id: org/model -> model
    if not NAME.match(name):
        name = re.sub(r"[^A-Za-z0-9._:-]", "-", name).strip("-") or "model"
    return name, spec


def _context(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _architectures(path: Path) -> list[str]:
    try:
        return list(json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or [])
    except (OSError, ValueError):
        return []


def load_served(spec: str, device: str | None = None, precision: str = "auto") -> ServedModel:
    """Load one `NAME=PATH` / `PATH` / alias as a ServedModel.

    `precision` (auto, fp32, bf16, fp16) applies to classifiers and taggers, whose answers are labels and
    probabilities: "auto" serves them in bf16 where training would autocast to it (a GPU, or a CPU with
    bf16 matrix instructions and a model over 5M parameters; `engine.savers.resolve_precision`), which on a
    CPU with AMX runs MiniLM ~2x faster. Language models are served in fp32: their scores are
    log-probabilities people compare across runs.

    Raises:
        FrugalError: the model cannot be found, loaded, or served (a task frugal has no route for).
    """
    import warnings

    from frugal_lm.models.registry import is_run_dir

    name, target = parse_spec(spec)
    path = Path(target).expanduser()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if target.endswith(".arpa"):
            served = _load_arpa(name, target)
        elif path.is_dir() and is_run_dir(path):
            served = _load_run(name, path, device)
        elif path.is_dir() and any(a.endswith("ForSequenceClassification") for a in _architectures(path)):
            served = _load_classifier_folder(name, path, device)
        else:
            served = _load_lm(name, target, device)
    served.notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if served.kind in ("classifier", "ner"):
        from frugal_lm.engine.savers import cast_for_inference

        served.precision = cast_for_inference(served.model, precision, "--precision")
        if next(served.model.parameters()).device.type == "cpu":
            # a micro-batch is sorted by length and run in forward passes of this many rows: on a CPU, compute
            # grows with padded tokens, so short passes of similar lengths beat one pass padded to the longest
            rows = CPU_FORWARD_ROWS[str(next(served.model.parameters()).dtype).removeprefix("torch.")]
            served.task.cfg.train.eval_batch_size = min(served.task.cfg.train.eval_batch_size, rows)
        # one call now sets the tokenizer's truncation state, which would otherwise be set by the first
        # batches of several worker threads at once (Rust tokenizers refuse that: "Already borrowed")
        served.task.predict(served.model, served.task.from_texts(["warm up"]))
    if path.exists():
        served.created = int(path.stat().st_mtime)
    return served


def _load_arpa(name: str, target: str) -> ServedModel:
    from frugal_lm.lm.scorers import NgramScorer

    if not Path(target).is_file():
        raise ModelError(f"{target}: no such ARPA file")
    return ServedModel(name, target, "ngram", ("score",), scorer=NgramScorer(target))


def _load_run(name: str, path: Path, device: str | None) -> ServedModel:
    from frugal_lm.engine.run import load_run

    cfg, task, model = load_run(path)
    model.to(_device(device))
    if cfg.task == "classify":
        return ServedModel(name, str(path), "classifier", ("classify",), path, task, model, task.tokenizer)
    if cfg.task == "ner":
        return ServedModel(name, str(path), "ner", ("ner",), path, task, model, task.tokenizer)
    if task.auto_class == "AutoModelForCausalLM":
        bos, eos = task.boundaries()
        served = _causal(name, str(path), model, task.tokenizer, bos, eos)
        served.run_dir, served.task = path, task
        return served
    raise ModelError(f"{path}: a {cfg.task} run; frugal serve serves classify, ner and clm runs")


def _load_classifier_folder(name: str, path: Path, device: str | None) -> ServedModel:
    """A plain transformers classifier folder: its labels come from the config's id2label."""
    import transformers

    from frugal_lm.config import load_config
    from frugal_lm.models.loading import from_pretrained, load_tokenizer, quiet_transformers
    from frugal_lm.tasks import get_task

    task = get_task("classify")(load_config(overrides={"task": "classify", "model": {"name": str(path)}}))
    with quiet_transformers():
        task.tokenizer = load_tokenizer(str(path))
        model = from_pretrained(transformers.AutoModelForSequenceClassification, str(path))
    id2label = model.config.id2label
    task.labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(model.config.num_labels)]
    model.to(_device(device)).eval()
    return ServedModel(name, str(path), "classifier", ("classify",), None, task, model, task.tokenizer)


def _load_lm(name: str, target: str, device: str | None) -> ServedModel:
    from frugal_lm.lm.generate import document_boundaries
    from frugal_lm.lm.scorers import CAUSAL, TransformerScorer, load_transformer

    model, tokenizer, kind, notes = load_transformer(target, device=_device(device))
    if kind == CAUSAL:
        bos, eos = document_boundaries(tokenizer, target)
        served = _causal(name, target, model, tokenizer, bos, eos)
    else:
        scorer = TransformerScorer(model, tokenizer, kind, name)
        ops = ("score", "fill-mask") if tokenizer.mask_token_id is not None else ("score",)
        served = ServedModel(name, target, "masked", ops, model=model, tokenizer=tokenizer, scorer=scorer,
                             context=_context(model.config))
    served.notes += notes
    return served


def _causal(name: str, source: str, model: Any, tokenizer: Any, bos: int | None, eos: int | None) -> ServedModel:
    from frugal_lm.lm.generate import Generator
    from frugal_lm.lm.scorers import CAUSAL, TransformerScorer

    generator = Generator(model, tokenizer, bos, [eos] if eos is not None else [], name)
    # a Rust tokenizer used from two threads at once can fail ("Already borrowed"): the event loop encodes
    # prompts with its own copy while the worker thread decodes
    encoder = copy.copy(generator)
    encoder.tokenizer = copy.deepcopy(tokenizer)
    scorer = TransformerScorer(model, tokenizer, CAUSAL, name)
    scorer.bos_id, scorer.eos_id = bos, eos  # score with the boundaries generation uses
    ops = ("completions", "chat", "score") if getattr(tokenizer, "chat_template", None) else ("completions", "score")
    return ServedModel(name, source, "causal", ops, model=model, tokenizer=tokenizer, scorer=scorer,
                       generator=generator, encoder=encoder, context=_context(model.config))


def _device(device: str | None) -> str:
    from frugal_lm.lm.scorers import _pick_device

    return _pick_device(device)
