"""Screening (issue 11): augmentation of the few examples by token deletion in the contrastive stage.

With 64 per class the stage shows each sentence ~32 times; here every time it is shown, each of its tokens
(not [CLS] / [SEP]) is deleted with probability P (EDA's random deletion, Wei and Zou 2019; on word pieces), so
the body sees 32 views instead of one sentence 32 times. The head is fitted on the clean sentences, as shipped.
`classify.method=fewshot` as shipped otherwise (pair_loss wrapped in this process only). One torch thread; the
bench's JSON rows (with "token_drop") appended to OUT.

    python benchmarks/screen_fewshot_token_drop.py sst2 64 0,1,2 0.1 OUT.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

SPECIAL = (101, 102, 0)  # [CLS], [SEP], [PAD] in MiniLM's vocabulary


def drop_tokens(batch: dict, p: float) -> dict:
    """Delete each ordinary token with probability p; rows left-aligned again, right-padded."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = torch.zeros_like(mask, dtype=torch.bool)
    for s in SPECIAL:
        special |= ids == s
    keep = mask.bool() & (special | (torch.rand(ids.shape) >= p))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    new_ids = torch.gather(ids, 1, order) * torch.gather(keep, 1, order)
    new_mask = torch.gather(keep, 1, order).to(mask.dtype)
    width = int(new_mask.sum(1).max())
    out = dict(batch)
    out["input_ids"], out["attention_mask"] = new_ids[:, :width], new_mask[:, :width]
    if "token_type_ids" in batch:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    return out


def with_token_drop(shipped, p: float):
    def augmented(model, batch, *args, **kwargs):
        return shipped(model, drop_tokens(batch, p) if model.training else batch, *args, **kwargs)
    return augmented


def main() -> None:
    bf.screen_wrapped_loss("token_drop", with_token_drop)


if __name__ == "__main__":
    main()
