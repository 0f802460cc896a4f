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
dapt        continued MLM of MiniLM on SST-2 train sentences (text only), then fine-tuning on small labelled
            samples vs the original MiniLM (`--sizes`, `--seeds`).

Usage: python benchmarks/bench_pretrain.py throughput [--steps 40] [--output benchmarks/results_pretrain.md]
       python benchmarks/bench_pretrain.py memory
       python benchmarks/bench_pretrain.py dapt [--dapt-steps 150] [--sizes 200 1000] [--seeds 0 1 2]
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


# -- domain adaptation -------------------------------------------------------------------------------
def dapt(a: argparse.Namespace) -> None:
    import csv
    import random
    import statistics

    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    work = Path(tempfile.mkdtemp(prefix="bench_dapt_"))
    rows = list(csv.DictReader(open(SHARED / "sst2" / "train.tsv"), delimiter="\t"))
    text = work / "sst2_text.txt"
    text.write_text("\n".join(r["sentence"].strip() for r in rows) + "\n")
    t0 = time.perf_counter()
    cfg = load_config(overrides={
        "task": "pretrain", "output": str(work / "dapt"), "model": {"name": "minilm", "max_length": a.max_length},
        "data": {"train": str(text)}, "pretrain": {"objective": "mlm", "cache_dir": str(work / "cache")},
        "train": {"max_steps": a.dapt_steps, "batch_size": 32, "lr": 1e-4, "log_every": 10}})
    train(cfg, overwrite=True, progress=False)
    dapt_seconds = time.perf_counter() - t0
    results: dict = {}
    dev_rows = list(csv.DictReader(open(SHARED / "sst2" / "dev.tsv"), delimiter="\t"))[:a.dev_rows or None]
    dev = work / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in dev_rows))
    for size in a.sizes:
        for seed in a.seeds:
            sample = random.Random(seed).sample(rows, size)
            f = work / f"train_{size}_{seed}.tsv"
            f.write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in sample))
            for name, model in (("minilm", "minilm"), ("dapt", str(work / "dapt"))):
                c = load_config(overrides={
                    "task": "classify", "output": str(work / f"c_{name}_{size}_{seed}"),
                    "model": {"name": model, "max_length": a.max_length},
                    "data": {"train": str(f), "eval": str(dev), "text_column": "sentence"},
                    "classify": {"method": "finetune"},
                    "train": {"epochs": a.epochs, "batch_size": 16, "lr": 5e-5, "seed": seed}})
                acc = train(c, overwrite=True, progress=False)["best"]["accuracy"]
                results.setdefault(f"{name}/{size}", []).append(acc)
                print(name, size, seed, acc, flush=True)
    out = [f"continued MLM of MiniLM on SST-2 train text: {a.dapt_steps} steps x 32 x {a.max_length} tokens "
           f"({dapt_seconds:.0f} s); then full fine-tuning {a.epochs} epochs, accuracy on {len(dev_rows)} dev rows, "
           f"seeds {a.seeds}", "",
           "| train rows | MiniLM | MiniLM + continued MLM |", "|---|---|---|"]
    for size in a.sizes:
        cells = []
        for name in ("minilm", "dapt"):
            v = results[f"{name}/{size}"]
            cells.append(f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}")
        out.append(f"| {size} | {cells[0]} | {cells[1]} |")
    print("\n".join(out))
    Path(a.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["throughput", "memory", "dapt", "_side"])
    p.add_argument("side", nargs="?")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--train", default=str(SHARED / "ptb" / "ptb.train.txt"))
    p.add_argument("--eval", default=str(SHARED / "ptb" / "ptb.valid.txt"))
    p.add_argument("--tokenizer", default="")
    p.add_argument("--out", default="")
    p.add_argument("--order", nargs="+", default=["hf", "frugal"])
    p.add_argument("--factors", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--dapt-steps", type=int, default=150)
    p.add_argument("--sizes", nargs="+", type=int, default=[200, 1000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dev-rows", type=int, default=0, help="dapt: first N dev rows (0: all 872)")
    p.add_argument("--output", default="")
    p.add_argument("--json", default="/tmp/bench_pretrain.json")
    a = p.parse_args()
    if a.what == "_side":
        import torch

        torch.set_num_threads(2)
        os.environ["FRUGAL_NO_PROGRESS"] = "1"
        result = {"hf": side_hf, "frugal": side_frugal, "memory": side_memory}[a.side](a)
        result["peak_rss_mb"] = peak_mb()
        print(json.dumps(result))
        return
    {"throughput": throughput, "memory": memory, "dapt": dapt}[a.what](a)


if __name__ == "__main__":
    main()
