"""Screening (issue 11): a SimCSE term beside the contrastive stage's pair loss, against collapse.

After the shipped stage the training embeddings sit in tight class clusters (the head's C stops mattering,
BENCHMARKS.md). Here each training batch is encoded twice, under independent dropout draws, and the loss is the
shipped pair loss on the first view plus LAMBDA x SimCSE's InfoNCE between the views (Gao et al. 2021: a
sentence's other view is its positive, every other sentence of the batch a negative, temperature 0.05), which
keeps the sentences of one class spread apart instead of collapsed onto a point. The stage costs about twice as
much. `classify.method=fewshot` as shipped otherwise (pair_loss wrapped in this process only); one torch
thread; the bench's JSON rows (with "simcse") appended to OUT.

    python benchmarks/screen_fewshot_simcse.py sst2 64 0,1,2 0.1 OUT.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

from frugal_lm.tasks import fewshot  # noqa: E402

TEMPERATURE = 0.05


def with_simcse(shipped, weight: float):
    def loss(model, batch, *args, **kwargs):
        if not model.training:
            return shipped(model, batch, *args, **kwargs)
        views = [fewshot.embed(model, batch, split=True) for _ in range(2)]
        target, w = fewshot.pair_weights(batch["labels"])
        pair = (w * (views[0] @ views[0].T - target) ** 2).sum()
        logits = views[0] @ views[1].T / TEMPERATURE
        return pair + weight * F.cross_entropy(logits, torch.arange(len(logits)))
    return loss


def main() -> None:
    bf.screen_wrapped_loss("simcse", with_simcse)


if __name__ == "__main__":
    main()
