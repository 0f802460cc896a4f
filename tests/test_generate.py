"""Generation on a tiny random GPT-2 (greedy and beams equal `transformers`, stop strings, seeds, batches,
streaming), and the CLI end to end: train a clm run with LoRA, generate, chat, export merged and unmerged."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import CORPUS
from frugal_lm.errors import FrugalError
from frugal_lm.lm.generate import GenerationOptions, Generator
from test_clm import tiny_chat_dir  # noqa: F401  (a fixture: the tiny GPT-2 with a chat template)

PROMPTS = ["the cat", "a dog ran in the park with", "i loved"]


@pytest.fixture(scope="module")
def gen(tiny_gpt2_dir) -> Generator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_gpt2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).eval()
    return Generator(model, tok, tok.bos_token_id, [tok.eos_token_id], "tiny")


def hf_generate(gen: Generator, prompt: str, **kw) -> str:
    """What plain `transformers` generates from the same ids (BOS + prompt), EOS and after dropped."""
    tok = gen.tokenizer
    ids = torch.tensor([[tok.bos_token_id, *tok(prompt)["input_ids"]]])
    with torch.no_grad():
        out = gen.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tok.eos_token_id, **kw)
    new = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return tok.decode(new)


def test_greedy_is_deterministic_and_equals_transformers(gen):
    opts = GenerationOptions(max_new_tokens=12)
    first = gen.generate(PROMPTS, opts)
    assert [g.text for g in gen.generate(PROMPTS, opts)] == [g.text for g in first]
    for prompt, g in zip(PROMPTS, first, strict=True):
        assert g.text == hf_generate(gen, prompt, do_sample=False, max_new_tokens=12)
    # batching (left padding) changes nothing
    assert [g.text for g in gen.generate(PROMPTS, opts, batch_size=1)] == [g.text for g in first]


@pytest.mark.parametrize("kw, ours", [
    ({"num_beams": 3, "do_sample": False}, {"num_beams": 3}),
    ({"repetition_penalty": 1.8, "do_sample": False}, {"repetition_penalty": 1.8}),
])
def test_beams_and_repetition_penalty_equal_transformers(gen, kw, ours):
    (g,) = gen.generate([PROMPTS[0]], GenerationOptions(max_new_tokens=10, **ours))
    assert g.text == hf_generate(gen, PROMPTS[0], max_new_tokens=10, **kw)


def test_a_stop_string_stops(gen):
    # a repetition penalty keeps the random model from repeating one word, so the stop string is mid-text
    opts = GenerationOptions(max_new_tokens=20, repetition_penalty=3.0)
    (full,) = gen.generate([PROMPTS[0]], opts)
    assert full.finish_reason == "length"
    stop = re.findall(r"[a-z]{3,}", full.text)[1]
    opts.stop = [stop]
    (cut,) = gen.generate([PROMPTS[0]], opts)
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.tokens < full.tokens  # generation itself ended early
    shown: list[str] = []
    streamed = gen.stream(PROMPTS[0], opts, shown.append)
    assert "".join(shown) == streamed.text == cut.text  # the stop string is never shown
    # the token count ends at the token that completed the stop string, alone or padded inside a batch
    (ids,) = gen._run([gen.encode(PROMPTS[0])], GenerationOptions(max_new_tokens=20, repetition_penalty=3.0))
    expected = next(k for k in range(1, len(ids) + 1)
                    if stop in gen.tokenizer.decode(ids[:k], skip_special_tokens=True))
    assert cut.tokens == expected
    batched = gen.generate([PROMPTS[0], PROMPTS[1]], opts, batch_size=2)
    assert batched[0].text == cut.text and batched[0].tokens == expected


def test_a_seed_reproduces_samples(gen):
    def sample(seed: int) -> list[str]:
        opts = GenerationOptions(max_new_tokens=10, temperature=1.0, top_k=50, seed=seed)
        return [g.text for g in gen.generate(PROMPTS, opts)]

    assert sample(1) == sample(1)
    assert len({tuple(sample(s)) for s in (1, 2, 3)}) > 1  # and it is really sampling
    shown: list[str] = []
    opts = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=4)
    assert gen.stream(PROMPTS[0], opts, shown.append).text == "".join(shown) == gen.generate([PROMPTS[0]], opts)[0].text


def test_sampling_equals_transformers_with_the_same_seed(gen):
    from transformers import set_seed

    for top_k, top_p in ((0, 1.0), (20, 0.9)):  # top_k 0 means no top-k (transformers' own default is 50)
        opts = GenerationOptions(max_new_tokens=10, temperature=0.7, top_k=top_k, top_p=top_p, seed=5)
        (g,) = gen.generate([PROMPTS[0]], opts)
        set_seed(5)
        assert g.text == hf_generate(gen, PROMPTS[0], max_new_tokens=10, do_sample=True, temperature=0.7,
                                     top_k=top_k, top_p=top_p)


def test_bad_options_and_chat_without_template(gen):
    with pytest.raises(FrugalError, match="top_k / top_p apply to sampling only"):
        gen.generate(PROMPTS, GenerationOptions(top_k=5))
    with pytest.raises(FrugalError, match="no chat template"):
        gen.generate(PROMPTS, GenerationOptions(), chat=True)


# -- the CLI end to end --------------------------------------------------------------------------------
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def plugin_app():
    import typer

    from frugal_lm.cli_generate import register

    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def lora_run(tiny_chat_dir, tmp_path_factory) -> Path:  # noqa: F811
    """`frugal train --task clm` with LoRA (the task's default) on plain text, 10 steps."""
    from frugal_lm.cli import app

    folder = tmp_path_factory.mktemp("clm_cli")
    (folder / "train.txt").write_text("\n\n".join(CORPUS * 6) + "\n")
    (folder / "dev.txt").write_text("\n\n".join(CORPUS[:4]) + "\n")
    run = folder / "run"
    res = CliRunner().invoke(app, [
        "train", "--task", "clm", "--model", str(tiny_chat_dir), "--train", str(folder / "train.txt"),
        "--eval", str(folder / "dev.txt"), "--output", str(run), "--max-length", "32", "--batch-size", "4",
        "--max-steps", "10", "--lr", "2e-2", "--set", "train.eval_every=5", "--set", "train.log_every=1",
        "--set", "peft.merge=false", "--quiet"])
    assert res.exit_code == 0, res.output
    return run


def test_cli_training_run(lora_run):
    files = {p.relative_to(lora_run).as_posix() for p in lora_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.json", "README.md", "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors", "adapter/tokenizer.json"} <= files
    assert not any(f.startswith("model/") for f in files)  # peft.merge=false: the adapter only
    log = [json.loads(x) for x in (lora_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3])
    evals = [r for r in log if r["type"] == "eval"]
    # (LoRA barely moves a random 2-layer model's eval perplexity; test_clm checks that full training lowers it)
    assert [r["step"] for r in evals] == [5, 10]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"])) for r in evals)
    summary = json.loads((lora_run / "metrics.json").read_text())
    assert summary["trainable_parameters"] < summary["total_parameters"] / 5  # LoRA, not the full model


def test_cli_eval_and_predict(lora_run):
    from frugal_lm.cli import app
    from frugal_lm.lm.generate import load_generator

    dev = lora_run.parent / "dev.txt"
    res = CliRunner().invoke(app, ["eval", str(lora_run), "--data", str(dev)])
    assert res.exit_code == 0, res.output
    best = json.loads((lora_run / "metrics.json").read_text())["best"]
    assert json.loads(res.stdout)["perplexity"] == pytest.approx(best["perplexity"], rel=1e-6)
    res = CliRunner().invoke(app, ["predict", str(lora_run), "--text", "the cat"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    gen, _ = load_generator(str(lora_run))
    assert row["prompt"] == "the cat" and row["completion"] == gen.generate(["the cat"], GenerationOptions())[0].text


def test_cli_generate_and_chat(lora_run, plugin_app, tmp_path):
    # the real entry point: the plugin is registered, and one prompt streams to stdout
    proc = subprocess.run([sys.executable, "-m", "frugal_lm", "generate", str(lora_run), "--prompt", "the cat",
                           "--max-new-tokens", "6"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr

    from frugal_lm.lm.generate import load_generator

    gen, _ = load_generator(str(lora_run))
    (want,) = gen.generate(["the cat"], GenerationOptions(max_new_tokens=6))
    assert proc.stdout == want.text + "\n"

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(plugin_app, ["generate", str(lora_run), "--prompts", str(prompts), "-o", str(out),
                                          "--max-new-tokens", "5", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["completion"] for r in rows] == [g.text for g in gen.generate(PROMPTS, GenerationOptions(5))]

    res = CliRunner().invoke(plugin_app, ["chat", str(lora_run), "--max-new-tokens", "4"],
                             input="hello\nthe cat\n/exit\n")
    assert res.exit_code == 0, res.output
    history = [{"role": "user", "content": "hello"}]
    (first,) = gen.generate([history], GenerationOptions(4))
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "the cat"}]
    (second,) = gen.generate([history], GenerationOptions(4))
    assert res.stdout == f"{first.text}\n{second.text}\n"  # the second reply saw the first exchange

    res = CliRunner().invoke(plugin_app, ["generate", str(lora_run), "--prompts", str(tmp_path / "nope.txt")])
    assert "nope.txt" in str(res.exception)


def test_cli_export_merged_equals_adapter(lora_run, tiny_chat_dir, plugin_app, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = CliRunner().invoke(plugin_app, ["export", str(lora_run), "--merge", "--output", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir)).eval()
    ids = torch.tensor([tok(" ".join(CORPUS[:3]))["input_ids"]])
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval()
        want = adapted(ids).logits
        got = merged(ids).logits
    assert not torch.allclose(want, base_logits, atol=1e-3)  # the adapter changed the model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    out = merged.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= 7 and "frugal export --merge" in (tmp_path / "m" / "README.md").read_text()

    res = CliRunner().invoke(plugin_app, ["export", str(lora_run), "--no-merge", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in (tmp_path / "a").iterdir()}
    assert str(tiny_chat_dir) in (tmp_path / "a" / "README.md").read_text()
    res = CliRunner().invoke(plugin_app, ["export", str(lora_run), "-o", str(tmp_path / "a")])
    assert "exists" in str(res.exception)
