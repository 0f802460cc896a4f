"""Few-shot classification: frugal few-shot vs SetFit vs plain full fine-tuning, all on all-MiniLM-L6-v2.

Two sets: SST-2 (dev: 872 rows) and CoNLL-2003 sentences labelled by their dominant entity type
(PER / LOC / ORG / MISC: the type with most entity mentions; ties dropped; pool from eng.train, the first
1,000 eligible dev sentences of eng.testa). For every (set, n per class, seed) the training sample is drawn
once by `frugal_lm.cli_cv.sample_per_class` and given to every method. Nothing is tuned on the dev set:
each method trains without it and is scored once at the end.

    python benchmarks/bench_fewshot.py --methods setfit,frugal,finetune --sizes 8,16,64 --seeds 5 \
        --out /tmp/fewshot.jsonl          # appends one JSON line per run; reruns skip finished cells
    python benchmarks/bench_fewshot.py --report /tmp/fewshot.jsonl   # the markdown table

Times (`train_seconds`): SetFit's `Trainer.train()` (pair generation, body training, head fit); frugal's
training steps (the engine's own clock) plus its head fit; model loading, saving and evaluation excluded for
both. `wall_seconds` (frugal) is the whole `engine.run.train` call, with loading and writing the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(os.environ.get("FRUGAL_SHARED_DATA", "/work/shared/data"))


def _sst2(split: str) -> list[tuple[str, str]]:
    lines = (SHARED / "sst2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(t.strip(), lab) for t, lab in (ln.rsplit("\t", 1) for ln in lines)]


def _conll_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    out, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                out.append((words, tags))
            words, tags = [], []
            continue
        words.append(parts[0])
        tags.append(parts[-1])
    return out


def conll_entity_type(file: str, limit: int | None = None) -> list[tuple[str, str]]:
    """Sentences labelled by the entity type with the most mentions (IOB1: a mention starts at B-, or at
    an I- whose type differs from the previous tag's); sentences without entities or with a tie dropped."""
    rows = []
    for words, tags in _conll_sentences(SHARED / "conll2003" / file):
        mentions: Counter[str] = Counter()
        prev = "O"
        for tag in tags:
            if tag != "O" and (tag.startswith("B-") or prev == "O" or prev[2:] != tag[2:]):
                mentions[tag[2:]] += 1
            prev = tag
        top = mentions.most_common(2)
        if not top or (len(top) == 2 and top[0][1] == top[1][1]) or len(words) < 4:
            continue
        rows.append((" ".join(words), top[0][0]))
        if limit and len(rows) >= limit:
            break
    return rows


SETS = {
    "sst2": lambda: (_sst2("train"), _sst2("dev")),
    "conll-type": lambda: (conll_entity_type("eng.train"), conll_entity_type("eng.testa", limit=1000)),
}


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{t.replace(chr(9), ' ')}\t{lab}\n" for t, lab in rows),
                    encoding="utf-8")
    return path


