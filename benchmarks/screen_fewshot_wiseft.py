"""Screening (issue 11): does interpolating the contrastive body back towards the pretrained one help?

Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): theta = alpha * theta_trained + (1 - alpha) *
theta_pretrained. After the contrastive stage the training embeddings sit in tight class clusters (the head-C
screening): the body may have moved further from the pretrained sentence space than the dev set rewards. Stage 1
is `classify.method=fewshot` as shipped; then for each alpha the body is interpolated, the head refitted on its
training embeddings (C=1, as shipped) and scored on dev. Alpha 1 is the shipped run. The dev set picks alpha
here (an oracle), so a setting is adopted only if one alpha gains on both sets. One torch thread; JSON lines.

    python benchmarks/screen_fewshot_wiseft.py conll-type 64 0,1,2 0.5,0.7,0.8,0.9,1 > wiseft.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402
from screen_fewshot_lpft import shipped_run  # noqa: E402

from frugal_lm.models.registry import resolve_model  # noqa: E402
from frugal_lm.tasks import fewshot  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    alphas = [float(x) for x in sys.argv[4].split(",")]
    pool, dev = bf.SETS[name]()
    start = AutoModel.from_pretrained(resolve_model("minilm").path).state_dict()
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            task, model, train_file, dev_file, stage = shipped_run(pool, dev, size, seed, tmp)
            collate = task.collator()
            examples = task.encode(task.read(str(train_file)))
            dev_examples = task.encode(task.read(str(dev_file)))
            y = np.array([e["labels"] for e in examples])
            yd = np.array([e["labels"] for e in dev_examples])
            enc = fewshot.body(model)
            trained = {k: v.detach().clone() for k, v in enc.state_dict().items()}
            shared = [k for k in trained if k in start and start[k].shape == trained[k].shape
                      and trained[k].is_floating_point()]
            row = {"set": name, "size": size, "seed": seed, "stage_s": round(stage, 1), "params": len(shared)}
            for alpha in alphas:
                mixed = dict(trained)
                for k in shared:
                    mixed[k] = alpha * trained[k] + (1 - alpha) * start[k].to(trained[k].dtype)
                enc.load_state_dict(mixed)
                x = fewshot.embeddings(model, examples, collate, 128)
                xd = fewshot.embeddings(model, dev_examples, collate, 128)
                w, b = fewshot.fit_head(x, y, len(task.labels), 1.0)
                row[f"a={alpha:g}"] = float(((xd @ w.T + b).argmax(1) == yd).mean())
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
