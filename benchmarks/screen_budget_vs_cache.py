"""Screening (issue 10): under a time budget, cut the default recipe short, or freeze half the encoder and cache it?

Two ways to train MiniLM in about 60% of the default recipe's 3 epochs:
- the default recipe under `train.time_budget` (the learning rate decays to its end at the budget, so the run
  ends with a finished schedule after fewer epochs);
- 3 full epochs with the embeddings and the first 3 of 6 layers frozen and `train.cache_prefix` (the frozen
  prefix runs once per example, so epochs 2 and 3 run only the top 3 layers).
The planner (`frugal plan --time`, `frugal train --auto`) must choose between them; this measures which one is
more accurate at equal wall time, on SST-2 (8k rows, dev 872) and on CoNLL-2003 entity-type sentences (4
classes, 4,000 train rows sampled with seed 0, 1,000 dev rows). Each run in its own subprocess, one after the
other; the budgeted run gets the cached run's wall time as its budget. JSON lines on stdout.

    python benchmarks/screen_budget_vs_cache.py sst2,conll-type > budget_vs_cache.jsonl
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def files(name: str, tmp: Path) -> tuple[Path, Path, str]:
    """(train file, dev file, text column) of a set."""
    if name == "sst2":
        return ROOT / "examples/data/sst2_train_8k.tsv", ROOT / "examples/data/sst2_dev.tsv", "sentence"
    import bench_fewshot as bf

    train, dev = bf.SETS[name]()
    random.Random(0).shuffle(train)
    return bf.write_tsv(tmp / "train.tsv", train[:4000]), bf.write_tsv(tmp / "dev.tsv", dev), "text"


def child(train: str, dev: str, column: str, out: str, extra: str) -> None:
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train as run_train

    t0 = time.perf_counter()
    cfg = load_config(overrides={
        "output": out, "model": {"name": "minilm", "max_length": 64},
        "data": {"train": train, "eval": dev, "text_column": column},
        # batch 32 as given (classify.large_batch off): the recipe these screens measured, and screen_batch_size's
        # baseline
        "task": "classify", "classify": {"method": "finetune", "large_batch": False},
        "train": {"epochs": 3, "batch_size": 32, "seed": 0, **json.loads(extra)},
    })
    summary = run_train(cfg, progress=False)
    print(json.dumps({"wall_seconds": round(time.perf_counter() - t0, 1), "train_seconds": summary["train_seconds"],
                      "epochs_done": summary["epochs"],
                      "steps": summary["steps"], "stopped": summary["stopped"],
                      "accuracy": summary["final"]["accuracy"], "macro_f1": summary["final"].get("macro_f1")}))


def run(train: Path, dev: Path, column: str, tmp: Path, extra: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(train), str(dev), column,
                          str(tmp / f"run{time.monotonic_ns()}"), json.dumps(extra)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    for name in sys.argv[1].split(","):
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            train, dev, column = files(name, tmp)
            cached = run(train, dev, column, tmp, {"freeze_layers": 3, "cache_prefix": True})
            print(json.dumps({"set": name, "recipe": "3 layers frozen + prefix cache, 3 epochs", **cached}), flush=True)
            budget = f"{cached['wall_seconds']:.0f}s"
            cut = run(train, dev, column, tmp, {"time_budget": budget})
            print(json.dumps({"set": name, "recipe": f"default, time budget {budget}", **cut}), flush=True)
            full = run(train, dev, column, tmp, {})
            print(json.dumps({"set": name, "recipe": "default, 3 epochs", **full}), flush=True)


if __name__ == "__main__":
    main()
