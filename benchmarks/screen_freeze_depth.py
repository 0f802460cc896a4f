"""Screening (issue 10): what does freezing the lowest encoder layer (with the prefix cache) cost in accuracy?

The default recipe freezes the embeddings only. Freezing layer 0 as well, with `train.cache_prefix`, removes
that layer's backward and the input gradient of layer 1, and after the first epoch its forward too. Before any
of that becomes a default, its accuracy cost is measured here on two sets (SST-2 8k rows; CoNLL-2003 entity-type
sentences, 4 classes, 4,000 rows), 3 epochs, several seeds, each run in its own subprocess (the runner of
`screen_budget_vs_cache.py`). JSON lines on stdout.

    python benchmarks/screen_freeze_depth.py sst2,conll-type 0,1 0,1,2 > freeze_depth.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screen_budget_vs_cache import files, run  # noqa: E402


def main() -> None:
    sets, depths, seeds = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3].split(",")
    for name in sets:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            train, dev, column = files(name, tmp)
            for seed in map(int, seeds):
                for depth in map(int, depths):
                    extra = {"seed": seed, **({"freeze_layers": depth, "cache_prefix": True} if depth else {})}
                    row = run(train, dev, column, tmp, extra)
                    print(json.dumps({"set": name, "freeze_layers": depth, "seed": seed, **row}), flush=True)


if __name__ == "__main__":
    main()
