"""frugal vs the Hugging Face Trainer: fine-tune MiniLM for NER on CoNLL-2003 (English).

Both run in this one invocation, on the same data, each in its own subprocess so peak memory is
measured separately. Train on eng.train (14,041 sentences) for 1 epoch, then evaluate on eng.testa (dev)
and eng.testb (test); entity-level precision/recall/F1.

The Trainer is set up as its token-classification docs do: IOB1 tags converted to BIO (IOB2),
AutoModelForTokenClassification, words tokenized with is_split_into_words=True, the label on each word's
first sub-token and -100 on the others, DataCollatorForTokenClassification, batch size 32, lr 5e-5, seed 0,
max length 128 (truncation), no evaluation during training; then trainer.predict on dev and test (default
eval batch size 8) and seqeval (default mode) on the first-sub-token predictions mapped back to words
(words truncated away count as O predictions). frugal runs through its CLI (`frugal train --task ner`,
its default recipe, same epochs, batch size, max length and seed), and is evaluated in-process
(load_run + task.evaluate) and through `frugal eval` (wall time, with process start and model load).
One difference stays: frugal does not truncate long sentences (it reads them in overlapping windows),
while the Trainer setup drops sub-tokens past max length (3 dev sentences are cut at 128).

Sentences/s is training only. Eval seconds are dev + test together: reading and tokenizing the file,
prediction and the metric (HF: inside the child, after training; frugal in-process: after load_run).

    python benchmarks/bench_ner.py [--data-dir ../shared/data/conll2003] [--json out.json]
    python benchmarks/bench_ner.py --only hf --limit 300      # quick check of one half
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared/data/conll2003"
SPLITS = {"train": "eng.train", "dev": "eng.testa", "test": "eng.testb"}


def read_conll(path: Path, limit: int | None = None) -> list[tuple[list[str], list[str]]]:
    """Sentences of a 4-column CoNLL file as (words, IOB1 tags); -DOCSTART- lines are skipped."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split()
        if cols and cols[0] != "-DOCSTART-":
            words.append(cols[0])
            tags.append(cols[-1])
            continue
        if words:
            sentences.append((words, tags))
            if limit and len(sentences) >= limit:
                return sentences
            words, tags = [], []
    if words:
        sentences.append((words, tags))
    return sentences[:limit] if limit else sentences


def iob1_to_bio(tags: list[str]) -> list[str]:
    """IOB1 (B- only between two adjacent entities of one type) to BIO/IOB2 (B- starts every entity)."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def head_of_file(path: Path, sentences: int, dest: Path) -> None:
    """Copy the lines of `path` up to and including its first `sentences` sentences (format unchanged)."""
    lines, seen, in_sentence = [], 0, False
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split()
        if cols and cols[0] != "-DOCSTART-":
            in_sentence = True
        elif in_sentence:
            in_sentence = False
            seen += 1
            if seen >= sentences:
                break
        lines.append(line)
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def word_predictions(word_ids: list[int | None], pred_ids, n_words: int, label_list: list[str]) -> list[str]:
    """One tag per word from its first sub-token's prediction; words truncated away stay O."""
    pred, prev = ["O"] * n_words, None
    for j, w in enumerate(word_ids):
        if w is not None and w != prev:
            pred[w] = label_list[int(pred_ids[j])]
        prev = w
    return pred


def _frac(x: float) -> float:
    return x / 100 if x > 1 else x  # an F1 above 1 can only be a percentage


