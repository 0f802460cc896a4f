"""frugal vs the Hugging Face Trainer: fine-tune MiniLM on SST-2 (8,000 train rows, 872 dev rows).

Both run in this one invocation, on the same data, each in its own subprocess so peak memory is
measured separately; "process s" is that subprocess from start to end (imports, loading, tokenizing,
training, evaluating the dev set, and for frugal saving the run folder), what a user waits for. The
Trainer runs with its defaults plus dynamic padding, 1 epoch, batch size 32, lr 5e-5, max length 64. frugal runs its
default recipe (length-grouped batches, frozen embeddings, batch 32 and lr 1e-4, or 64 and 2e-4 where
classify.large_batch applies: at least 150 steps of 64, so 3 epochs of 8k rows but not 1) with the same epochs
and max length. `--hf-batch64` adds the Trainer at batch 64 and lr 1e-4 (its lr scaled as frugal's), for
reference; the ratios stay against the Trainer at 32.

    python benchmarks/bench_classify.py [--rows 8000] [--epochs 1] [--ablation] [--hf-batch64] [--json out.json]
    python benchmarks/bench_classify.py --epochs 3 --variants "frugal, 3 layers frozen;frugal, 3 layers frozen + prefix cache"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples/data/sst2_train_8k.tsv"
DEV = ROOT / "examples/data/sst2_dev.tsv"


def _read(path: Path, rows: int | None) -> tuple[list[str], list[int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    if rows:
        lines = lines[:rows]
    texts, labels = zip(*(ln.rsplit("\t", 1) for ln in lines), strict=True)
    return [t.strip() for t in texts], [int(x) for x in labels]


VARIANTS = {
    "frugal": {},
    "frugal, random batches": {"group_by_length": False},
    "frugal, embeddings trained": {"freeze_embeddings": False},
    "frugal, random batches + embeddings trained": {"group_by_length": False, "freeze_embeddings": False},
    # the frozen-prefix cache (issue 10): what freezing N layers costs in accuracy, and what the cache saves
    "frugal, 2 layers frozen": {"freeze_layers": 2},
    "frugal, 2 layers frozen + prefix cache": {"freeze_layers": 2, "cache_prefix": True},
    "frugal, 3 layers frozen": {"freeze_layers": 3},
    "frugal, 3 layers frozen + prefix cache": {"freeze_layers": 3, "cache_prefix": True},
    # the default recipe to a time budget (under 1/5 of the Trainer's 3 epochs here): the schedule decays by then
    "frugal, time budget 60s": {"time_budget": "60s"},
    # the same, planned first (`frugal train --auto`): planning counts against the budget
    "frugal --auto, time budget 60s": {"time_budget": "60s", "auto": True},
    # classify.first_token off: the last layer computes every position (engine/first_token.py)
    "frugal, whole last layer": {"classify": {"first_token": False}},
    # classify.large_batch off: batch 32 and lr 1e-4 however many steps the run has
    "frugal, batch 32": {"classify": {"large_batch": False}},
}


def run_frugal(rows: int, seed: int, variant: str = "frugal", epochs: float = 1) -> dict:
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.tsv"
        train_file.write_text("\n".join(TRAIN.read_text().splitlines()[: rows + 1]) + "\n")
        settings = dict(VARIANTS[variant])
        auto = settings.pop("auto", False)
        classify = settings.pop("classify", {})
        cfg = load_config(overrides={
            "output": str(Path(tmp) / "run"), "model": {"name": "minilm", "max_length": 64},
            "data": {"train": str(train_file), "eval": str(DEV), "text_column": "sentence"},
            "train": {"epochs": epochs, "seed": seed, **settings},
            **({"classify": classify} if classify else {}),
        })
        t0 = time.perf_counter()
        planned, started = None, None
        if auto:  # as `frugal train --auto` does it
            from frugal_lm.plan import plan_for_auto

            cfg, planned, started = plan_for_auto(cfg)
        summary = train(cfg, progress=False, planned=planned, started=started)
        wall = time.perf_counter() - t0
    return {"examples_per_s": summary["train_examples_per_s"], "train_seconds": summary["train_seconds"],
            "dev_accuracy": summary["final"]["accuracy"], "wall_seconds": wall,
            "trainable_parameters": summary["trainable_parameters"],
            **{k: summary.get(k) for k in ("mfu", "model_flops_per_s", "peak_flops_per_s")}}


def run_hf(rows: int, seed: int, epochs: float = 1, batch: int = 32, lr: float = 5e-5) -> dict:
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from frugal_lm.models.registry import resolve_model

    transformers.utils.logging.set_verbosity_error()
    path = resolve_model("minilm").path
    tok = AutoTokenizer.from_pretrained(path)
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    class DS:
        def __init__(self, texts: list[str], labels: list[int]):
            enc = tok(texts, truncation=True, max_length=64)
            self.rows = [{**{k: enc[k][i] for k in enc}, "labels": labels[i]} for i in range(len(texts))]

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict:
            return self.rows[i]

    train_ds, dev_ds = DS(*_read(TRAIN, rows)), DS(*_read(DEV, None))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch,
                                 per_device_eval_batch_size=128, learning_rate=lr, seed=seed,
                                 report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                          data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        out = trainer.train()
        train_seconds = time.perf_counter() - t0
        pred = trainer.predict(dev_ds)
    accuracy = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    # MFU by frugal's own counter (engine/mfu.py) on the same real tokens, against the fp32 peak the Trainer runs at
    from frugal_lm.engine.mfu import mfu_report

    tokens = epochs * sum(len(r["input_ids"]) for r in train_ds.rows)
    return {"examples_per_s": out.metrics["train_samples_per_second"], "train_seconds": train_seconds,
            "dev_accuracy": accuracy, "wall_seconds": train_seconds,
            **mfu_report(model, int(tokens), int(epochs * len(train_ds)), train_seconds, "no", "cpu")}


def child(which: str, rows: int, seed: int, epochs: float) -> None:
    if which == "hf":
        result = run_hf(rows, seed, epochs)
    elif which == "hf64":
        result = run_hf(rows, seed, epochs, batch=64, lr=1e-4)
    else:
        result = run_frugal(rows, seed, which, epochs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--variants", default="", help="frugal variants to run besides the default: "
                    "names of VARIANTS separated by ; (the --ablation ones are the first four)")
    ap.add_argument("--child", choices=["hf", "hf64", *VARIANTS], help=argparse.SUPPRESS)
    ap.add_argument("--hf-batch64", action="store_true", help="also run the Trainer at batch 64, lr 1e-4")
    ap.add_argument("--ablation", action="store_true",
                    help="also run frugal with each default saver turned off, to show what each one gains")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.rows, a.seed, a.epochs)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    runs = ["hf", *list(VARIANTS)[:4]] if a.ablation else ["hf", "frugal"]
    runs += ["hf64"] if a.hf_batch64 else []
    runs += [v for v in a.variants.split(";") if v and v not in runs]
    for which in runs:
        started = time.perf_counter()  # the whole child: imports, loading, training, evaluation (and frugal's save)
        proc = subprocess.run([sys.executable, __file__, "--child", which, "--rows", str(a.rows),
                               "--seed", str(a.seed), "--epochs", str(a.epochs)], capture_output=True, text=True,
                              env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(line[-1][7:])
        results[which]["process_seconds"] = round(time.perf_counter() - started, 1)
    f, h = results["frugal"], results["hf"]
    h["name"] = "HF Trainer"
    if "hf64" in results:
        results["hf64"]["name"] = "HF Trainer, batch 64, lr 1e-4"
    print(f"SST-2, MiniLM, {a.rows} train rows, 872 dev rows, {a.epochs:g} epoch(s), max length 64, "
          f"seed {a.seed}")
    print("| | train examples/s | vs HF | train s | train-time ratio (HF / this) | process s | process-time ratio "
          "| dev accuracy | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        r = results[name]
        print(f"| {r.get('name', name)} | {r['examples_per_s']:.1f} | {r['examples_per_s'] / h['examples_per_s']:.2f}x "
              f"| {r['train_seconds']:.1f} | {h['train_seconds'] / r['train_seconds']:.2f}x "
              f"| {r['process_seconds']:.1f} | {h['process_seconds'] / r['process_seconds']:.2f}x "
              f"| {r['dev_accuracy']:.4f} | {r['peak_rss_mb']:.0f} |")
    print("\nMFU (frugal's counter, engine/mfu.py; each against the measured matmul peak of its own precision): "
          + "; ".join(f"{results[n].get('name', n)} {results[n]['model_flops_per_s'] / 1e9:.1f} GFLOP/s = "
                      f"{results[n]['mfu']:.1%} of {results[n]['peak_flops_per_s'] / 1e9:.0f}"
                      for n in runs if results[n].get("mfu") is not None))
    print(f"\nfrugal / HF: throughput {f['examples_per_s'] / h['examples_per_s']:.2f}x, dev accuracy "
          f"{100 * (f['dev_accuracy'] - h['dev_accuracy']):+.1f} points, peak RSS {f['peak_rss_mb'] / h['peak_rss_mb']:.2f}x")
    print(f"load average at the end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} cores")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
