"""Metrics shared by the label tasks: precision / recall / F1 from counts, so classification (per class)
and NER (per entity type) compute them with one definition."""

from __future__ import annotations


def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall, F1 and support from true positives, false positives and false negatives.

    An empty denominator gives 0 (as scikit-learn and seqeval do with `zero_division=0`).
    """
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
