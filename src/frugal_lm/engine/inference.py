"""Batched forward passes in length-sorted order, results returned in input order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from frugal_lm.data.batching import Collator, EpochBatchSampler


def map_batches(model: Any, examples: list[dict[str, Any]], collator: Collator, batch_size: int,
                fn: Callable[[Any, dict[str, Any]], list[Any]], device: Any = None) -> list[Any]:
    """Apply `fn(model, batch) -> one result per example` over `examples`, sorted by length for speed.

    Returns:
        The results in the order of `examples`.
    """
    import torch

    sampler = EpochBatchSampler([len(e["input_ids"]) for e in examples], batch_size, shuffle=False)
    out: list[Any] = [None] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in sampler:
                batch = collator([examples[i] for i in idx])
                if device is not None:
                    batch = {k: v.to(device) for k, v in batch.items()}
                for i, result in zip(idx, fn(model, batch), strict=True):
                    out[i] = result
    finally:
        model.train(was_training)
    return out
