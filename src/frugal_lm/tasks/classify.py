"""Text classification (single sentences and sentence pairs): data, head, loss, metrics, predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from frugal_lm.config import RunConfig
from frugal_lm.data.batching import Collator
from frugal_lm.data.readers import Record, check_labels, label_vocabulary, read_records
from frugal_lm.engine.inference import map_batches
from frugal_lm.errors import FrugalError


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support (F1 of an absent class counts as 0)."""
    g, p = np.asarray(gold), np.asarray(pred)
    per_class, f1s = {}, []
    for k, name in enumerate(labels):
        tp = int(((p == k) & (g == k)).sum())
        fp = int(((p == k) & (g != k)).sum())
        fn = int(((p != k) & (g == k)).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
        f1s.append(f1)
    return {"accuracy": float((g == p).mean()) if len(g) else 0.0, "macro_f1": float(np.mean(f1s)),
            "per_class": per_class}


class ClassifyTask:
    """Sequence classification on any encoder (or decoder with a classification head).

    Args:
        cfg: the run config; data columns, max length and class weighting are read from it.
        labels: the label set; taken from the training data when None.
    """

    name = "classify"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    def __init__(self, cfg: RunConfig, labels: list[str] | None = None):
        self.cfg = cfg
        self.labels = labels
        self.tokenizer: Any = None
        self.train_set: list[dict[str, Any]] = []
        self.eval_set: list[dict[str, Any]] = []
        self.class_weights: Any = None

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[Record]:
        d = self.cfg.data
        return read_records(path, d.format, d.text_column, d.text_pair_column,
                            d.label_column if labelled else None)

    def read_data(self) -> tuple[list[Record], list[Record]]:
        """Read and check train and eval files before anything heavy happens."""
        d = self.cfg.data
        if not d.train:
            raise FrugalError("data.train: no training file given (--train FILE)")
        train = self.read(d.train)
        if self.labels is None:
            self.labels = label_vocabulary(train)
        if len(self.labels) < 2:
            raise FrugalError(f"{d.train}: only one label ({self.labels[0]!r}) in column '{d.label_column}'; "
                              "classification needs at least two")
        evaluation = self.read(d.eval) if d.eval else []
        if evaluation:
            check_labels(evaluation, self.labels, d.eval, d.label_column)
        return train, evaluation

    def encode(self, records: list[Record]) -> list[dict[str, Any]]:
        """Tokenize (no padding: batches are padded to their own longest example)."""
        tok = self.tokenizer
        texts = [r.text for r in records]
        pairs = [r.text_pair for r in records] if records and records[0].text_pair is not None else None
        enc = tok(texts, pairs, truncation=True, max_length=self.cfg.model.max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        index = {name: i for i, name in enumerate(self.labels or [])}
        out = []
        for i, r in enumerate(records):
            example = {k: enc[k][i] for k in keys}
            if r.label is not None:
                example["labels"] = index[r.label]
            out.append(example)
        return out

    def prepare(self, tokenizer: Any) -> None:
        """Read, check and encode the configured data."""
        self.tokenizer = tokenizer
        train, evaluation = self.read_data()
        self.train_set = self.encode(train)
        self.eval_set = self.encode(evaluation)
        if self.cfg.train.class_weights:
            import torch

            counts = np.bincount([e["labels"] for e in self.train_set], minlength=len(self.labels))
            weights = len(self.train_set) / (len(self.labels) * np.maximum(counts, 1))
            self.class_weights = torch.tensor(weights, dtype=torch.float32)

    def collator(self) -> Collator:
        return Collator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                        else self.tokenizer.eos_token_id)

    # -- model -------------------------------------------------------------------------------
    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        from transformers import AutoModelForSequenceClassification

        from frugal_lm.models.loading import from_pretrained

        id2label = dict(enumerate(self.labels))
        model = from_pretrained(
            AutoModelForSequenceClassification, path, trust_remote_code=trust_remote_code,
            num_labels=len(self.labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True)
        if model.config.pad_token_id is None and self.tokenizer is not None:
            # decoder models need it to find the last real token of each padded row
            model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return model

    # -- training ----------------------------------------------------------------------------
    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["labels"].shape[0])

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """Summed cross-entropy over the batch (the engine normalises over the accumulation group)."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, batch["labels"], weight=weight, reduction="sum"), self.count(batch)

    def _logits(self, model: Any, examples: list[dict[str, Any]], device: Any = None) -> np.ndarray:
        def fn(m: Any, batch: dict[str, Any]) -> list[Any]:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return list(m(**inputs).logits.float().cpu().numpy())

        rows = map_batches(model, examples, self.collator(), self.cfg.train.eval_batch_size, fn,
                           device or next(model.parameters()).device)
        return np.stack(rows)

    def evaluate(self, model: Any, device: Any = None, examples: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Loss, accuracy, macro-F1 and per-class scores on `examples` (default: the eval set)."""
        examples = self.eval_set if examples is None else examples
        logits = self._logits(model, examples, device)
        gold = np.array([e["labels"] for e in examples])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        metrics = {"loss": float(-log_probs[np.arange(len(gold)), gold].mean())}
        metrics.update(classification_metrics(gold.tolist(), logits.argmax(axis=1).tolist(), self.labels))
        return metrics

    def predict(self, model: Any, records: list[Record]) -> list[dict[str, Any]]:
        """For each record: its text, the predicted label and the probability of every label."""
        logits = self._logits(model, self.encode(records))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        out = []
        for r, p in zip(records, probs, strict=True):
            row: dict[str, Any] = {"text": r.text}
            if r.text_pair is not None:
                row["text_pair"] = r.text_pair
            row["label"] = self.labels[int(p.argmax())]
            row["probabilities"] = {lab: round(float(q), 6) for lab, q in zip(self.labels, p, strict=True)}
            out.append(row)
        return out

    def save_extra(self, folder: Path) -> None:
        from frugal_lm.io import write_json

        write_json(folder / "labels.json", {"labels": self.labels,
                                            "label2id": {lab: i for i, lab in enumerate(self.labels)}})
