"""Pretraining benchmarks (issue 7).

throughput  bert-mini (L4/H256, Turc et al. 2019) masked-LM pretraining from scratch on PTB train text, frugal
            against the Hugging Face Trainer with `DataCollatorForLanguageModeling` and the `run_mlm.py`
            group-texts recipe. Same model config (BERT uncased 30,522 WordPiece vocabulary, from the bundled
            MiniLM tokenizer), 128-token blocks, batch 32, AdamW lr 5e-4, 6% linear warmup then linear decay,
            weight decay 0.01, clipping 1.0, fp32, `--steps` steps, each side in its own subprocess (peak RSS is
            its own). Both final models are then scored by one function on the same held-out blocks (PTB valid)
            with the same fixed masks: MLM loss and accuracy after the same number of training tokens.
              * Trainer: each line tokenized with [CLS]/[SEP], concatenated and cut into 128-token chunks (the
                remainder dropped), 15% masking 80/10/10, the model's own loss over all positions.
              * frugal: `frugal train --task pretrain --objective mlm --model bert-mini --tokenizer ...`: the
                on-disk cache of [CLS] 126 tokens [SEP] blocks, per-step masks; the vocabulary projection runs on
                the masked positions only.
memory      peak RSS of building the on-disk corpus cache and streaming 200 training batches from it, for
            corpora of 1x, 4x and 16x PTB train (each size in a fresh process): flat means larger-than-RAM works.
dapt        continued MLM of MiniLM on SST-2 train sentences (text only; the new MLM head is tied to the input
            embeddings and starts untrained, hence lr 5e-4 with warmup), for `--dapt-steps` steps or
            `--max-minutes`, then full fine-tuning on small labelled samples (`--sizes` rows x `--seeds`, the
            same sample for both models) vs the original MiniLM. MLM loss / accuracy on the SST-2 dev sentences
            before (original MiniLM + a fresh head) and during continued pretraining.
scratch     a WordPiece tokenizer trained on PTB train + tinyshakespeare, bert-mini MLM+NSP from scratch on that
            text for `--max-minutes`, then fine-tuning on SST-2 samples vs the same architecture and tokenizer
            from random initialisation. MLM / NSP curves on held-out text (PTB valid + Shakespeare tail).
            Fine-tuned models are scored once, after the last epoch (no epoch chosen on the dev set).

Usage: python benchmarks/bench_pretrain.py throughput [--steps 40] [--output benchmarks/results_pretrain.md]
       python benchmarks/bench_pretrain.py memory
       python benchmarks/bench_pretrain.py dapt [--dapt-steps 90] [--max-minutes 10] [--sizes 200 1000] [--seeds 0 1 2]
       python benchmarks/bench_pretrain.py scratch [--dapt-steps 450] [--max-minutes 12] [--sizes 1000]
           [--plot benchmarks/results_pretrain_scratch.png]
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
SHARED = ROOT.parent / "shared" / "data"
BLOCK, BATCH, LR, WARMUP = 128, 32, 5e-4, 0.06
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> str:
    from frugal_lm.models.registry import resolve_model

    return resolve_model("minilm").path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process: a figure that contention on a shared machine changes less
    than wall time does."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- throughput -------------------------------------------------------------------------------------
def side_hf(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from frugal_lm.models.presets import PRESETS

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    t0 = time.perf_counter()
    lines = [x.strip() for x in Path(a.train).read_text().splitlines() if x.strip()]
    ds = Dataset.from_dict({"text": lines}).map(lambda b: tok(b["text"], return_special_tokens_mask=True),
                                                batched=True, remove_columns=["text"])

    def group_texts(examples: dict) -> dict:  # run_mlm.py's recipe
        joined = {k: sum(examples[k], []) for k in examples}
        total = (len(joined["input_ids"]) // BLOCK) * BLOCK
        return {k: [t[i:i + BLOCK] for i in range(0, total, BLOCK)] for k, t in joined.items()}

    ds = ds.map(group_texts, batched=True, batch_size=1000)
    prep = time.perf_counter() - t0
    model = BertForMaskedLM(PRESETS["bert-mini"].config(tok))
    args = TrainingArguments(output_dir=a.out, per_device_train_batch_size=BATCH, learning_rate=LR,
                             max_steps=a.steps, warmup_steps=int(WARMUP * a.steps), lr_scheduler_type="linear",
                             weight_decay=0.01, max_grad_norm=1.0, logging_steps=10, save_strategy="no",
                             report_to=[], seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    cpu0 = cpu_seconds()
    out = trainer.train()
    cpu = cpu_seconds() - cpu0
    trainer.save_model(a.out + "/model")
    tok.save_pretrained(a.out + "/model")
    seconds = out.metrics["train_runtime"]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_seconds": seconds, "train_cpu_seconds": cpu, "tokens": a.steps * BATCH * BLOCK, "prep_seconds": prep,
            "train_loss_last": losses[-1] if losses else out.metrics["train_loss"], "model": a.out + "/model"}


def side_frugal(a: argparse.Namespace) -> dict:
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    t0 = time.perf_counter()
    cfg = load_config(overrides={
        "task": "pretrain", "output": a.out, "model": {"name": "bert-mini", "tokenizer": a.tokenizer,
                                                        "max_length": BLOCK},
        "data": {"train": a.train}, "pretrain": {"objective": "mlm", "cache_dir": a.out + "/cache"},
        "train": {"max_steps": a.steps, "epochs": 100, "batch_size": BATCH, "lr": LR, "warmup_ratio": WARMUP,
                  "weight_decay": 0.01, "max_grad_norm": 1.0, "log_every": 10, "seed": 0, "save_every": 10**9}})
    from frugal_lm.engine import run as engine_run

    cpu = {}
    build = engine_run._build

    def timed_build(c):  # CPU time of training only: start the clock once data and model are ready
        out = build(c)
        cpu["start"] = cpu_seconds()
        return out

    engine_run._build = timed_build
    summary = train(cfg, overwrite=True, progress=False)
    cpu_train = cpu_seconds() - cpu["start"]
    losses = [json.loads(x)["loss"] for x in Path(a.out, "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "train"]
    return {"train_seconds": summary["train_seconds"], "train_cpu_seconds": cpu_train, "tokens": a.steps * BATCH * BLOCK,
            "wall_seconds": time.perf_counter() - t0, "train_loss_last": losses[-1], "model": a.out + "/model"}


def score(model_dir: str, tokenizer: str, eval_file: str, cache: str) -> dict:
    """MLM loss / accuracy of a saved model on the same eval blocks and fixed masks (frugal's evaluate)."""
    import torch

    from frugal_lm.config import load_config
    from frugal_lm.lm.fill_mask import load_masked_lm
    from frugal_lm.tasks.pretrain import PretrainTask

    torch.set_num_threads(2)
    cfg = load_config(overrides={"task": "pretrain", "model": {"name": "bert-mini", "tokenizer": tokenizer,
                                                               "max_length": BLOCK},
                                 "pretrain": {"cache_dir": cache}, "train": {"eval_batch_size": 64}})
    task = PretrainTask(cfg)
    tok, model = load_masked_lm(model_dir)
    task.tokenizer = tok
    return task.evaluate(model, task.read(eval_file))


def throughput(a: argparse.Namespace) -> None:
    a.tokenizer = a.tokenizer or minilm_dir()
    work = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    res = {}
    for side in a.order:
        cmd = [sys.executable, __file__, "_side", side, "--steps", str(a.steps), "--train", a.train,
               "--tokenizer", a.tokenizer, "--out", str(work / side)]
        print("running", side, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(side, res[side], flush=True)
    for side in res:
        res[side]["eval"] = score(res[side]["model"], a.tokenizer, a.eval, str(work / "evalcache"))
        res[side]["tokens_per_s"] = res[side]["tokens"] / res[side]["train_seconds"]
        res[side]["tokens_per_cpu_s"] = res[side]["tokens"] / res[side]["train_cpu_seconds"]
    Path(a.json).write_text(json.dumps(res, indent=1))
    h, f = res["hf"], res["frugal"]
    lines = [
        f"bert-mini MLM from scratch, {a.steps} steps x {BATCH} x {BLOCK} tokens ({a.steps * BATCH * BLOCK:,} "
        f"tokens), PTB train; eval on PTB valid (same blocks and masks for both)", "",
        "| | HF Trainer + run_mlm group_texts | frugal | ratio |", "|---|---|---|---|",
        f"| train tokens/s | {h['tokens_per_s']:.0f} | {f['tokens_per_s']:.0f} | "
        f"{f['tokens_per_s'] / h['tokens_per_s']:.2f}x |",
        f"| train tokens per CPU-second | {h['tokens_per_cpu_s']:.0f} | {f['tokens_per_cpu_s']:.0f} | "
        f"{f['tokens_per_cpu_s'] / h['tokens_per_cpu_s']:.2f}x |",
        f"| train seconds (wall) | {h['train_seconds']:.1f} | {f['train_seconds']:.1f} | |",
        f"| eval MLM loss | {h['eval']['mlm_loss']:.3f} | {f['eval']['mlm_loss']:.3f} | |",
        f"| eval MLM accuracy | {h['eval']['mlm_accuracy']:.3f} | {f['eval']['mlm_accuracy']:.3f} | |",
        f"| last logged train loss | {h['train_loss_last']:.3f} | {f['train_loss_last']:.3f} | |",
        f"| peak RSS (MB) | {h['peak_rss_mb']:.0f} | {f['peak_rss_mb']:.0f} | "
        f"{f['peak_rss_mb'] / h['peak_rss_mb']:.2f}x |", ""]
    text = "\n".join(lines)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")


# -- memory ----------------------------------------------------------------------------------------
def side_memory(a: argparse.Namespace) -> dict:
    from frugal_lm.data.batching import EpochBatchSampler
    from frugal_lm.data.corpus import BuildSettings, build_dataset
    from frugal_lm.models.loading import load_tokenizer
    from frugal_lm.tasks.pretrain import MaskingCollator, PretrainOptions

    tok = load_tokenizer("minilm")
    base = peak_mb()
    t0 = time.perf_counter()
    s = BuildSettings("mlm", BLOCK, cls=tok.cls_token_id, sep=tok.sep_token_id)
    ds = build_dataset(a.train, tok, "sentences", s, a.out)
    build = time.perf_counter() - t0
    after_build = peak_mb()
    sampler = EpochBatchSampler(ds.data.column("length").to_numpy().tolist(), BATCH, group_by_length=False)
    col = MaskingCollator(tok, tok.pad_token_id, PretrainOptions(), 0)
    for b, idx in zip(range(200), sampler, strict=False):
        col.set_position(0, b)
        col([ds[i] for i in idx])
    return {"mb": os.path.getsize(a.train) / 2**20, "rows": len(ds), "build_seconds": build,
            "rss_start_mb": base, "rss_after_build_mb": after_build}


def memory(a: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_pretrain_mem_"))
    text = Path(a.train).read_text()
    rows = []
    for times in a.factors:
        path = work / f"corpus_{times}x.txt"
        path.write_text(text * times)
        proc = subprocess.run([sys.executable, __file__, "_side", "memory", "--train", str(path), "--out",
                               str(work / f"cache{times}")], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        path.unlink()
    out = ["| corpus (MB) | rows of 128 | build s | RSS after imports (MB) | peak RSS: build (MB) | "
           "peak RSS: build + 200 batches (MB) |", "|---|---|---|---|---|---|"]
    out += [f"| {r['mb']:.0f} | {r['rows']:,} | {r['build_seconds']:.1f} | {r['rss_start_mb']:.0f} | "
            f"{r['rss_after_build_mb']:.0f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    print("\n".join(out))
    Path(a.json).write_text(json.dumps(rows, indent=1))


# -- domain adaptation and from scratch: shared pieces ------------------------------------------------
def write_tsv(path: Path, rows: list[dict]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows))
    return path


def sst2_rows(split: str) -> list[dict]:
    import csv

    with open(SHARED / "sst2" / f"{split}.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def eval_points(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]


def finetune_grid(a: argparse.Namespace, work: Path, models: dict[str, dict]) -> tuple[dict, list[dict]]:
    """Fine-tune each model (name -> model config overrides) on the same SST-2 samples (size x seed; one
    sample per (size, seed), shared by the models) and score it once, at the end, on the dev rows: no
    choice of epoch on the dev set."""
    import random

    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    rows = sst2_rows("train")
    dev_rows = sst2_rows("dev")[:a.dev_rows or None]
    dev = write_tsv(work / "dev.tsv", dev_rows)
    results: dict = {}
    runs = []
    reuse = {}
    if a.reuse:  # --reuse FILE:MODEL: that model's fine-tunes from an earlier JSON (deterministic on CPU)
        file, name = a.reuse.rsplit(":", 1)
        reuse = {(r["model"], r["size"], r["seed"]): r for r in json.loads(Path(file).read_text())["runs"]
                 if r["model"] == name}
    for size in a.sizes:
        for seed in a.seeds:
            f = write_tsv(work / f"train_{size}_{seed}.tsv", random.Random(seed).sample(rows, size))
            for name, model in models.items():
                if (name, size, seed) in reuse:  # the same fine-tune (model, sample, seed) from an earlier run
                    results.setdefault(f"{name}/{size}", []).append(reuse[name, size, seed]["accuracy"])
                    runs.append({**reuse[name, size, seed], "reused": True})
                    continue
                c = load_config(overrides={
                    "task": "classify", "output": str(work / f"c_{name}_{size}_{seed}"),
                    "model": {**model, "max_length": a.max_length},
                    "data": {"train": str(f), "eval": str(dev), "text_column": "sentence"},
                    "classify": {"method": "finetune"},
                    "train": {"epochs": a.epochs, "batch_size": 16, "lr": a.ft_lr, "seed": seed,
                              "eval_every": 10**9, "save_every": 10**9,
                              # classify freezes embeddings by default (right for a pretrained body); a
                              # random-init baseline with frozen random word vectors would be a straw man
                              **({"freeze_embeddings": False} if a.ft_train_embeddings else {})}})
                s = train(c, overwrite=True, progress=False)
                acc = s["final"]["accuracy"]
                results.setdefault(f"{name}/{size}", []).append(acc)
                runs.append({"model": name, "size": size, "seed": seed, "accuracy": acc,
                             "train_seconds": s["train_seconds"]})
                print(name, size, seed, f"{acc:.4f}", f"{s['train_seconds']:.0f}s", flush=True)
    return results, runs


def grid_table(results: dict, sizes: list[int], names: dict[str, str]) -> list[str]:
    import statistics

    def cell(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"

    first, second = list(names)
    out = [f"| train rows | {names[first]} | {names[second]} | difference (points) | per seed |", "|---|---|---|---|---|"]
    for size in sizes:
        x, y = results[f"{first}/{size}"], results[f"{second}/{size}"]
        diffs = [100 * (b - a) for a, b in zip(x, y, strict=True)]
        out.append(f"| {size} | {cell(x)} | {cell(y)} | {statistics.mean(diffs):+.1f} | "
                   f"{', '.join(f'{d:+.1f}' for d in diffs)} |")
    return out


def uptime() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def mlm_score(model: str, eval_file: str, cache: str, max_length: int, objective: str = "mlm") -> dict:
    """MLM (and NSP) metrics of a masked LM (alias, folder or run; a checkpoint without an MLM head gets a
    fresh one, seed 0) on the eval text's blocks with the evaluation's fixed masks."""
    import torch

    from frugal_lm.config import load_config
    from frugal_lm.lm.fill_mask import load_masked_lm
    from frugal_lm.tasks.pretrain import PretrainTask

    torch.manual_seed(0)
    cfg = load_config(overrides={"task": "pretrain", "model": {"name": model, "max_length": max_length},
                                 "pretrain": {"cache_dir": cache, "objective": objective},
                                 "train": {"eval_batch_size": 64}})
    task = PretrainTask(cfg)
    tok, m = load_masked_lm(model)
    task.tokenizer = tok
    return task.evaluate(m, task.read(eval_file))


def workdir(a: argparse.Namespace, prefix: str) -> Path:
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


# -- domain adaptation -------------------------------------------------------------------------------
def dapt(a: argparse.Namespace) -> None:
    """Continued MLM of MiniLM on SST-2 train sentences (text only), then fine-tuning vs the original."""
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    load0 = uptime()
    work = workdir(a, "bench_dapt_")
    text = work / "sst2_text.txt"
    text.write_text("\n".join(r["sentence"].strip() for r in sst2_rows("train")) + "\n")
    dev_text = work / "sst2_dev_text.txt"  # held-out text for the MLM figures (the dev sentences, no labels)
    dev_text.write_text("\n".join(r["sentence"].strip() for r in sst2_rows("dev")) + "\n")
    cache = str(work / "cache")
    before = mlm_score("minilm", str(dev_text), cache, a.max_length)
    print("before", before, flush=True)
    run = work / "dapt"
    if not a.skip_pretrain:
        cfg = load_config(overrides={
            "task": "pretrain", "output": str(run), "model": {"name": "minilm", "max_length": a.max_length},
            "data": {"train": str(text), "eval": str(dev_text)},
            "pretrain": {"objective": "mlm", "cache_dir": cache},
            "train": {"max_steps": a.dapt_steps, "max_minutes": a.max_minutes, "batch_size": 32, "lr": a.lr,
                      "warmup_ratio": 0.1, "log_every": 5, "eval_every": a.eval_every, "save_every": 10**9}})
        summary = train(cfg, overwrite=True, progress=False)
    else:
        summary = json.loads((run / "metrics.json").read_text())
    evals = eval_points(run)
    print("dapt", summary["steps"], summary["stopped"], evals[-1], flush=True)
    results, runs = finetune_grid(a, work, {"minilm": {"name": "minilm"}, "dapt": {"name": str(run)}})
    load1 = uptime()
    res = {"before": before, "evals": evals, "dapt_summary": {k: summary[k] for k in (
        "steps", "stopped", "train_seconds", "wall_seconds", "train_tokens_per_s")},
           "results": results, "runs": runs, "load_start": load0, "load_end": load1, "args": vars(a)}
    Path(a.json).write_text(json.dumps(res, indent=1))
    out = [f"Continued MLM of MiniLM on the SST-2 train sentences (text only): {summary['steps']} steps x 32 x "
           f"{a.max_length} tokens, lr {a.lr} (10% warmup, linear decay over {a.dapt_steps} steps), "
           f"{summary['wall_seconds']:.0f} s wall ({summary['stopped']}); then full fine-tuning {a.epochs:g} epochs, "
           f"batch 16, lr {a.ft_lr}, max length {a.max_length}, scored once at the end on "
           f"{len(sst2_rows('dev')[:a.dev_rows or None])} dev rows, seeds {a.seeds}. Load average (1/5/15 min) "
           f"at start {load0}, at end {load1}.", "",
           "MLM on the SST-2 dev sentences (fixed masks):", "",
           "| | MLM loss | MLM accuracy | masked-token perplexity |", "|---|---|---|---|",
           f"| original MiniLM + fresh tied MLM head | {before['mlm_loss']:.3f} | {before['mlm_accuracy']:.3f} | "
           f"{before['mlm_perplexity']:.0f} |"]
    out += [f"| after {e['step']} steps | {e['mlm_loss']:.3f} | {e['mlm_accuracy']:.3f} | "
            f"{e['mlm_perplexity']:.0f} |" for e in evals]
    out += ["", "SST-2 dev accuracy (mean ± sample std over seeds):", ""]
    out += grid_table(results, a.sizes, {"minilm": "MiniLM", "dapt": "MiniLM + continued MLM"})
    print("\n".join(out))
    if a.output:
        Path(a.output).write_text("\n".join(out) + "\n")


# -- from scratch ------------------------------------------------------------------------------------
def scratch_corpus(work: Path, doc_lines: int, heldout_lines: int) -> tuple[Path, Path]:
    """PTB train + tinyshakespeare as one text in `sentences` layout (one line a sentence, a blank line
    between documents). Neither has document marks NSP could use (PTB: one sentence a line, articles run
    together; Shakespeare: speaker turns of a line or two), so every `doc_lines` consecutive lines make a
    pseudo-document: NSP's true next segment is the following text, its negatives come from elsewhere. The
    eval text: the first `heldout_lines` of PTB valid and the last `heldout_lines` of Shakespeare (kept out of
    training)."""

    def docs(lines: list[str]) -> str:
        lines = [x.strip() for x in lines if x.strip()]
        return "".join("\n".join(lines[i:i + doc_lines]) + "\n\n" for i in range(0, len(lines), doc_lines))

    ptb = (SHARED / "ptb" / "ptb.train.txt").read_text().splitlines()
    shakes = [x for x in (SHARED / "tinyshakespeare" / "input.txt").read_text().splitlines() if x.strip()]
    train_text, eval_text = work / "corpus.txt", work / "corpus_eval.txt"
    train_text.write_text(docs(ptb) + docs(shakes[:-heldout_lines]))
    valid = (SHARED / "ptb" / "ptb.valid.txt").read_text().splitlines()[:heldout_lines]
    eval_text.write_text(docs(valid) + docs(shakes[-heldout_lines:]))
    return train_text, eval_text


def scratch(a: argparse.Namespace) -> None:
    """bert-mini MLM+NSP from scratch on PTB + tinyshakespeare for a wall-clock budget, then fine-tuning on
    SST-2 vs the same architecture and tokenizer from random initialisation."""
    import shutil

    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train
    from frugal_lm.models.presets import train_tokenizer

    load0 = uptime()
    work = workdir(a, "bench_scratch_")
    corpus, eval_text = scratch_corpus(work, a.doc_lines, a.heldout_lines)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        t0 = time.perf_counter()
        train_tokenizer("wordpiece", [str(corpus)], a.vocab_size, tok)
        print(f"tokenizer: {time.perf_counter() - t0:.0f} s", flush=True)
    run = work / "scratch"
    model = {"name": "bert-mini", "tokenizer": str(tok)}
    if not a.skip_pretrain:
        cfg = load_config(overrides={
            "task": "pretrain", "output": str(run), "model": {**model, "max_length": a.block},
            "data": {"train": str(corpus), "eval": str(eval_text)},
            "pretrain": {"objective": "mlm+nsp", "cache_dir": str(work / "cache")},
            "train": {"max_steps": a.dapt_steps, "max_minutes": a.max_minutes, "epochs": 100, "batch_size": 32,
                      "lr": a.lr, "warmup_ratio": 0.06, "log_every": 10, "eval_every": a.eval_every,
                      "save_every": 10**9, "seed": 0}})
        summary = train(cfg, overwrite=True, progress=False)
    else:
        summary = json.loads((run / "metrics.json").read_text())
    evals = eval_points(run)
    print("scratch", summary["steps"], summary["stopped"], evals[-1], flush=True)
    if (run / "pretrain.png").exists() and a.plot:
        shutil.copyfile(run / "pretrain.png", a.plot)
    results, runs = finetune_grid(a, work, {"random": model, "pretrained": {"name": str(run)}})
    load1 = uptime()
    res = {"evals": evals, "pretrain_summary": {k: summary[k] for k in (
        "steps", "stopped", "train_seconds", "wall_seconds", "train_tokens_per_s", "train_examples")},
           "results": results, "runs": runs, "load_start": load0, "load_end": load1, "args": vars(a)}
    Path(a.json).write_text(json.dumps(res, indent=1))
    out = [f"bert-mini (L4/H256) MLM+NSP from scratch on PTB train + tinyshakespeare ({summary['train_examples']:,} "
           f"blocks of {a.block} tokens; WordPiece vocabulary {a.vocab_size:,} trained on that text), batch 32, "
           f"lr {a.lr} (6% warmup, linear decay over {a.dapt_steps} planned steps), budget {a.max_minutes:g} min: "
           f"{summary['steps']} steps ({summary['stopped']}), {summary['train_tokens_per_s']:.0f} tokens/s. "
           f"Fine-tuning {a.epochs:g} epochs, batch 16, lr {a.ft_lr}, max length {a.max_length}, "
           f"embeddings {'trained' if a.ft_train_embeddings else 'frozen'}, scored once at "
           f"the end on {len(sst2_rows('dev')[:a.dev_rows or None])} SST-2 dev rows, seeds {a.seeds}. Load "
           f"average (1/5/15 min) at start {load0}, at end {load1}.", "",
           "Held-out text (PTB valid + Shakespeare tail, fixed masks and pairs):", "",
           "| step | MLM loss | MLM accuracy | masked-token perplexity | NSP loss | NSP accuracy |",
           "|---|---|---|---|---|---|"]
    out += [f"| {e['step']} | {e['mlm_loss']:.3f} | {e['mlm_accuracy']:.3f} | {e['mlm_perplexity']:.0f} | "
            f"{e.get('nsp_loss', float('nan')):.3f} | {e.get('nsp_accuracy', float('nan')):.3f} |" for e in evals]
    out += ["", "SST-2 dev accuracy (mean ± sample std over seeds):", ""]
    out += grid_table(results, a.sizes, {"random": "bert-mini, random init", "pretrained": "bert-mini, pretrained"})
    print("\n".join(out))
    if a.output:
        Path(a.output).write_text("\n".join(out) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["throughput", "memory", "dapt", "scratch", "_side"])
    p.add_argument("side", nargs="?")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--train", default=str(SHARED / "ptb" / "ptb.train.txt"))
    p.add_argument("--eval", default=str(SHARED / "ptb" / "ptb.valid.txt"))
    p.add_argument("--tokenizer", default="")
    p.add_argument("--out", default="")
    p.add_argument("--order", nargs="+", default=["hf", "frugal"])
    p.add_argument("--factors", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--dapt-steps", type=int, default=0, help="dapt/scratch: planned pretraining steps (the "
                   "LR schedule's length; --max-minutes may stop earlier; default dapt 90, scratch 450)")
    p.add_argument("--max-minutes", type=float, default=0, help="dapt/scratch: pretraining wall-clock budget "
                   "(default dapt 10, scratch 12)")
    p.add_argument("--lr", type=float, default=5e-4, help="dapt/scratch: pretraining peak learning rate")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    p.add_argument("--ft-train-embeddings", action="store_true", help="fine-tuning also trains the embeddings")
    p.add_argument("--eval-every", type=int, default=30, help="dapt/scratch: MLM evaluation every N steps")
    p.add_argument("--work", default="", help="dapt/scratch: working folder (kept; caches are reused)")
    p.add_argument("--skip-pretrain", action="store_true", help="dapt/scratch: reuse the pretraining run in --work")
    p.add_argument("--vocab-size", type=int, default=8000, help="scratch: WordPiece vocabulary size")
    p.add_argument("--block", type=int, default=128, help="scratch: pretraining block length")
    p.add_argument("--doc-lines", type=int, default=20, help="scratch: lines per pseudo-document")
    p.add_argument("--heldout-lines", type=int, default=400, help="scratch: eval lines from each source")
    p.add_argument("--reuse", default="", help="dapt/scratch: FILE.json:MODEL reuses MODEL's fine-tunes from an "
                   "earlier result file instead of rerunning them (e.g. the unchanged baseline)")
    p.add_argument("--plot", default="", help="scratch: copy the run's pretrain.png here")
    p.add_argument("--sizes", nargs="+", type=int, default=[200, 1000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dev-rows", type=int, default=0, help="dapt: first N dev rows (0: all 872)")
    p.add_argument("--output", default="")
    p.add_argument("--json", default="/tmp/bench_pretrain.json")
    a = p.parse_args()
    if a.what in ("dapt", "scratch"):
        a.dapt_steps = a.dapt_steps or {"dapt": 90, "scratch": 450}[a.what]
        a.max_minutes = a.max_minutes or {"dapt": 10, "scratch": 12}[a.what]
    if a.what == "_side":
        import torch

        torch.set_num_threads(2)
        os.environ["FRUGAL_NO_PROGRESS"] = "1"
        result = {"hf": side_hf, "frugal": side_frugal, "memory": side_memory}[a.side](a)
        result["peak_rss_mb"] = peak_mb()
        print(json.dumps(result))
        return
    {"throughput": throughput, "memory": memory, "dapt": dapt, "scratch": scratch}[a.what](a)


if __name__ == "__main__":
    main()