# -- methods -----------------------------------------------------------------------------------
def run_setfit(train: list[tuple[str, str]], dev: list[tuple[str, str]], seed: int) -> dict:
    """SetFit with its default TrainingArguments (logistic-regression head), only the seed set."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from frugal_lm.models.registry import resolve_model

    model = SetFitModel.from_pretrained(resolve_model("minilm").path)
    data = Dataset.from_dict({"text": [t for t, _ in train], "label": [lab for _, lab in train]})
    trainer = Trainer(model=model, args=TrainingArguments(seed=seed), train_dataset=data)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = list(model.predict([t for t, _ in dev], show_progress_bar=False))
    gold = [lab for _, lab in dev]
    return {"accuracy": sum(str(p) == g for p, g in zip(pred, gold, strict=True)) / len(gold),
            "train_seconds": seconds}


def run_frugal(train: list[tuple[str, str]], dev: list[tuple[str, str]], seed: int, method: str,
               extra: list[str] | None = None) -> dict:
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import load_run
    from frugal_lm.engine.run import train as run_train

    with tempfile.TemporaryDirectory() as tmp:
        train_file = write_tsv(Path(tmp) / "train.tsv", train)
        dev_file = write_tsv(Path(tmp) / "dev.tsv", dev)
        sets = [f"classify.method={method}", *(extra or [])]
        overrides = {"output": str(Path(tmp) / "run"), "model": {"name": "minilm", "max_length": 64},
                     "data": {"train": str(train_file)}, "train": {"seed": seed}}
        if method == "finetune":  # plain fine-tuning: enough epochs for a few dozen rows to be learned
            overrides["train"].update(epochs=max(3, min(30, 2000 // len(train))), batch_size=16, lr=5e-5)
        cfg = load_config(overrides=overrides, sets=sets)
        t0 = time.perf_counter()
        run_train(cfg, progress=False)
        seconds = time.perf_counter() - t0
        summary = json.loads((Path(cfg.output) / "metrics.json").read_text())
        _, task, model = load_run(cfg.output)
        records = task.read(str(dev_file))
        metrics = task.evaluate(model, records)
        head = 0.0
        if task.method == "fewshot":  # the head fit of `finish`, timed again on the same examples
            from frugal_lm.tasks.fewshot import fit_model_head

            t0 = time.perf_counter()
            fit_model_head(model, task.encode(task.read(str(train_file))), task.collator(), len(task.labels),
                           task.options.fewshot_c)
            head = time.perf_counter() - t0
    # train_seconds as SetFit's: training steps + head fit (model loading and saving excluded)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "train_seconds": summary["train_seconds"] + head, "loop_seconds": summary["train_seconds"],
            "head_seconds": head, "wall_seconds": seconds, "steps": summary["steps"]}


def screen_rows(name: str, size: int, seeds: list[int], out: Path, **fields: Any) -> None:
    """frugal few-shot on `size` per class of set `name` at each seed (samples as `bench` draws them), one JSON
    row per seed appended to `out` with `fields` added: what the screens that patch the stage in their own
    process record."""
    from frugal_lm.cli_cv import sample_per_class

    pool, dev = SETS[name]()
    for seed in seeds:
        train = [pool[i] for i in sample_per_class([lab for _, lab in pool], size, seed)]
        row = run_frugal(train, dev, seed, "fewshot")
        with out.open("a") as fh:
            fh.write(json.dumps({"set": name, "size": size, "seed": seed, "method": "frugal", "threads": 1,
                                 **fields, **row}) + "\n")


def screen_wrapped_loss(field: str, wrap: Any) -> None:
    """main() of a screen that changes the stage's pair loss in its own process, from its command line
    `NAME SIZE SEEDS VALUE OUT` (SEEDS comma-separated; VALUE a float): `wrap(shipped_pair_loss, VALUE)` is
    the loss trained with, one torch thread, rows appended to OUT with `field: VALUE`."""
    import torch

    from frugal_lm.tasks import fewshot

    torch.set_num_threads(1)
    name, size, seeds = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    value, out = float(sys.argv[4]), Path(sys.argv[5])
    fewshot.pair_loss = wrap(fewshot.pair_loss, value)
    screen_rows(name, size, seeds, out, **{field: value})


# -- driver --------------------------------------------------------------------------------------
def _done(out: Path) -> set[tuple]:
    if not out.exists():
        return set()
    rows = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    return {(r["set"], r["size"], r["seed"], r["method"]) for r in rows}


def bench(args: argparse.Namespace) -> None:
    import torch

    from frugal_lm.cli_cv import sample_per_class

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = _done(out)
    methods = args.methods.split(",")
    for name in args.sets.split(","):
        pool, dev = SETS[name]()
        print(f"{name}: pool {len(pool)}, dev {len(dev)}, dev labels {dict(Counter(lab for _, lab in dev))}",
              file=sys.stderr)
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in range(args.seed_from, args.seeds):
                train = [pool[i] for i in sample_per_class([lab for _, lab in pool], size, seed)]
                for method in methods:
                    if (name, size, seed, method) in done:
                        continue
                    if method == "setfit":
                        result = run_setfit(train, dev, seed)
                    else:
                        result = run_frugal(train, dev, seed, "fewshot" if method == "frugal" else method,
                                            args.set)
                    row = {"set": name, "size": size, "seed": seed, "method": method, "threads": args.threads,
                           **result, **({"set_items": args.set} if args.set and method != "setfit" else {})}
                    print(json.dumps(row), file=sys.stderr)
                    with out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")


def report(path: Path) -> str:
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["set"], r["size"], r["method"])].append(r)

    def ms(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0

    lines = ["| set | n/class | method | seeds | accuracy mean ± std | train s (mean) | vs SetFit (points) | time ratio |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for key in sorted(cells, key=lambda k: (k[0], k[1], k[2])):
        name, size, method = key
        acc = ms([r["accuracy"] for r in cells[key]])
        sec = ms([r["train_seconds"] for r in cells[key]])[0]
        ref = cells.get((name, size, "setfit"))
        # compare on the seeds both methods ran, so a reduced SetFit grid stays a paired comparison
        if ref and method != "setfit":
            seeds = {r["seed"] for r in ref} & {r["seed"] for r in cells[key]}
            mine = [r for r in cells[key] if r["seed"] in seeds]
            theirs = [r for r in ref if r["seed"] in seeds]
            delta = 100 * (ms([r["accuracy"] for r in mine])[0] - ms([r["accuracy"] for r in theirs])[0])
            ratio = ms([r["train_seconds"] for r in mine])[0] / ms([r["train_seconds"] for r in theirs])[0]
            vs = f"{delta:+.1f} ({len(seeds)} seeds)"
            tr = f"{ratio:.2f}"
        else:
            vs, tr = "", ""
        lines.append(f"| {name} | {size} | {method} | {len(cells[key])} | {acc[0]:.3f} ± {acc[1]:.3f} | "
                     f"{sec:.0f} | {vs} | {tr} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="frugal,setfit,finetune")
    p.add_argument("--sets", default="sst2,conll-type")
    p.add_argument("--sizes", default="8,16,64")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--seed-from", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads ran MiniLM 6x slower)")
    p.add_argument("--set", action="append", default=[], help="extra frugal --set items")
    p.add_argument("--out", default="fewshot_results.jsonl")
    p.add_argument("--report", help="print the markdown table of a results file and exit")
    args = p.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    bench(args)


if __name__ == "__main__":
    main()
