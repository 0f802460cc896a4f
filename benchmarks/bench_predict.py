"""Prediction throughput: `frugal predict` vs the `transformers` pipeline, same model, same files.

Two trained MiniLM run folders are made first (not timed): a classifier on the 8k SST-2 slice
(`examples/sst2.yaml`, 1 epoch) and a tagger on 2,000 CoNLL sentences (`examples/ner.yaml`, 1 epoch), or
given with --classify-run / --ner-run. Then every system predicts a whole file in its own fresh process:
SST-2 dev (872 sentences) and CoNLL-2003 test (eng.testb, 3,453 sentences). Both read the file, tokenize,
run the model and turn logits into answers (labels; entity spans with character offsets):

- frugal: `load_run` + `task.inputs(file)` + `task.predict` (the code behind `frugal predict`), at
  --precision auto (bf16 where the CPU multiplies bf16 in hardware, else fp32) and fp32; and the
  `frugal predict RUN --data FILE -o out.jsonl` command's wall time, process start and model load included.
- pipeline: `pipeline("text-classification")` / `pipeline("token-classification",
  aggregation_strategy="first")` on the exported `model/` folder, called on the list of texts, at its
  default batch size (1) and at batch size 32, in fp32 (its default) and, as the stronger reference, in
  bf16 (`dtype=torch.bfloat16`) at batch 32.

Each process first predicts 8 texts (warm-up), then the whole file `--reps` times; the fastest pass
counts. Agreement: SST-2 labels against the fp32 pipeline's; CoNLL entity F1 against the gold tags as
exact (type, character span) matches.

    python benchmarks/bench_predict.py [--json benchmarks/results_predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_ner import read_conll  # noqa: E402

SST2_DEV = ROOT / "examples/data/sst2_dev.tsv"
CONLL_TEST = ROOT.parent / "shared/data/conll2003/eng.testb"


def gold_spans(words: list[str], tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, char start, char end) of each entity in IOB1 or BIO tags, over the words joined by spaces."""
    spans, starts, pos = set(), [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    cur = None  # (type, start char)
    for i, t in enumerate([*tags, "O"]):
        kind = t[2:] if t != "O" else None
        begins = kind is not None and (t.startswith("B-") or cur is None or cur[0] != kind)
        if cur is not None and (kind is None or begins):
            spans.add((cur[0], cur[1], starts[i - 1] + len(words[i - 1])))
            cur = None
        if begins:
            cur = (kind, starts[i])
    return spans


def f1(pred: list[set], gold: list[set]) -> float:
    tp = sum(len(p & g) for p, g in zip(pred, gold, strict=True))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    return 2 * tp / max(n_pred + n_gold, 1)


def texts_of(task: str) -> list[str]:
    if task == "classify":
        lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
        col = lines[0].split("\t").index("sentence")
        return [ln.split("\t")[col] for ln in lines[1:] if ln.strip()]
    return [" ".join(w) for w, _ in read_conll(CONLL_TEST)]


def child(system: str, task: str, run: Path, reps: int, out: Path) -> None:
    """One system predicting one file, in this fresh process; writes timings and answers to `out`."""
    import torch

    t0 = time.perf_counter()
    data = SST2_DEV if task == "classify" else CONLL_TEST
    if system.startswith("frugal"):
        from frugal_lm.engine.run import load_run
        from frugal_lm.engine.savers import cast_for_inference

        _, t, model = load_run(run)
        cast_for_inference(model, "fp32" if system == "frugal-fp32" else "auto")
        load_s = time.perf_counter() - t0
        t.predict(model, t.from_texts(texts_of(task)[:8]))

        def once() -> list:
            rows = t.predict(model, t.inputs(str(data)))
            if task == "classify":
                return [r["label"] for r in rows]
            return [sorted((e["type"], e["char_start"], e["char_end"]) for e in r["entities"]) for r in rows]
    else:
        from transformers import pipeline

        _, batch, dtype = system.split("-")  # pipeline-B-DTYPE
        kind = "text-classification" if task == "classify" else "token-classification"
        extra = {} if task == "classify" else {"aggregation_strategy": "first"}
        pipe = pipeline(kind, model=str(run / "model"), device="cpu",
                        dtype=torch.bfloat16 if dtype == "bf16" else torch.float32, **extra)
        load_s = time.perf_counter() - t0
        pipe(texts_of(task)[:8], batch_size=int(batch))

        def once() -> list:
            answers = pipe(texts_of(task), batch_size=int(batch))
            if task == "classify":
                return [a["label"] for a in answers]
            return [sorted((e["entity_group"], e["start"], e["end"]) for e in a) for a in answers]
    times = []
    for _ in range(reps):
        t1 = time.perf_counter()
        answers = once()
        times.append(time.perf_counter() - t1)
    out.write_text(json.dumps({"load_s": load_s, "predict_s": min(times), "all_s": times, "answers": answers}))


def train_runs(work: Path) -> tuple[Path, Path]:
    runs = []
    for name, cfg in (("classify", "examples/sst2.yaml"), ("ner", "examples/ner.yaml")):
        run = work / name
        cmd = [sys.executable, "-m", "frugal_lm", "train", cfg, "--epochs", "1", "--output", str(run)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        runs.append(run)
    return runs[0], runs[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classify-run", type=Path)
    p.add_argument("--ner-run", type=Path)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--systems", default="frugal,frugal-fp32,pipeline-1-fp32,pipeline-32-fp32,pipeline-32-bf16")
    p.add_argument("--tasks", default="classify,ner")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs=4, metavar=("SYSTEM", "TASK", "RUN", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], Path(a.child[2]), a.reps, Path(a.child[3]))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if a.classify_run and a.ner_run:
        runs = {"classify": a.classify_run, "ner": a.ner_run}
    else:
        c, n = train_runs(work)
        runs = {"classify": a.classify_run or c, "ner": a.ner_run or n}
    gold = [gold_spans(w, t) for w, t in read_conll(CONLL_TEST)]
    results: dict = {"cpu_threads": os.cpu_count(), "reps": a.reps, "rows": []}
    for task in a.tasks.split(","):
        n = len(texts_of(task))
        got = {}
        for system in a.systems.split(","):
            out = work / f"{system}-{task}.json"
            subprocess.run([sys.executable, __file__, "--reps", str(a.reps), "--child", system, task,
                            str(runs[task]), str(out)], check=True, env=env)
            got[system] = json.loads(out.read_text())
        if task == "classify":  # the command itself, process start and model load included
            t1 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "frugal_lm", "predict", str(runs[task]), "--data",
                            str(SST2_DEV), "-o", str(work / "cli.jsonl")], check=True, env=env)
            results["cli_classify_wall_s"] = time.perf_counter() - t1
        ref = got.get("pipeline-32-fp32", {}).get("answers")
        for system, r in got.items():
            row = {"task": task, "system": system, "n": n, "load_s": round(r["load_s"], 2),
                   "predict_s": round(r["predict_s"], 2), "per_s": round(n / r["predict_s"], 1)}
            if task == "classify" and ref:
                row["agree_with_pipeline_fp32"] = sum(x == y for x, y in zip(r["answers"], ref, strict=True))
            if task == "ner":
                row["entity_f1"] = round(f1([set(map(tuple, x)) for x in r["answers"]], gold), 4)
            results["rows"].append(row)
    print("| task | system | texts | load s | predict s | texts/s | vs pipeline batch 1 | vs pipeline batch 32 | check |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in results["rows"]:
        base = {s["system"]: s["predict_s"] for s in results["rows"] if s["task"] == row["task"]}
        r1 = base.get("pipeline-1-fp32", float("nan")) / row["predict_s"]
        r32 = base.get("pipeline-32-fp32", float("nan")) / row["predict_s"]
        check = (f"{row['agree_with_pipeline_fp32']}/{row['n']} labels agree" if "agree_with_pipeline_fp32" in row
                 else f"entity F1 {row['entity_f1']}" if "entity_f1" in row else "")
        print(f"| {row['task']} | {row['system']} | {row['n']} | {row['load_s']} | {row['predict_s']} | "
              f"{row['per_s']} | {r1:.2f}x | {r32:.2f}x | {check} |")
    if "cli_classify_wall_s" in results:
        print(f"frugal predict (CLI, SST-2 dev, process start and load included): {results['cli_classify_wall_s']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