def run_hf(data: Path, limit: int | None, max_length: int, seed: int) -> dict:
    import numpy as np
    import transformers
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from frugal_lm.models.registry import resolve_model

    transformers.utils.logging.set_verbosity_error()
    t_read = time.perf_counter()
    train = [(w, iob1_to_bio(t)) for w, t in read_conll(data / SPLITS["train"], limit)]
    types = sorted({t[2:] for split in SPLITS.values() for _, tags in read_conll(data / split)
                    for t in tags if t != "O"})
    label_list = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    label2id = {lab: i for i, lab in enumerate(label_list)}
    path = resolve_model("minilm").path
    tok = AutoTokenizer.from_pretrained(path)
    transformers.set_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(label_list), id2label=dict(enumerate(label_list)), label2id=label2id)

    class DS:
        """Tokenized sentences; `word_ids` keeps each row's sub-token -> word map for decoding."""

        def __init__(self, sentences: list[tuple[list[str], list[str]]]):
            enc = tok([w for w, _ in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
            self.rows, self.word_ids = [], []
            for i, (_, tags) in enumerate(sentences):
                word_ids = enc.word_ids(i)
                labels, prev = [], None
                for w in word_ids:  # the label on each word's first sub-token, -100 elsewhere
                    labels.append(-100 if w is None or w == prev else label2id[tags[w]])
                    prev = w
                self.rows.append({**{k: enc[k][i] for k in enc}, "labels": labels})
                self.word_ids.append(word_ids)

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict:
            return self.rows[i]

    train_ds = DS(train)
    prep_seconds = time.perf_counter() - t_read
    out_metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=32,
                                 learning_rate=5e-5, seed=seed, eval_strategy="no", report_to="none",
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                          data_collator=DataCollatorForTokenClassification(tok))
        t0 = time.perf_counter()
        out = trainer.train()
        train_seconds = time.perf_counter() - t0
        result = {"train_examples": len(train_ds), "train_seconds": train_seconds,
                  "examples_per_s": len(train_ds) / train_seconds,  # wall time of trainer.train()
                  "examples_per_s_trainer": out.metrics["train_samples_per_second"], "prep_seconds": prep_seconds,
                  "labels": label_list}
        for split in ("dev", "test"):
            t0 = time.perf_counter()
            sentences = [(w, iob1_to_bio(t)) for w, t in read_conll(data / SPLITS[split])]
            ds = DS(sentences)
            logits = trainer.predict(ds).predictions
            logits = logits[0] if isinstance(logits, tuple) else logits
            pred_ids = np.asarray(logits).argmax(-1)
            y_true = [tags for _, tags in sentences]
            y_pred = [word_predictions(ds.word_ids[i], pred_ids[i], len(words), label_list)
                      for i, (words, _) in enumerate(sentences)]
            f1, p, r = f1_score(y_true, y_pred), precision_score(y_true, y_pred), recall_score(y_true, y_pred)
            out_metrics[f"{split}_seconds"] = time.perf_counter() - t0
            result.update({f"{split}_f1": float(f1), f"{split}_precision": float(p),
                           f"{split}_recall": float(r), f"{split}_sentences": len(sentences)})
    result.update(out_metrics)
    result["eval_seconds"] = out_metrics["dev_seconds"] + out_metrics["test_seconds"]
    return result


def _cli(args: list[str], env: dict) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "frugal_lm", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"frugal {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def _children_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_frugal(data: Path, limit: int | None, max_length: int, seed: int, extra: list[str],
               inprocess: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = data / SPLITS["train"]
        if limit:
            train_file = Path(tmp) / SPLITS["train"]
            head_of_file(data / SPLITS["train"], limit, train_file)
        run = Path(tmp) / "run"
        stdout, train_wall = _cli(["train", "--task", "ner", "--model", "minilm", "--train", str(train_file),
                                   "--output", str(run), "--epochs", "1",
                                   "--batch-size", "32", "--max-length", str(max_length), "--seed", str(seed),
                                   "--quiet", *extra], env)
        line = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        summary = json.loads(line[-1]) if line else {}
        metrics = json.loads((run / "metrics.json").read_text())
        result = {"train_examples": metrics["train_examples"], "train_seconds": metrics["train_seconds"],
                  # sentences / training-loop time (batching included, loading and saving not)
                  "examples_per_s": metrics["train_examples"] / metrics["train_seconds"],
                  "train_cli_wall_seconds": train_wall,
                  "cli_summary": summary, "peak_rss_train_mb": _children_rss_mb()}
        for split in ("dev", "test"):
            stdout, wall = _cli(["eval", str(run), "--data", str(data / SPLITS[split])], env)
            m = json.loads(stdout[stdout.index("{"):])
            result.update({f"cli_{split}_seconds": wall, f"cli_{split}_f1": _frac(m["f1"]),
                           f"cli_{split}_precision": _frac(m["precision"]), f"cli_{split}_recall": _frac(m["recall"]),
                           f"cli_{split}_token_accuracy": m.get("token_accuracy")})
        result["cli_eval_seconds"] = result["cli_dev_seconds"] + result["cli_test_seconds"]
        result["peak_rss_children_mb"] = _children_rss_mb()
        if inprocess:
            from frugal_lm.engine.run import load_run

            t0 = time.perf_counter()
            _, task, model = load_run(run)
            result["load_seconds"] = time.perf_counter() - t0
            for split in ("dev", "test"):
                t0 = time.perf_counter()
                records = task.read(str(data / SPLITS[split]))
                m = task.evaluate(model, records)  # encodes the records itself: the timing covers it
                result[f"{split}_seconds"] = time.perf_counter() - t0
                result.update({f"{split}_f1": _frac(m["f1"]), f"{split}_precision": _frac(m["precision"]),
                               f"{split}_recall": _frac(m["recall"]), "per_type_" + split: m.get("per_type")})
            result["eval_seconds"] = result["dev_seconds"] + result["test_seconds"]
        else:
            for key in ("dev_f1", "test_f1", "dev_precision", "test_precision", "dev_recall", "test_recall"):
                result[key] = result["cli_" + key]
            result["eval_seconds"] = result["cli_eval_seconds"]
        result["eval_measure"] = "in-process" if inprocess else "CLI wall"
    return result


def child(a: argparse.Namespace) -> None:
    if a.child == "hf":
        result = run_hf(a.data_dir, a.limit, a.max_length, a.seed)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        result = run_frugal(a.data_dir, a.limit, a.max_length, a.seed, shlex.split(a.frugal_args),
                            a.frugal_inprocess_eval)
        result["peak_rss_mb"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                    result["peak_rss_children_mb"])
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with eng.train, eng.testa, eng.testb")
    ap.add_argument("--limit", type=int, help="train on the first N sentences only (quick checks)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["hf", "frugal"], help="run one system only")
    ap.add_argument("--frugal-args", default="", help="extra flags for `frugal train`, e.g. --frugal-args='--lr 1e-4'")
    ap.add_argument("--frugal-inprocess-eval", action=argparse.BooleanOptionalAction, default=True,
                    help="time frugal's evaluation in-process (load_run + task.evaluate; default) rather than "
                         "by the wall time of `frugal eval` (always reported too)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--child", choices=["hf", "frugal"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.data_dir = a.data_dir.resolve()
    if a.child:
        child(a)
        return
    for split in SPLITS.values():
        if not (a.data_dir / split).is_file():
            sys.exit(f"{a.data_dir / split}: not found (--data-dir)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, dict] = {}
    runs = [a.only] if a.only else ["hf", "frugal"]
    for which in runs:
        cmd = [sys.executable, __file__, "--child", which, "--data-dir", str(a.data_dir),
               "--max-length", str(a.max_length), "--seed", str(a.seed), f"--frugal-args={a.frugal_args}",
               "--frugal-inprocess-eval" if a.frugal_inprocess_eval else "--no-frugal-inprocess-eval"]
        if a.limit:
            cmd += ["--limit", str(a.limit)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(line[-1][7:])
    names = {"hf": "HF Trainer", "frugal": "frugal"}
    n_train = next(iter(results.values()))["train_examples"]
    extra = f", frugal args: {a.frugal_args}" if a.frugal_args and "frugal" in results else ""
    print(f"CoNLL-2003 NER, MiniLM, {n_train} train sentences, dev eng.testa, test eng.testb, 1 epoch, batch 32, "
          f"max length {a.max_length}, seed {a.seed}{extra}")
    print("| | train sentences/s | train s | eval s (dev+test) | dev F1 | test F1 | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for which in runs:
        r = results[which]
        print(f"| {names[which]} | {r['examples_per_s']:.1f} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} "
              f"| {r['dev_f1']:.4f} | {r['test_f1']:.4f} | {r['peak_rss_mb']:.0f} |")
    if "frugal" in results:
        f = results["frugal"]
        how = ("in-process: read + encode + task.evaluate, after load_run" if a.frugal_inprocess_eval
               else "wall time of the two `frugal eval` commands")
        print(f"\nfrugal eval s: {how}. `frugal eval` wall time (includes process start and model load): "
              f"dev {f['cli_dev_seconds']:.1f} s + test {f['cli_test_seconds']:.1f} s = {f['cli_eval_seconds']:.1f} s; "
              f"CLI F1 dev {f['cli_dev_f1']:.4f}, test {f['cli_test_f1']:.4f}. "
              f"`frugal train` wall {f['train_cli_wall_seconds']:.1f} s.")
    if "hf" in results:
        print("HF eval s: reading + tokenizing dev/test, trainer.predict (eval batch 8) and seqeval, after training.")
    if len(results) == 2:
        f, h = results["frugal"], results["hf"]
        print(f"\nfrugal / HF: throughput {f['examples_per_s'] / h['examples_per_s']:.2f}x, eval speed "
              f"{h['eval_seconds'] / f['eval_seconds']:.2f}x (HF eval s / frugal eval s; with `frugal eval` wall "
              f"time {h['eval_seconds'] / f['cli_eval_seconds']:.2f}x), dev F1 "
              f"{100 * (f['dev_f1'] - h['dev_f1']):+.1f} points, test F1 {100 * (f['test_f1'] - h['test_f1']):+.1f} "
              f"points, peak RSS {f['peak_rss_mb'] / h['peak_rss_mb']:.2f}x")
    print(f"load average at the end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} cores")
    if a.json:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items() if k != "child"},
                                      "load_average": os.getloadavg(), "cores": os.cpu_count(),
                                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
