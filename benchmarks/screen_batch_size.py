"""Screening (issue 10): does a larger batch (fewer, larger steps) keep the default recipe's accuracy?

What is left in a MiniLM step on short sentences is mostly proportional to the weights (the fused AdamW pass,
autocast's weight copies, the gradient norm) and to the number of dispatched operations, not to the tokens, so
64 rows a step cost less than two steps of 32. Whether it keeps the accuracy is measured here, 3 epochs, on two
sets (SST-2 8k; CoNLL-2003 entity-type sentences, 4 classes, 4,000 rows), several seeds, each run in its own
subprocess (the runner of `screen_budget_vs_cache.py`). JSON lines on stdout.

    python benchmarks/screen_batch_size.py sst2,conll-type 32:1e-4,64:2e-4 0,1,2 > batch_size.jsonl
    python benchmarks/screen_batch_size.py sst2@1000 32:1e-4,64:2e-4 0,1,2   # a small set: few steps
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screen_budget_vs_cache import files, run  # noqa: E402


def main() -> None:
    sets, recipes, seeds = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3].split(",")
    for name in sets:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            train, dev, column = files(name.split("@")[0], tmp)
            if "@" in name:  # "sst2@1000": the first 1,000 training rows, a small set where steps are few
                lines = train.read_text().splitlines(keepends=True)
                train = tmp / "train_slice.tsv"
                train.write_text("".join(lines[: 1 + int(name.split("@")[1])]))
            for seed in map(int, seeds):
                for recipe in recipes:
                    batch, lr = recipe.split(":")
                    row = run(train, dev, column, tmp, {"seed": seed, "batch_size": int(batch), "lr": float(lr)})
                    print(json.dumps({"set": name, "batch_size": int(batch), "lr": float(lr), "seed": seed, **row}),
                          flush=True)


if __name__ == "__main__":
    main()
