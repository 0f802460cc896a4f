"""Screening (issue 11): several contrastive bodies on the same sample, averaged, against one.

For each sample seed, K few-shot runs on the same examples that differ only in train.seed (pair order, head
init, dropout); k=0 is the run as shipped (train.seed = the sample seed). Scored on dev:
  single    the shipped run;
  soup      the K bodies' weights averaged (a uniform model soup, Wortsman et al. 2022: one model to serve),
            then the head refitted on the averaged body's training embeddings;
  ensemble  the K runs' class probabilities averaged (K models to serve).
Extra `--set` items go to every run (e.g. classify.fewshot_extrapolate=1.3). One torch thread; JSON lines.

    python benchmarks/screen_fewshot_soup.py sst2 64 0,1,2 3 classify.fewshot_extrapolate=1.3 > soup.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

from frugal_lm.cli_cv import sample_per_class  # noqa: E402
from frugal_lm.config import load_config  # noqa: E402
from frugal_lm.engine.run import load_run  # noqa: E402
from frugal_lm.engine.run import train as run_train  # noqa: E402
from frugal_lm.tasks import fewshot  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    name, size = sys.argv[1], int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    k_runs = int(sys.argv[4])
    sets = sys.argv[5:]
    pool, dev = bf.SETS[name]()
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            train = [pool[i] for i in sample_per_class([lab for _, lab in pool], size, seed)]
            train_file = bf.write_tsv(Path(tmp) / "train.tsv", train)
            dev_file = bf.write_tsv(Path(tmp) / "dev.tsv", dev)
            runs, seconds = [], []
            for k in range(k_runs):
                cfg = load_config(overrides={"output": f"{tmp}/run{k}", "model": {"name": "minilm", "max_length": 64},
                                             "data": {"train": str(train_file)},
                                             "train": {"seed": seed if k == 0 else 1000 * seed + k}},
                                  sets=["classify.method=fewshot", *sets])
                t0 = time.perf_counter()
                run_train(cfg, progress=False)
                seconds.append(time.perf_counter() - t0)
                runs.append(load_run(cfg.output)[1:])
            task = runs[0][0]
            dev_examples = task.encode(task.read(str(dev_file)))
            yd = np.array([e["labels"] for e in dev_examples])
            probs = []
            for t, m in runs:
                logits = t._logits(m, dev_examples)
                p = np.exp(logits - logits.max(1, keepdims=True))
                probs.append(p / p.sum(1, keepdims=True))
            single = float((probs[0].argmax(1) == yd).mean())
            ensemble = float((np.mean(probs, 0).argmax(1) == yd).mean())
            # the soup: the K bodies averaged into the first run's model, its head refitted
            bodies = [dict(fewshot.body(m).named_parameters()) for _, m in runs]
            with torch.no_grad():
                for key, p in bodies[0].items():
                    p.copy_(torch.stack([b[key].detach() for b in bodies]).mean(0))
            soup_model = runs[0][1]
            fewshot.fit_model_head(soup_model, task.encode(task.read(str(train_file))), task.collator(),
                                   len(task.labels), 1.0)
            soup = float((task._logits(soup_model, dev_examples).argmax(1) == yd).mean())
            print(json.dumps({"set": name, "size": size, "seed": seed, "k": k_runs, "sets": sets, "single": single,
                              "soup": soup, "ensemble": ensemble, "train_s": [round(s, 1) for s in seconds]}),
                  flush=True)


if __name__ == "__main__":
    main()
