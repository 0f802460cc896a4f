"""Run-folder lifecycle: budgets, finished runs, config conflicts, overwrite, broken checkpoints, SIGTERM,
non-finite losses and unmerged LoRA runs, each on a tiny real BERT (dropout on: equal results also prove the
RNG state came back)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_config as _make_config
from frugal_lm.engine.run import train
from frugal_lm.errors import ConfigError, FrugalError


def make_config(*args, **train_keys):
    cfg = _make_config(*args, **train_keys)
    if getattr(cfg.options, "method", None) is not None:
        cfg.options.method = "finetune"  # these tests are about the engine, not the few-shot recipe
    return cfg


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0)


@pytest.fixture(scope="module")
def full_run(tiny_encoder_dir, sentiment_files, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted reference: 3 epochs = 18 steps, evaluation every 3."""
    out = tmp_path_factory.mktemp("full") / "run"
    return out, train(make_config(tiny_encoder_dir, sentiment_files, out, epochs=3), progress=False)


def test_budget_stop_resumes_to_the_planned_end_or_a_new_budget(full_run, tiny_encoder_dir, sentiment_files,
                                                                  tmp_path):
    ref, s_full = full_run
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3, max_minutes=1e-9)
    first = train(cfg, progress=False)
    assert first["stopped"] == "time budget" and first["steps"] == 1
    # the budget counts wall time as the user sees it: loading and evaluation as well as training steps
    assert first["wall_seconds"] > first["train_seconds"] > 0
    # the same config (budget included) resumed with a new, again exhausted budget: one more step
    again = train(cfg, resume=True, progress=False, budget_minutes=1e-9)
    assert again["stopped"] == "time budget" and again["steps"] == 2
    # the same config, no new budget: on to the planned end, exactly as the uninterrupted run
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["stopped"] == "completed" and resumed["steps"] == 18
    assert resumed["best"] == s_full["best"] and resumed["final"] == s_full["final"]
    same_weights(ref, tmp_path / "run")


def test_resuming_a_finished_run_changes_nothing(tiny_encoder_dir, sentiment_files, tmp_path):
    # Early stopping with lr > 0: the last weights differ from the best ones that model/ must keep.
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=10, lr=5e-3, eval_every=1,
                      patience=2)
    summary = train(cfg, progress=False)
    assert summary["stopped"] == "early stopping" and summary["best_step"] < summary["steps"]
    run = tmp_path / "run"
    checkpoint = load_file(str(run / "checkpoint" / "trainable.safetensors"))
    best = weights(run)
    assert any(not torch.equal(checkpoint[k], best[k]) for k in checkpoint if k in best)  # last != best
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = train(cfg, resume=True, progress=False)
    assert again == summary
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_config_that_would_misalign_the_run(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3)
    train(cfg, progress=False, stop_at_step=2)
    for key, value in [("batch_size", 4), ("grad_accum", 2), ("seed", 1)]:
        changed = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3, **{key: value})
        with pytest.raises(ConfigError, match=rf"--resume: train\.{key} is .* in .*config\.yaml"):
            train(changed, resume=True, progress=False)
    other_data = make_config(tiny_encoder_dir, (sentiment_files[1], sentiment_files[1]), tmp_path / "run", epochs=3)
    with pytest.raises(ConfigError, match=r"data\.train"):
        train(other_data, resume=True, progress=False)
    # what a resume may change: logging (and the budget, above)
    allowed = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3, log_every=5)
    assert train(allowed, resume=True, progress=False)["steps"] == 18


