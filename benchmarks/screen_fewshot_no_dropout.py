"""Screening (issue 11): the contrastive stage with the body's dropout off.

`classify.method=fewshot` as shipped, except that every dropout of the body (hidden and attention) is set to 0
before the stage's first step (pair_loss wrapped in this process only); the head is fitted and scored as
shipped. With `--chunks`, the stage encodes in length chunks instead of packed: with dropout off the two give
the same run (the same accuracy to the last digit), an end-to-end check that packing changes nothing but
speed. One torch thread; the bench's JSON rows (with "dropout": 0) appended to OUT.

    python benchmarks/screen_fewshot_no_dropout.py sst2 64 0,1,2,3,4 OUT.jsonl [--chunks]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

from frugal_lm.tasks import fewshot  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    out, chunks = Path(sys.argv[4]), "--chunks" in sys.argv[5:]
    shipped = fewshot.pair_loss
    if chunks:
        fewshot.packable = lambda model: False

    def no_dropout(model, batch, *args, **kwargs):
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            for attr in ("dropout_prob", "attention_dropout"):  # attention modules that keep a float
                if isinstance(getattr(m, attr, None), float):
                    setattr(m, attr, 0.0)
        return shipped(model, batch, *args, **kwargs)

    fewshot.pair_loss = no_dropout
    bf.screen_rows(name, size, seeds, out, dropout=0.0, encoding="chunks" if chunks else "packed")


if __name__ == "__main__":
    main()
