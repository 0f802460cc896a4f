"""How good are `frugal plan`'s predictions? Plan, then train the recommended recipe, and compare.

For each scenario: `frugal plan CONFIG --json --write planned.yaml` in one process, then `frugal train planned.yaml`
in a fresh one; the prediction for the recommended candidate (peak memory, seconds per epoch of training) is set
against the run's metrics.json (peak_memory_bytes: the process's peak resident set; train_seconds / epochs).
Errors are (predicted - measured) / measured; time is the mean epoch (with train.cache_prefix the first epoch
computes the cache and the later ones read it). The issue's bar: memory within 15%, time per epoch within 20%.

    python benchmarks/bench_plan.py [--only sst2,ner] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, config, --set items for the plan, plan flags): each a different task, recipe or micro-batch
SCENARIOS = {
    "sst2": ("examples/sst2.yaml", [], []),
    "sst2-lora": ("examples/sst2.yaml", ["peft.method=lora"], ["--only-configured"]),
    "sst2-1300MB": ("examples/sst2.yaml", [], ["--memory", "1300MB", "--only-configured"]),
    "sst2-cache": ("examples/sst2.yaml", ["train.epochs=3", "train.freeze_layers=3", "train.cache_prefix=true"],
                   ["--only-configured"]),
    "ner": ("examples/ner.yaml", ["train.epochs=1"], ["--only-configured"]),
    # planned as its contrastive stage (the task's train_overrides), with the start copy the extrapolation keeps
    "fewshot": ("examples/fewshot.yaml", [], ["--only-configured"]),
    "clm-smollm2-lora": ("examples/clm.yaml", ["train.max_steps=40", "train.eval_every=0"], ["--only-configured"]),
}


def run(name: str, work: Path) -> dict:
    config, sets, flags = SCENARIOS[name]
    planned = work / f"{name}.yaml"
    set_args = [a for s in sets for a in ("--set", s)]
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "frugal_lm", "plan", config, "--json", "--write", str(planned),
                          *flags, *set_args, "--set", f"output={work / name}"], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{name}: plan failed:\n{out.stderr[-3000:]}")
    plan_s = time.perf_counter() - began
    result = json.loads(out.stdout)
    chosen = result["candidates"][result["recommended"]]
    out = subprocess.run([sys.executable, "-m", "frugal_lm", "train", str(planned), "-q", "--overwrite"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name}: train failed:\n{out.stderr[-3000:]}")
    m = json.loads((work / name / "metrics.json").read_text())
    epoch_s = m["train_seconds"] / m["epochs"]
    predicted_epoch = chosen["run_s"] / result["epochs"]
    row = {"scenario": name, "recipe": chosen["method"], "micro_batch": chosen["micro_batch"],
           "checkpointing": chosen["checkpointing"], "plan_s": round(plan_s, 1),
           "predicted_peak_mb": round(chosen["memory"]["peak"] / 1e6), "measured_peak_mb": round(m["peak_memory_bytes"] / 1e6),
           # the mean epoch: with the prefix cache the first epoch computes it and the later ones are faster
           "predicted_epoch_s": round(predicted_epoch, 1), "measured_epoch_s": round(epoch_s, 1),
           "memory_parts_mb": {k: round(v / 1e6) for k, v in chosen["memory"].items()}}
    row["memory_error"] = round((chosen["memory"]["peak"] - m["peak_memory_bytes"]) / m["peak_memory_bytes"], 3)
    row["time_error"] = round((predicted_epoch - epoch_s) / epoch_s, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        for name in args.only.split(","):
            row = run(name, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| scenario | recipe | micro-batch | memory predicted / measured (MB) | error | epoch predicted / "
          "measured (s) | error |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['recipe']} | {r['micro_batch'] or 'whole'} | {r['predicted_peak_mb']} / "
              f"{r['measured_peak_mb']} | {r['memory_error']:+.1%} | {r['predicted_epoch_s']} / {r['measured_epoch_s']} "
              f"| {r['time_error']:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
