"""What the label tasks (classification, NER) share: the label map and its file, the model head sized by it,
class weights, the cross-entropy loss over labelled positions, and probabilities from logits."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from frugal_lm.tasks.base import Task

IGNORE = -100  # label of positions the loss skips (padding, special tokens, non-first sub-tokens)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed stably in float64."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LabelTask(Task):
    """A task that assigns one of a fixed label set to each example (or each token).

    Subclasses set `self.labels` in `learn` (from the training data); it is saved to labels.json and
    into the model config (id2label / label2id), so plain `transformers` pipelines read the names.
    """

    state_file: ClassVar[str | None] = "labels.json"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier", "score", "pre_classifier")

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        self.labels: list[str] = []
        self.class_weights: Any = None
        super().__init__(cfg, saved)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels, "label2id": self.label2id}

    def load_state(self, saved: dict[str, Any]) -> None:
        self.labels = list(saved["labels"])

    def card_lines(self) -> list[str]:
        return [f"- labels: {', '.join(self.labels)}"]

    def set_class_weights(self, label_ids: list[int]) -> None:
        """With train.class_weights: weight each label by inverse frequency ("balanced", as scikit-learn)."""
        if not self.cfg.train.class_weights:
            return
        import torch

        counts = np.bincount(label_ids, minlength=len(self.labels))
        weights = len(label_ids) / (len(self.labels) * np.maximum(counts, 1))
        self.class_weights = torch.tensor(weights, dtype=torch.float32)

    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        import transformers

        from frugal_lm.models.loading import from_pretrained

        id2label = dict(enumerate(self.labels))
        model = from_pretrained(
            getattr(transformers, self.auto_class), path, trust_remote_code=trust_remote_code,
            num_labels=len(self.labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True)
        if model.config.pad_token_id is None and self.tokenizer is not None:
            # decoder models need it to find the last real token of each padded row
            model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return model

    @staticmethod
    def logits(model: Any, batch: dict[str, Any]) -> Any:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()

    def count(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """Cross-entropy summed over labelled positions (examples, or tokens), and their number."""
        import torch.nn.functional as F

        logits = self.logits(model, batch)
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               weight=weight, ignore_index=IGNORE, reduction="sum")
        return loss, self.count(batch)
