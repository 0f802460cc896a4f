"""Screening (issue 11): does the few-shot head gain from other features of the same trained body?

Stage 1 is `classify.method=fewshot` as shipped; then heads are fitted (L-BFGS, C=1, as shipped) on other
features of the same body and scored on the dev set:

- `last`: the shipped feature (normalised mean of the last layer), a check that the screen scores as shipped;
- `cat:-1,-2` / `cat:-1,-3`: the normalised means of the last and an earlier layer, concatenated (lower layers
  keep more of the words, and sentiment is lexical);
- `avg:-1,-2`: the mean of the last two layers' token states, pooled and normalised;
- `views:K`: the shipped feature, the head fitted on the clean embeddings plus K dropout-on (training-mode)
  embeddings of each training example (noise as augmentation for the head).

One torch thread; JSON lines on stdout.

    python benchmarks/screen_fewshot_features.py sst2 64 0,1,2 > features.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402
from screen_fewshot_lpft import shipped_run  # noqa: E402

from frugal_lm.engine.inference import map_batches  # noqa: E402
from frugal_lm.tasks import fewshot  # noqa: E402


def layer_features(model, examples, collate, layers: list[int], mode: str) -> np.ndarray:
    """Per example: normalised masked means of the given hidden-state layers, concatenated (`cat`) or of
    their average (`avg`)."""

    def fn(m, batch):
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        states = fewshot.body(m)(**inputs, output_hidden_states=True).hidden_states
        mask = inputs["attention_mask"].unsqueeze(-1).float()

        def pool(h):
            return F.normalize((h.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

        if mode == "avg":
            out = pool(sum(states[i] for i in layers) / len(layers))
        else:
            out = torch.cat([pool(states[i]) for i in layers], dim=-1)
        return list(out.cpu().numpy())

    return np.stack(map_batches(model, examples, collate, 128, fn, next(model.parameters()).device))


def dropout_views(model, examples, collate, k: int) -> np.ndarray:
    """K embeddings of each example with dropout on: (K * N, H), view-major."""
    model.train()
    with torch.no_grad():
        views = []
        for _ in range(k):
            rows = []
            for i in range(0, len(examples), 128):
                rows.append(fewshot.embed(model, collate(examples[i:i + 128])).cpu().numpy())
            views.append(np.concatenate(rows))
    model.eval()
    return np.concatenate(views)


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    pool, dev = bf.SETS[name]()
    for seed in seeds:
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as tmp:
            task, model, train_file, dev_file, stage = shipped_run(pool, dev, size, seed, tmp)
            shipped = task.evaluate(model, task.read(str(dev_file)))["accuracy"]
            collate = task.collator()
            examples = task.encode(task.read(str(train_file)))
            dev_examples = task.encode(task.read(str(dev_file)))
            y = np.array([e["labels"] for e in examples])
            yd = np.array([e["labels"] for e in dev_examples])
            k = len(task.labels)
            row = {"set": name, "size": size, "seed": seed, "shipped": shipped, "stage_s": round(stage, 1)}

            def score(x, xd, yy=y, k=k, yd=yd):
                w, b = fewshot.fit_head(x, yy, k, 1.0)
                return float(((xd @ w.T + b).argmax(1) == yd).mean())

            x = fewshot.embeddings(model, examples, collate, 128)
            xd = fewshot.embeddings(model, dev_examples, collate, 128)
            row["last"] = score(x, xd)
            for mode, layers in (("cat", [-1, -2]), ("cat", [-1, -3]), ("avg", [-1, -2])):
                key = f"{mode}:{','.join(map(str, layers))}"
                row[key] = score(layer_features(model, examples, collate, layers, mode),
                                 layer_features(model, dev_examples, collate, layers, mode))
            for views in (4, 16):
                xv = np.concatenate([x, dropout_views(model, examples, collate, views)])
                # C scaled by 1 / (views + 1): the same balance of data and penalty as the clean fit
                w, b = fewshot.fit_head(xv, np.tile(y, views + 1), k, 1.0 / (views + 1))
                row[f"views:{views}"] = float(((xd @ w.T + b).argmax(1) == yd).mean())
                w, b = fewshot.fit_head(xv, np.tile(y, views + 1), k, 1.0)
                row[f"views:{views},C=1"] = float(((xd @ w.T + b).argmax(1) == yd).mean())
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
