"""Text classification (single sentences and sentence pairs): data, head, metrics, predictions."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from frugal_lm.data.readers import Record, check_labels, label_vocabulary, read_records
from frugal_lm.engine.inference import map_batches
from frugal_lm.errors import ConfigError, FrugalError
from frugal_lm.metrics import prf
from frugal_lm.tasks import fewshot
from frugal_lm.tasks.labels import LabelTask, log_softmax, softmax


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support (F1 of an absent class counts as 0)."""
    g, p = np.asarray(gold), np.asarray(pred)
    per_class = {}
    for k, name in enumerate(labels):
        per_class[name] = prf(int(((p == k) & (g == k)).sum()), int(((p == k) & (g != k)).sum()),
                              int(((p != k) & (g == k)).sum()))
    confusion = np.zeros((len(labels), len(labels)), dtype=int)  # rows: gold, columns: predicted
    np.add.at(confusion, (g.astype(int), p.astype(int)), 1)
    return {"accuracy": float((g == p).mean()) if len(g) else 0.0,
            "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])), "per_class": per_class,
            "confusion": confusion.tolist()}


# classify.large_batch: the fine-tuning recipe's batch and learning rate on enough data. What is left of a MiniLM
# step on short texts is mostly proportional to the weights (the AdamW pass, autocast's weight copies, the
# gradient norm, ~1,550 dispatched operations), not to the rows, so 64 rows a step cost less than two steps of 32.
# Screened over 3 seeds, 3 epochs (benchmarks/screen_batch_size.py, BENCHMARKS.md): 64 rows at lr 2e-4 (the
# learning rate scaled with the batch) against 32 at 1e-4: SST-2 8k 0.861 vs 0.862 in 1.27x less wall time,
# CoNLL entity types 4k 0.896 vs 0.897 in 1.15x less; on SST-2 1k (48 steps at 64) it lost 1.0 point, so the
# batch grows only where the run keeps at least LARGE_BATCH_MIN_STEPS optimizer steps.
LARGE_BATCH, LARGE_BATCH_LR, LARGE_BATCH_MIN_STEPS = 64, 2e-4, 150


def large_batch(train: Any, n_examples: int, processes: int = 1) -> dict[str, Any]:
    """{"batch_size": 64, "lr": 2e-4} where classify.large_batch applies to a fine-tuning run (train.* at
    the defaults, epochs not steps, batches of rows, enough data), else {}."""
    from frugal_lm.config import TrainConfig

    base = TrainConfig()
    if (train.batch_size, train.lr) != (base.batch_size, base.lr) or train.max_steps or train.batch_tokens:
        return {}
    steps = train.epochs * n_examples / (LARGE_BATCH * max(1, train.grad_accum) * max(1, processes))
    return {"batch_size": LARGE_BATCH, "lr": LARGE_BATCH_LR} if steps >= LARGE_BATCH_MIN_STEPS else {}


