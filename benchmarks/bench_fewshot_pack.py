"""The few-shot stage's encoding of one contrastive batch: one padded pass vs length chunks vs packing.

For each set and size, the first contrastive batch's worth of sampled training sentences (32 rows, or all of a
smaller set; seed 0, `frugal_lm.cli_cv.sample_per_class`, as bench_fewshot.py samples) is encoded by
MiniLM in training mode and a loss on its embeddings backpropagated, the way `fewshot.pair_loss` does:
- `padded`: one pass over the batch padded to its longest row (what sentence-transformers / SetFit do);
- `chunks`: `fewshot.chunked_pool`, rows in chunks of similar length (frugal up to 2026-12-06);
- `packed W`: `fewshot.packed_pool` at packed-row width W (frugal since: W = fewshot.PACK_WIDTH).
Seconds per forward + backward (median of --repeats after one warm-up), one torch thread by default, the
embeddings' largest difference from the padded pass. JSON to --json.

    python benchmarks/bench_fewshot_pack.py --json benchmarks/results_fewshot_pack.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fewshot as bf  # noqa: E402

from frugal_lm.cli_cv import sample_per_class  # noqa: E402
from frugal_lm.tasks import fewshot  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sst2,conll-type")
    ap.add_argument("--sizes", default="8,64")
    ap.add_argument("--widths", default="48,64,96")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from frugal_lm.models.registry import resolve_model

    path = resolve_model("minilm").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
    for p in fewshot.body(model).embeddings.parameters():  # as the stage trains: embeddings fixed
        p.requires_grad_(False)
    results = []
    for name in args.sets.split(","):
        pool, _ = bf.SETS[name]()
        for size in (int(s) for s in args.sizes.split(",")):
            texts = [pool[i][0] for i in sample_per_class([lab for _, lab in pool], size, 0)][:32]
            batch = dict(tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
            lengths = batch["attention_mask"].sum(1).tolist()
            ways = {"padded": lambda b=batch: fewshot._mean_pool(model, b),
                    "chunks": lambda b=batch: fewshot.chunked_pool(model, b)}
            for w in (int(x) for x in args.widths.split(",")):
                ways[f"packed {w}"] = lambda b=batch, w=w: fewshot.packed_pool(model, b, width=w)
            with torch.no_grad():
                model.eval()
                ref = F.normalize(ways["padded"](), dim=-1)
                diffs = {k: float((F.normalize(f(), dim=-1) - ref).abs().max()) for k, f in ways.items()}
                model.train()
            row = {"set": name, "size": size, "rows": len(texts), "tokens": sum(lengths),
                   "padded_tokens": len(lengths) * max(lengths), "seconds": {}, "max_diff": diffs}
            for key, fn in ways.items():
                times = []
                for r in range(args.repeats + 1):
                    t0 = time.perf_counter()
                    emb = F.normalize(fn(), dim=-1)
                    (emb @ emb.T).pow(2).sum().backward()
                    model.zero_grad(set_to_none=True)
                    if r:
                        times.append(time.perf_counter() - t0)
                row["seconds"][key] = round(statistics.median(times), 4)
            base = row["seconds"]["chunks"]
            print(f"{name} {size}/class, {row['rows']} rows, {row['tokens']} tokens ({row['padded_tokens']} "
                  "padded): " + ", ".join(f"{k} {v:.3f} s ({base / v:.2f}x chunks)"
                                           for k, v in row["seconds"].items()), flush=True)
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats,
                                         "pack_width": fewshot.PACK_WIDTH, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
