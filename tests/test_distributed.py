"""Data-parallel training on 2 CPU processes (gloo) equals 1 process with the same global batch, resumes
across process counts, writes once, and shards evaluation without duplicates or losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_config
from frugal_lm.engine.run import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# 48 rows in batches of 8: 6 batches an epoch; 2 per step (2 processes x 1, or 1 process x 2 accumulated)
# plain text for the perplexity shards: long enough for several windows of 8 tokens
TEXTS = ["the cat sat on the mat and then the dog sat on the cat", "a film", "ok",
         "the movie was good and the actors were great but the plot was dull"] * 3
KEYS = {"epochs": 2, "eval_every": 3, "eval_batch_size": 4, "log_every": 1}


def config(model_dir, files, out, **keys):
    cfg = make_config(model_dir, files, out, **{**KEYS, **keys})
    cfg.options.method = "finetune"
    return cfg


def same_run(a: Path, b: Path) -> None:
    """Equal within float tolerance: weights, metrics, and the logged losses step by step."""
    wa, wb = (load_file(str(r / "model" / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4, msg=key)
    sa, sb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert sa["steps"] == sb["steps"] and sa["best_step"] == sb["best_step"]
    for part in ("final", "best"):
        for key, value in sa[part].items():
            if isinstance(value, float):
                assert sb[part][key] == pytest.approx(value, abs=1e-5), (part, key)
    la, lb = ([(r["type"], r["step"], r.get("loss")) for r in map(json.loads, (x / "metrics.jsonl").read_text().splitlines())]
              for x in (a, b))
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    assert [x[2] for x in la] == pytest.approx([x[2] for x in lb], abs=1e-5)


@pytest.fixture(scope="module")
def one_process(tiny_encoder_nodrop_dir, sentiment_files, tmp_path_factory) -> Path:
    """The reference: 1 process accumulating 2 micro-batches per step."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(config(tiny_encoder_nodrop_dir, sentiment_files, out, grad_accum=2), progress=False)
    return out


def test_two_processes_equal_one_with_the_same_global_batch(one_process, tiny_encoder_nodrop_dir,
                                                            sentiment_files, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  name: {tiny_encoder_nodrop_dir}\n  max_length: 32\n"
                   "train:\n  epochs: 2\n  batch_size: 8\n  lr: 5.0e-3\n  eval_every: 3\n  eval_batch_size: 4\n"
                   "  log_every: 1\n  seed: 0\nclassify:\n  method: finetune\n")
    proc = subprocess.run([sys.executable, "-m", "frugal_lm", "train", str(cfg), "--train", str(sentiment_files[0]),
                           "--eval", str(sentiment_files[1]), "--output", str(run), "--processes", "2", "--quiet"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["steps"] == 6  # only the main process reports
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2
    same_run(one_process, run)
    files = {p.relative_to(run).as_posix() for p in run.rglob("*")}
    assert files == {p.relative_to(one_process).as_posix() for p in one_process.rglob("*")}


def test_checkpoints_move_between_process_counts_and_evaluation_is_sharded(
        one_process, tiny_encoder_nodrop_dir, sentiment_files, tiny_gpt2_dir, tmp_path):
    partial, resumed, shards = tmp_path / "partial", tmp_path / "resumed", tmp_path / "shards"
    shards.mkdir()
    # checkpointed by 1 process at step 2, resumed by 2 in the worker
    train(config(tiny_encoder_nodrop_dir, sentiment_files, resumed, grad_accum=2), progress=False, stop_at_step=2)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(tiny_encoder_nodrop_dir), "train": str(sentiment_files[0]),
                                "eval": str(sentiment_files[1]), "partial": str(partial), "resume": str(resumed),
                                "shards": str(shards), "keys": KEYS, "gpt2": str(tiny_gpt2_dir),
                                "texts": TEXTS}))
    worker = Path(__file__).parent / "distributed_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(worker), str(spec)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each process destroyed its process group before interpreter teardown
    assert [json.loads((shards / f"exit{r}.json").read_text()) for r in (0, 1)] == [{"group_alive": False}] * 2
    same_run(one_process, resumed)
    # checkpointed by 2 processes at step 2, resumed here by 1 (accumulating 2 to keep the global batch)
    state = json.loads((partial / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["processes"], state["group"]) == (2, 2, 2)
    train(config(tiny_encoder_nodrop_dir, sentiment_files, partial, grad_accum=1), resume=True, progress=False)
    same_run(one_process, partial)
    ranks = [json.loads((shards / f"rank{r}.json").read_text()) for r in (0, 1)]
    computed = [set(r["computed"]) for r in ranks]
    assert computed[0] and computed[1] and not computed[0] & computed[1]
    assert sorted(ranks[0]["computed"] + ranks[1]["computed"]) == list(range(16))  # each row once
    assert ranks[0]["results"] == ranks[1]["results"] == list(range(16))
    # plain-text perplexity (clm evaluation): each window run by one process, all scores on both, equal to 1
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from frugal_lm.lm.scoring import encode_causal, plan_windows, score_causal

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    expected = sorted(ids[b:e] for t in TEXTS for ids in [encode_causal(tok, t)] for b, e, _ in plan_windows(len(ids), 8, 4))
    assert ranks[0]["windows"] and ranks[1]["windows"]
    assert sorted(ranks[0]["windows"] + ranks[1]["windows"]) == expected  # no window twice, none lost
    ref = score_causal(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval(), tok, TEXTS, batch_size=2,
                       max_length=8, stride=4)
    for got in (ranks[0]["scores"], ranks[1]["scores"]):
        assert [g[1:] for g in got] == [[s.tokens, s.words, s.token_ids] for s in ref]
        assert [g[0] for g in got] == pytest.approx([s.logprob for s in ref], abs=1e-5)


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).parent.parent / "examples" / "accelerate"
    kinds = {p.name: load_config_from_file(str(p)) for p in sorted(folder.glob("*.yaml"))}
    assert {k: (c.distributed_type.name, c.num_machines) for k, c in kinds.items()} == {
        "ddp_multi_gpu.yaml": ("MULTI_GPU", 1), "fsdp.yaml": ("FSDP", 1), "deepspeed_zero2.yaml": ("DEEPSPEED", 1),
        "deepspeed_zero3.yaml": ("DEEPSPEED", 1), "two_nodes.yaml": ("MULTI_GPU", 2)}
    assert [kinds[k].deepspeed_config["zero_stage"] for k in ("deepspeed_zero2.yaml", "deepspeed_zero3.yaml")] == [2, 3]


@pytest.mark.parametrize("flag,mode", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")])
def test_sharded_modes_are_refused_not_silently_run_as_ddp(flag, mode, monkeypatch, tiny_encoder_nodrop_dir,
                                                           sentiment_files, tmp_path):
    """`accelerate launch --config_file fsdp.yaml` sets ACCELERATE_USE_FSDP; on CPUs Accelerate would ignore
    it and train unsharded, so frugal refuses with the reason instead (docs/distributed.md)."""
    from frugal_lm.engine.trainer import sharded_mode
    from frugal_lm.errors import FrugalError

    assert sharded_mode("MULTI_CPU") is None and sharded_mode("FSDP") == "FSDP"
    monkeypatch.setenv(flag, "true")
    assert sharded_mode("MULTI_CPU") == mode
    out = tmp_path / "run"
    with pytest.raises(FrugalError, match=rf"^{mode}: sharded training is not supported: {mode} needs GPUs.*"
                                          r"--processes N"):
        train(config(tiny_encoder_nodrop_dir, sentiment_files, out), progress=False)
    assert not (out / "model").exists() and not (out / "checkpoint").exists()