class ClassifyTask(LabelTask):
    """Sequence classification on any encoder (or decoder with a classification head)."""

    name = "classify"
    help = "text classification: one label per text or text pair (CSV, TSV, JSONL)"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    formats = ("csv", "tsv", "jsonl")
    metrics: ClassVar[dict[str, str]] = {"accuracy": "max", "macro_f1": "max", "loss": "min"}
    defaults: ClassVar[dict[str, Any]] = {"train.metric": "accuracy", "train.freeze_embeddings": True}
    Options = fewshot.ClassifyOptions

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        self.method = "finetune"  # resolved from classify.method in prepare(), or read from labels.json
        self.head_pending = False  # fewshot while training: the head is refitted before each evaluation
        self.grown: dict[str, Any] = {}  # finetune: classify.large_batch's train.* values, when it applies
        self.start: dict[str, Any] | None = None  # fewshot: the body's trainable weights as the stage began
        super().__init__(cfg, saved)

    def state(self) -> dict[str, Any]:
        # pooling tells users of model/ which features the classifier layer reads
        return {**super().state(), "method": self.method,
                "pooling": "mean-normalized" if self.method == "fewshot" else "model"}

    def load_state(self, saved: dict[str, Any]) -> None:
        super().load_state(saved)
        self.method = saved.get("method", "finetune")

    def card_lines(self) -> list[str]:
        lines = super().card_lines()
        if self.method == "fewshot":
            lines.append("- method: few-shot (contrastive pair training of the encoder, then a logistic-"
                         "regression head on normalised mean-pooled embeddings; `frugal predict` applies "
                         "it; a plain transformers pipeline would read the [CLS] pooler instead)")
        return lines

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[Record]:
        d = self.cfg.data
        return read_records(path, d.format, d.text_column, d.text_pair_column,
                            d.label_column if labelled else None)

    def learn(self, train: list[Record]) -> None:
        self.labels = label_vocabulary(train)
        if len(self.labels) < 2:
            raise FrugalError(f"{self.cfg.data.train}: only one label ({self.labels[0]!r}) in column "
                              f"'{self.cfg.data.label_column}'; classification needs at least two")

    def check(self, records: list[Record], path: str) -> None:
        check_labels(records, self.labels, path, self.cfg.data.label_column)

    def from_texts(self, texts: list[str]) -> list[Record]:
        return [Record(t, None, None, i + 1) for i, t in enumerate(texts)]

    def encode(self, records: list[Record]) -> list[dict[str, Any]]:
        """Tokenize (no padding: batches are padded to their own longest example)."""
        texts = [r.text for r in records]
        pairs = [r.text_pair for r in records] if records and records[0].text_pair is not None else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.cfg.model.max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        index = self.label2id
        out = []
        for i, r in enumerate(records):
            example = {k: enc[k][i] for k in keys}
            if r.label is not None:
                example["labels"] = index[r.label]
            out.append(example)
        return out

    def prepare(self, tokenizer: Any) -> None:
        super().prepare(tokenizer)
        self.set_class_weights([e["labels"] for e in self.train_set])
        o = self.options
        self.method = fewshot.resolve_method(o.method, len(self.train_set), len(self.labels), o.fewshot_below)
        self.head_pending = self.method == "fewshot"
        self.grown = {}
        if self.method == "finetune" and o.large_batch:
            import os

            # the global batch counts every process (WORLD_SIZE: set by accelerate/torchrun launches)
            self.grown = large_batch(self.cfg.train, len(self.train_set), int(os.environ.get("WORLD_SIZE", "1")))
            if self.grown:
                print(f"classify.large_batch: {len(self.train_set)} rows x {self.cfg.train.epochs:g} epochs -> "
                      f"batch {LARGE_BATCH}, lr {LARGE_BATCH_LR:g} (at least {LARGE_BATCH_MIN_STEPS} steps "
                      "remain); set train.batch_size or train.lr, or classify.large_batch=false, to choose")
        if o.fewshot_extrapolate <= 0:
            raise ConfigError(f"classify.fewshot_extrapolate: must be above 0 (1: the body as trained), got "
                              f"{o.fewshot_extrapolate}")
        if o.fewshot_temperature <= 0:
            raise ConfigError(f"classify.fewshot_temperature: must be above 0 (the supcon loss divides the "
                              f"cosine similarities by it), got {o.fewshot_temperature}")

    def start_from(self, model: Any) -> None:
        if self.method == "fewshot" and self.options.fewshot_extrapolate != 1:
            self.start = fewshot.trainable_start(model)

    def kept_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in (self.start or {}).values())

    def _extrapolate(self, model: Any) -> dict[str, Any] | None:
        """The few-shot body moved classify.fewshot_extrapolate times its distance from the start; returns
        the weights it had (None when there is nothing to move)."""
        if self.start is None:
            return None
        return fewshot.extrapolate(model, self.start, self.options.fewshot_extrapolate)

    def train_overrides(self) -> dict[str, Any]:
        if self.method != "fewshot":
            return dict(self.grown)
        counts = np.bincount([e["labels"] for e in self.train_set], minlength=len(self.labels))
        return fewshot.stage_settings(self.options, len(self.train_set), len(self.labels), int(counts.max()),
                                      self.cfg.train)

    def logits(self, model: Any, batch: dict[str, Any]) -> Any:
        if self.method == "fewshot":
            return fewshot.head_logits(model, batch).float()
        if not self.options.first_token:
            return LabelTask.logits(model, batch)
        from frugal_lm.engine.first_token import first_token_only  # imports torch: not at module load

        with first_token_only(model):  # the head reads position 0: the last layer computes only that row
            return LabelTask.logits(model, batch)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        if self.method != "fewshot":
            return super().loss(model, batch)
        n = self.count(batch)  # the pair loss is a balanced mean over pairs: weigh it as n examples
        opts = self.options
        return fewshot.pair_loss(model, batch, opts.fewshot_loss, opts.fewshot_temperature) * n, n

    def _fit_head(self, model: Any, device: Any = None) -> None:
        fewshot.fit_model_head(model, self.train_set, self.collator(), len(self.labels), self.options.fewshot_c,
                               self.cfg.train.eval_batch_size, device)

    def eval_autocast(self) -> bool:
        return self.method != "fewshot"  # its head is fitted on fp32 features at the end (finish)

    def finish_evaluates(self) -> bool:
        return self.head_pending and bool(self.eval_set)  # the refitted few-shot head: see finish

    def finish(self, model: Any, run_dir: Any, metrics: dict[str, Any] | None = None) -> None:
        """Fit the few-shot head on the final body; write confusion.png for the eval set (from the loop's
        evaluation of these weights when there is one: a quarter of a 3-epoch run's evaluating)."""
        from pathlib import Path

        from frugal_lm.engine.report import plot_confusion

        if self.head_pending:
            self._extrapolate(model)  # for good: model/ is exported from these weights
            self._fit_head(model)
            self.head_pending = False
            metrics = None  # a new head: its own evaluation
        if self.eval_set:
            if not metrics or "confusion" not in metrics:
                metrics = self.evaluate(model)
            plot_confusion(metrics["confusion"], self.labels, Path(run_dir) / "confusion.png")

    # -- evaluation and use ------------------------------------------------------------------
    def _logits(self, model: Any, examples: list[dict[str, Any]], device: Any = None) -> np.ndarray:
        def fn(m: Any, batch: dict[str, Any]) -> list[Any]:
            return list(self.logits(m, batch).cpu().numpy())

        rows = map_batches(model, examples, self.collator(), self.cfg.train.eval_batch_size, fn,
                           device or next(model.parameters()).device)
        return np.stack(rows)

    def evaluate(self, model: Any, records: list[Record] | None = None, device: Any = None) -> dict[str, Any]:
        """Loss, accuracy, macro-F1 and per-class scores on `records` (default: the eval set)."""
        examples = self.eval_set if records is None else self.encode(records)
        if self.head_pending:  # mid-training evaluation of a few-shot run: the body as finish() will leave
            trained = self._extrapolate(model)  # it, with a head fitted for it; training goes on from `trained`
            try:
                self._fit_head(model, device)
                logits = self._logits(model, examples, device)
            finally:
                if trained is not None:
                    fewshot.restore(model, trained)
        else:
            logits = self._logits(model, examples, device)
        gold = np.array([e["labels"] for e in examples])
        metrics = {"loss": float(-log_softmax(logits)[np.arange(len(gold)), gold].mean())}
        metrics.update(classification_metrics(gold.tolist(), logits.argmax(axis=1).tolist(), self.labels))
        return metrics

    def predict(self, model: Any, records: list[Record]) -> list[dict[str, Any]]:
        """For each record: its text, the predicted label and the probability of every label."""
        probs = softmax(self._logits(model, self.encode(records)))
        out = []
        for r, p in zip(records, probs, strict=True):
            row: dict[str, Any] = {"text": r.text}
            if r.text_pair is not None:
                row["text_pair"] = r.text_pair
            row["label"] = self.labels[int(p.argmax())]
            row["probabilities"] = {lab: round(float(q), 6) for lab, q in zip(self.labels, p, strict=True)}
            out.append(row)
        return out