def nan_model(model_dir: Path, folder: Path) -> Path:
    """A copy of a model whose first layer's query weights hold a NaN: every loss is NaN."""
    shutil.copytree(model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if "query.weight" in k)
    state[key][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_nan_loss_stops_with_a_diagnosis_and_overwrite_keeps_the_old_run(tiny_encoder_dir, sentiment_files,
                                                                          tmp_path):
    run = tmp_path / "run"
    train(make_config(tiny_encoder_dir, sentiment_files, run, max_steps=2), progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    bad = nan_model(tiny_encoder_dir, tmp_path / "nan_model")
    cfg = make_config(bad, sentiment_files, run, max_steps=4, warmup_ratio=0.0)
    with pytest.raises(FrugalError, match=r"step 1: non-finite loss nan at learning rate 0\.005; the batch's "
                                          r"first texts: \['[a-z ]+"):
        train(cfg, overwrite=True, progress=False)
    # the new run failed at its first step: the old run is back, byte for byte, and nothing else is left
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan_model", "run"]


def test_nan_loss_skipped_when_asked(tiny_encoder_dir, sentiment_files, tmp_path):
    bad = nan_model(tiny_encoder_dir, tmp_path / "nan_model")
    cfg = make_config(bad, sentiment_files, tmp_path / "run", max_steps=3, eval_every=0, epochs=0)
    cfg.train.nonfinite = "skip"
    summary = train(cfg, progress=False)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 3
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "skip"] == [1, 2, 3]
    # no update was applied: the weights are the model's own (the NaN included)
    base = load_file(str(bad / "model.safetensors"))
    after = weights(tmp_path / "run")
    for key, value in base.items():
        torch.testing.assert_close(after["bert." + key], value, equal_nan=True, atol=0, rtol=0)


def test_interrupted_checkpoint_swap_is_recovered(full_run, tiny_encoder_dir, sentiment_files, tmp_path):
    ref, s_full = full_run
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3)
    train(cfg, progress=False, stop_at_step=6)
    ckpt = tmp_path / "run" / "checkpoint"
    os.replace(ckpt, ckpt.with_name(".checkpoint.old"))  # killed between the swap's two renames
    half = tmp_path / "run" / ".checkpoint.x1y2z3" / "checkpoint"  # and an earlier kill, mid-write
    half.mkdir(parents=True)
    (half / "trainable.safetensors").write_bytes(b"\0" * 100)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["steps"] == 18 and resumed["best"] == s_full["best"]
    same_weights(ref, tmp_path / "run")
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_broken_checkpoints_are_errors_not_partial_loads(tiny_encoder_dir, sentiment_files, tmp_path):
    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=3)
    train(cfg, progress=False, stop_at_step=2)
    ckpt = tmp_path / "run" / "checkpoint"
    good = (ckpt / "trainable.safetensors").read_bytes()
    state = load_file(str(ckpt / "trainable.safetensors"))
    dropped = next(k for k in state if "classifier" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, str(ckpt / "trainable.safetensors"))
    with pytest.raises(FrugalError, match=rf"checkpoint lacks 1 trainable parameter\(s\) of the model \({dropped}\)"):
        train(cfg, resume=True, progress=False)
    (ckpt / "trainable.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(FrugalError, match=r"trainable\.safetensors: corrupt or truncated safetensors file"):
        train(cfg, resume=True, progress=False)
    (ckpt / "trainable.safetensors").write_bytes(good)
    text = (ckpt / "state.json").read_text()
    (ckpt / "state.json").write_text(text[: len(text) // 2])
    with pytest.raises(FrugalError, match=r"state\.json: corrupt or truncated checkpoint state"):
        train(cfg, resume=True, progress=False)


def test_sigterm_finishes_the_step_checkpoints_and_exits_0(tiny_encoder_dir, sentiment_files, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "frugal_lm", "train", "--model", str(tiny_encoder_dir), "--train",
           str(sentiment_files[0]), "--output", str(run), "--max-steps", "100000", "--epochs", "100000",
           "--batch-size", "8",
           "--max-length", "32", "--set", "train.log_every=1", "--set", "train.eval_every=100000",
           "--set", "classify.method=finetune", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    log = run / "metrics.jsonl"
    deadline = time.time() + 600  # generous: a loaded machine can take minutes to start Python and torch
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.2)
    assert log.exists(), "training never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"continue with: frugal train --resume --output {run}" in err
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    last = json.loads(log.read_text().splitlines()[-1])
    assert state["stopped"] == "interrupted" and 3 <= state["step"] == last["step"] < 100000
    assert json.loads(out.strip().splitlines()[-1])["stopped"] == "interrupted"


def test_unmerged_lora_run_works_as_a_model(tiny_gpt2_dir, tmp_path):
    """`score`/`perplexity` and `--model RUN` read a LoRA run exported without merging like the merged one."""
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import _build
    from frugal_lm.lm.scorers import load_transformer

    text = tmp_path / "train.txt"
    text.write_text("the cat sat on the mat\n\na dog ran in the park with a ball\n\n" * 4)
    runs = {}
    for merge in (True, False):
        runs[merge] = tmp_path / f"run{merge}"
        cfg = load_config(overrides={
            "task": "clm", "output": str(runs[merge]), "model": {"name": str(tiny_gpt2_dir), "max_length": 16},
            "data": {"train": str(text)}, "train": {"max_steps": 2, "lr": 5e-2, "batch_size": 2},
            "peft": {"method": "lora", "merge": merge}})
        train(cfg, progress=False)
    assert not (runs[False] / "model").exists() and not (runs[False] / "base").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    logits = {}
    for merge, run in runs.items():
        model, _, kind, _ = load_transformer(str(run))
        assert kind == "causal"
        logits[merge] = model(input_ids=ids).logits
    torch.testing.assert_close(logits[False], logits[True], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits[True], load_transformer(str(tiny_gpt2_dir))[0](input_ids=ids).logits)
    # a new training starts from the run's weights, adapter included
    start = {}
    for merge, run in runs.items():
        cfg = load_config(overrides={"task": "clm", "output": str(tmp_path / "next"),
                                     "model": {"name": str(run), "max_length": 16}, "data": {"train": str(text)},
                                     "peft": {"method": "none"}})
        _, model = _build(cfg)
        start[merge] = dict(model.named_parameters())
    for key, value in start[True].items():
        torch.testing.assert_close(start[False][key], value, atol=1e-5, rtol=1e-4)
