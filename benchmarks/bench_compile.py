"""Does `torch.compile` pay for a CPU fine-tuning step? MiniLM on SST-2, eager against compiled.

The step is frugal's default classification step without the rest of the engine: length-grouped batches
of 32 from the 8k SST-2 slice (max length 64), frozen embeddings, AdamW (foreach), bf16 autocast where
the CPU multiplies bf16 in hardware (else fp32). Each mode runs in its own fresh process: `--steps`
optimizer steps over the real first-epoch batches, every one timed. Reported: the first steps (where
compilation happens, once per new batch shape until dynamic shapes kick in), the steady step time (median
of the last half), and the total, which is what an epoch costs.

    python benchmarks/bench_compile.py [--steps 250] [--modes eager,compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples/data/sst2_train_8k.tsv"


def child(mode: str, steps: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from frugal_lm.data.batching import EpochBatchSampler
    from frugal_lm.engine.savers import resolve_precision
    from frugal_lm.models.loading import local_path
    from frugal_lm.models.registry import resolve_model

    torch.manual_seed(0)
    path = local_path(resolve_model("minilm", None))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model.bert.embeddings.requires_grad_(False)
    lines = TRAIN.read_text(encoding="utf-8").splitlines()[1:]
    texts, labels = zip(*(ln.rsplit("\t", 1) for ln in lines), strict=True)
    enc = tok(list(texts), truncation=True, max_length=64)["input_ids"]
    order = list(EpochBatchSampler([len(x) for x in enc], 32, seed=0))[:steps]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    precision = resolve_precision("auto", sum(p.numel() for p in model.parameters()))
    dtype = torch.bfloat16 if precision == "bf16" else None
    fwd = torch.compile(model, dynamic=None) if mode == "compile" else model
    model.train()
    times = []
    for idx in order:
        width = max(len(enc[i]) for i in idx)
        ids = torch.tensor([enc[i] + [0] * (width - len(enc[i])) for i in idx])
        mask = (torch.arange(width)[None] < torch.tensor([len(enc[i]) for i in idx])[:, None]).long()
        y = torch.tensor([int(labels[i]) for i in idx])
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(fwd(input_ids=ids, attention_mask=mask).logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    half = times[len(times) // 2:]
    return {"mode": mode, "precision": precision, "steps": len(times), "first_10_s": round(sum(times[:10]), 2),
            "steady_step_s": round(statistics.median(half), 4), "total_s": round(sum(times), 2),
            "final_loss": round(float(loss), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.steps)))
        return
    rows = []
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(a.steps)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['mode']} vs {base['mode']}: steady step {base['steady_step_s'] / r['steady_step_s']:.2f}x, "
              f"total {base['total_s'] / r['total_s']:.2f}x, process {base['process_s'] / r['process_s']:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
