"""Causal-LM LoRA fine-tuning on CPU: frugal against the Hugging Face Trainer + peft, same model, same data.

SmolLM2-135M-Instruct (the `smollm2` alias) on tinyshakespeare: the first 90% of the characters for training,
the last 10% for test. Both sides train LoRA (r 8, alpha 16, dropout 0.05, q_proj and v_proj) for `--steps`
optimizer steps of 8 blocks of 128 tokens, lr 2e-4 (linear schedule, 6% warmup, weight decay 0.01, clipping
1.0, seed 0), each in its own subprocess so that peak memory (max RSS) is its own.

* Trainer side: the GGUF file loaded by `transformers` directly, the text tokenized as one stream and cut into
  non-overlapping 128-token blocks (the `run_clm.py` recipe), labels = inputs.
* frugal side: `frugal_lm.engine.run.train` with `--task clm` on the same training text as one document
  (`clm.documents=file`), packed into 128-token blocks that overlap by one token.

Test perplexity, before and after, is computed the same way for both: `score_causal` over the test text with
128-token windows and stride 128 (independent 128-token blocks; the first token of each is context only).
Generation: greedy, 64 new tokens, KV cache, frugal's Generator next to `model.generate`, both on the base model
before training (so the speeds compare the same model); samples are shown before and after training.
Load time: the Trainer side reads the GGUF file (dequantizing every tensor); frugal reads its cached
safetensors conversion (made once per machine by `frugal_lm.models.gguf`, ~40 s, not counted here).

A second frugal run (`frugal-top`, on unless `--top-layers 0`) trains frugal's fast CPU recipe: LoRA with the
same rank, alpha, dropout, batch and lr, but on every linear layer of the last `--top-layers` transformer layers
only (`peft.top_layers`): nothing below them needs a gradient, so backward stops there.

Usage: python benchmarks/bench_clm.py [--data ../shared/data/tinyshakespeare/input.txt] [--steps 100]
       [--model smollm2] [--max-chars 0] [--targets q_proj v_proj] [--top-layers 10]
       [--top-targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj] [--output benchmarks/results_clm.md]
Smoke run on a tiny model: --model TINY_GPT2_DIR --targets c_attn --steps 3 --max-chars 20000
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
BLOCK, BATCH, LR, R, ALPHA, DROPOUT = 128, 8, 2e-4, 8, 16, 0.05
PROMPTS = ["ROMEO:\n", "First Citizen:\nWe are", "KING HENRY VI:\nWhat news"]
GEN_TOKENS = 64


def split(path: Path, max_chars: int) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    if max_chars:
        text = text[:max_chars]
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def test_ppl(model, tok, test: str) -> float:
    from frugal_lm.lm.scoring import corpus_perplexity, score_causal

    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    scores = score_causal(model, tok, [test], batch_size=8, max_length=BLOCK, stride=BLOCK, bos_id=eot,
                          eos_id=eot)
    return corpus_perplexity(scores)["ppl_token"]


def samples(model, tok, frugal: bool) -> tuple[list[str], float]:
    """Greedy continuations of PROMPTS and generated tokens per second."""
    import torch

    from frugal_lm.lm.generate import GenerationOptions, Generator

    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    texts, tokens, seconds = [], 0, 0.0
    for p in PROMPTS:
        t0 = time.perf_counter()
        if frugal:
            g = Generator(model, tok, eot, [eot]).generate([p], GenerationOptions(max_new_tokens=GEN_TOKENS))[0]
            texts.append(g.text)
            tokens += g.tokens
        else:
            ids = torch.tensor([[eot, *tok(p, add_special_tokens=False)["input_ids"]]])
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=GEN_TOKENS, eos_token_id=[eot, tok.eos_token_id],
                                     pad_token_id=tok.pad_token_id)
            new = out[0, ids.shape[1]:]
            texts.append(tok.decode(new, skip_special_tokens=True))
            tokens += len(new)
        seconds += time.perf_counter() - t0
    return texts, tokens / seconds


def run_hf(a: argparse.Namespace, train: str, test: str, bf16: bool = False) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from frugal_lm.models.registry import resolve_model

    resolved = resolve_model(a.model)
    t0 = time.perf_counter()
    kw = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(resolved.path, **kw)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32, **kw)
    load_s = time.perf_counter() - t0
    if resolved.gguf_file:
        # transformers dequantizes GGUF weights to float32 on load but keeps the model marked as quantized, and
        # the Trainer refuses to train such a model: drop the marker (models/gguf.py does the same, by copying)
        model.hf_quantizer.remove_quantization_config(model)
    before = test_ppl(model, tok, test)
    texts_before, gen_tps = samples(model, tok, frugal=False)
    ids = tok(train, add_special_tokens=False)["input_ids"]
    blocks = [ids[i:i + BLOCK] for i in range(0, len(ids) - BLOCK + 1, BLOCK)]
    data = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=a.targets,
                                             task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=a.steps,
                                 learning_rate=LR, lr_scheduler_type="linear", warmup_steps=int(0.06 * a.steps), weight_decay=0.01,
                                 max_grad_norm=1.0, seed=0, logging_steps=10, save_strategy="no", report_to=[],
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, bf16=bf16)
        cpu0 = time.process_time()
        out = Trainer(model=model, args=args, train_dataset=data).train()
        cpu_s = time.process_time() - cpu0
    train_s = out.metrics["train_runtime"]
    from frugal_lm.engine.mfu import (
        mfu_report,  # frugal's counter on the same tokens, against its precision's peak
    )

    mfu = mfu_report(model, a.steps * BATCH * BLOCK, a.steps * BATCH, train_s, "bf16" if bf16 else "no", "cpu")
    after = test_ppl(model, tok, test)
    texts, _ = samples(model.merge_and_unload(), tok, frugal=False)
    return {"load_s": load_s, "ppl_before": before, "ppl_after": after, "train_s": train_s,
            "train_tokens_per_s": a.steps * BATCH * BLOCK / train_s, "gen_tokens_per_s": gen_tps, "samples": texts,
            "train_tokens_per_cpu_s": a.steps * BATCH * BLOCK / cpu_s,
            "samples_before": texts_before, "precision": "bf16 (CPU autocast)" if bf16 else "fp32", **mfu}


def run_frugal(a: argparse.Namespace, train: str, test: str) -> dict:
    import transformers

    from frugal_lm.config import load_config
    from frugal_lm.engine.run import load_run
    from frugal_lm.engine.run import train as run_train
    from frugal_lm.lm.scorers import load_transformer

    _ = transformers.AutoModelForCausalLM  # import the model code first, as the Trainer side does, so load_s is loading
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train.txt").write_text(train, encoding="utf-8")
        t0 = time.perf_counter()
        model, tok, _, _ = load_transformer(a.model, kind="causal", device="cpu")
        load_s = time.perf_counter() - t0
        before, texts_before, gen_tps = float("nan"), [], float("nan")  # the same base model: measured once
        if a.child == "frugal" or "frugal" not in a.sides:  # the base model, measured by one frugal run
            before = test_ppl(model, tok, test)
            texts_before, gen_tps = samples(model, tok, frugal=True)
        del model
        cfg = load_config(overrides={
            "task": "clm", "output": str(Path(tmp) / "run"), "model": {"name": a.model, "max_length": BLOCK},
            "data": {"train": str(Path(tmp) / "train.txt")},
            "train": {"max_steps": a.steps, "batch_size": BATCH,
                      "lr": a.top_lr if a.child == "frugal-top" and a.top_lr else LR, "log_every": 10, "seed": 0},
            "peft": {"method": "lora", "r": R, "alpha": ALPHA, "dropout": DROPOUT,
                     "target_modules": a.top_targets if a.child == "frugal-top" else a.targets,
                     "top_layers": a.top_layers if a.child == "frugal-top" else 0},
            "clm": {"documents": "file", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}})
        cpu0 = time.process_time()
        summary = run_train(cfg, progress=False)
        cpu_s = time.process_time() - cpu0
        _, task, model = load_run(Path(tmp) / "run")
    after = test_ppl(model, task.tokenizer, test)
    texts, _ = samples(model, task.tokenizer, frugal=True)
    return {"load_s": load_s, "ppl_before": before, "ppl_after": after, "train_s": summary["train_seconds"],
            "train_tokens_per_s": summary["train_tokens_per_s"], "gen_tokens_per_s": gen_tps, "samples": texts,
            "train_tokens_per_cpu_s": a.steps * BATCH * BLOCK / cpu_s,
            "samples_before": texts_before, "precision": summary.get("precision_reason", summary["precision"]),
            **{k: summary.get(k) for k in ("mfu", "model_flops_per_s", "peak_flops_per_s")}}


def child(a: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    train, test = split(Path(a.data), a.max_chars)
    if a.child.startswith("hf"):
        result = run_hf(a, train, test, bf16=a.child == "hf-bf16")
    else:
        result = run_frugal(a, train, test)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def table(res: dict, a: argparse.Namespace, train: str, test: str) -> str:
    """The results as markdown: a column per run made, each with its ratio to the Trainer's."""
    hf = res["hf"]
    for r in res.values():  # GFLOP/s for the table; NaN where a side did not report it
        r["model_gflops"] = (r.get("model_flops_per_s") or float("nan")) / 1e9
        r["peak_gflops"] = (r.get("peak_flops_per_s") or float("nan")) / 1e9
        r["mfu"] = r.get("mfu") if r.get("mfu") is not None else float("nan")
    runs = [(k, t) for k, t in (("hf-bf16", "Trainer + peft, bf16=True"), ("frugal", "frugal (same recipe)"),
                                ("frugal-top", f"frugal, top {a.top_layers} layers")) if k in res]
    rows = [("test perplexity before", "ppl_before", "{:.2f}"), ("test perplexity after", "ppl_after", "{:.2f}"),
            ("training tokens/s", "train_tokens_per_s", "{:.1f}"), ("training seconds", "train_s", "{:.1f}"),
            ("training tokens per CPU second (both threads; whole train call)", "train_tokens_per_cpu_s", "{:.1f}"),
            ("model GFLOP/s (frugal's MFU counter, engine/mfu.py)", "model_gflops", "{:.1f}"),
            ("matmul peak GFLOP/s of the run's precision (measured)", "peak_gflops", "{:.0f}"),
            ("MFU", "mfu", "{:.1%}"),
            ("peak memory (MB RSS)", "peak_rss_mb", "{:.0f}"), ("model load s", "load_s", "{:.1f}"),
            ("generation tokens/s (greedy, KV cache)", "gen_tokens_per_s", "{:.1f}")]
    sides = " ".join(k for k in ("hf", *(k for k, _ in runs)))
    lines = [f"# Causal LM LoRA fine-tuning: frugal vs Trainer + peft ({a.model})", "",
             f"`python benchmarks/bench_clm.py --steps {a.steps} --max-chars {a.max_chars} --sides {sides}"
             + (f" --top-layers {a.top_layers} --top-lr {a.top_lr or LR:g}` " if "frugal-top" in res else "` ")
             + f"({len(train):,} training / {len(test):,} test characters; {a.steps} steps x {BATCH} x {BLOCK} tokens)",
             "", "| | Trainer + peft |" + "".join(f" {t} | / Trainer |" for _, t in runs),
             "|---|---:|" + "---:|---:|" * len(runs)]
    for name, key, fmt in rows:
        line = f"| {name} | {fmt.format(hf[key])} |"
        for k, _ in runs:
            v = res[k][key]
            line += f" {fmt.format(v)} | {v / hf[key] if hf[key] and v == v else float('nan'):.2f} |"
        lines.append(line)
    lines += ["", "Precision: " + "; ".join(f"{k}: {res[k].get('precision', '?')}" for k in res), ""]
    lines += [f"Trainer + peft and frugal (same recipe): LoRA r {R}, alpha {ALPHA}, dropout {DROPOUT} on "
              f"{' '.join(a.targets)} of every layer, batch {BATCH}, lr {LR:g}."]
    if "frugal-top" in res:
        lines += [f"frugal, top {a.top_layers} layers: LoRA on {' '.join(a.top_targets)} of the last "
                  f"{a.top_layers} layers only (`peft.top_layers={a.top_layers}`), lr {a.top_lr or LR:g}; "
                  "the same r, alpha, dropout and batch."]
    before = next((res[k]["samples_before"] for k in ("frugal", "frugal-top", "hf")
                   if k in res and res[k]["samples_before"]), [])
    shown = [("before training (base model)", before), ("after training, Trainer + peft", hf["samples"])]
    runs = [(k, t) for k, t in runs if k != "hf-bf16"]
    shown += [(f"after training, {t}", res[k]["samples"]) for k, t in runs]
    for title, texts in shown:
        lines += ["", f"## Samples {title} (greedy, {GEN_TOKENS} tokens)", ""]
        for p, t in zip(PROMPTS, texts, strict=True):
            lines += ["```", (p + t).strip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    ap.add_argument("--model", default="smollm2", help="alias or folder of a causal LM (a tiny one for a smoke run)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"], help="LoRA target modules")
    ap.add_argument("--max-chars", type=int, default=0, help="use the first N characters only (0: all)")
    ap.add_argument("--top-layers", type=int, default=10, help="frugal-top run: LoRA on the last N layers (0: no run)")
    ap.add_argument("--top-targets", nargs="+", help="frugal-top run: LoRA target modules",
                    default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ap.add_argument("--top-lr", type=float, default=0.0, help="frugal-top run: learning rate (0: the same as the others)")
    ap.add_argument("--sides", nargs="+", default=["hf", "frugal", "frugal-top"],
                    help="which runs to make (a screening run may skip the reference ones): hf, hf-bf16 "
                    "(the Trainer with bf16=True, CPU autocast), frugal, frugal-top")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results_clm.md"))
    ap.add_argument("--child", choices=["hf", "hf-bf16", "frugal", "frugal-top"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    res = {}
    for side in [x for x in a.sides if x != "frugal-top" or a.top_layers]:
        cmd = [sys.executable, __file__, "--child", side, "--data", a.data, "--model", a.model,
               "--steps", str(a.steps), "--max-chars", str(a.max_chars), "--targets", *a.targets,
               "--top-layers", str(a.top_layers), "--top-targets", *a.top_targets, "--top-lr", str(a.top_lr), "--sides", *a.sides]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        if side == "frugal-top" and "frugal" in res:
            for key in ("ppl_before", "gen_tokens_per_s", "samples_before"):
                res[side][key] = res["frugal"][key]
        print(side, json.dumps({k: v for k, v in res[side].items() if k != "samples"}), file=sys.stderr)
    if "hf" not in res:  # a screening run: the JSON lines above are its result
        return
    train, test = split(Path(a.data), a.max_chars)
    text = table(res, a, train, test)
    Path(a.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
