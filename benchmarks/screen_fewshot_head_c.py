"""Screening (issue 11): does the few-shot head's regularisation C matter?

Stage 1 is `classify.method=fewshot` as shipped (contrastive stage, then the L-BFGS head at C=1); then the head
is refitted on the same body's training embeddings at each C and scored on the dev set. The dev set picks C here
(an oracle): if even the best C gains less than a point, choosing C (by cross-validation or otherwise) cannot
close the gap to SetFit + 1 and is not worth building. One torch thread; JSON lines on stdout.

    python benchmarks/screen_fewshot_head_c.py conll-type 64 0,1,2 0.01,0.1,1,10,100 > head_c.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402
from screen_fewshot_lpft import shipped_run  # noqa: E402

from frugal_lm.tasks import fewshot  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    cs = [float(x) for x in sys.argv[4].split(",")]
    pool, dev = bf.SETS[name]()
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            task, model, train_file, dev_file, stage = shipped_run(pool, dev, size, seed, tmp)
            shipped = task.evaluate(model, task.read(str(dev_file)))["accuracy"]
            collate = task.collator()
            examples = task.encode(task.read(str(train_file)))
            dev_examples = task.encode(task.read(str(dev_file)))
            x = fewshot.embeddings(model, examples, collate, 128)
            y = np.array([e["labels"] for e in examples])
            xd = fewshot.embeddings(model, dev_examples, collate, 128)
            yd = np.array([e["labels"] for e in dev_examples])
            row = {"set": name, "size": size, "seed": seed, "shipped": shipped, "stage_s": round(stage, 1)}
            for c in cs:
                w, b = fewshot.fit_head(x, y, len(task.labels), c)
                row[f"C={c:g}"] = float(((xd @ w.T + b).argmax(1) == yd).mean())
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
