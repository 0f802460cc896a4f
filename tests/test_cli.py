"""End-to-end runs of the `frugal` command on a tiny real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sentiment_rows, write_tsv

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def frugal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frugal_lm", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tiny_encoder_dir, sentiment_files, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    cfg = run.parent / "cfg.yaml"
    cfg.write_text(f"model:\n  name: {tiny_encoder_dir}\n  max_length: 32\ntrain:\n  epochs: 1\n  lr: 5.0e-3\n")
    proc = frugal("train", cfg, "--train", sentiment_files[0], "--eval", sentiment_files[1], "--output", run,
                  "--batch-size", "8", "--set", "train.eval_every=3", "--set", "train.log_every=2", "--quiet",
                  "--method", "finetune")  # 24 rows per class: auto would pick the few-shot recipe
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["stopped"] == "completed" and last["steps"] == 6
    return run


def test_run_folder_contents(trained_run):
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert files == {
        "config.yaml", "labels.json", "metrics.jsonl", "metrics.json", "loss.png", "eval.png", "README.md",
        "confusion.png",
        "model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
        "checkpoint/trainable.safetensors", "checkpoint/optimizer.pt", "checkpoint/scheduler.json",
        "checkpoint/state.json", "checkpoint/rng.safetensors",
    }
    cfg = (trained_run / "config.yaml").read_text()
    assert "batch_size: 8" in cfg and "eval_every: 3" in cfg  # flags and --set are resolved into the config
    summary = json.loads((trained_run / "metrics.json").read_text())
    assert set(summary["final"]) >= {"accuracy", "macro_f1", "loss"}
    log = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "eval"] == [3, 6]
    assert all({"loss", "lr", "examples_per_s"} <= set(r) for r in log if r["type"] == "train")
    assert json.loads((trained_run / "labels.json").read_text())["labels"] == ["neg", "pos"]
    card = (trained_run / "README.md").read_text()
    assert "| accuracy |" in card and "AutoModelForSequenceClassification" in card
    assert (trained_run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_model_loads_with_plain_transformers(trained_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(trained_run / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(trained_run / "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    with torch.no_grad():
        probs = model(**tok(["a good film"], return_tensors="pt")).logits.softmax(-1)[0]
    proc = frugal("predict", trained_run, "--text", "a good film")
    row = json.loads(proc.stdout)
    assert row["text"] == "a good film" and row["label"] == ["neg", "pos"][int(probs.argmax())]
    assert row["probabilities"]["pos"] == pytest.approx(float(probs[1]), abs=1e-5)


def test_eval_matches_training_metrics(trained_run, sentiment_files):
    proc = frugal("eval", trained_run, "--data", sentiment_files[1])
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    best = json.loads((trained_run / "metrics.json").read_text())["best"]
    assert metrics["accuracy"] == pytest.approx(best["accuracy"])
    assert metrics["loss"] == pytest.approx(best["loss"], abs=1e-5)


def test_predict_file_writes_json_lines(trained_run, tmp_path):
    data = write_tsv(tmp_path / "x.tsv", sentiment_rows(5, seed=9))
    out = tmp_path / "pred.jsonl"
    assert frugal("predict", trained_run, "--data", data, "--output", out).returncode == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [t for t, _ in sentiment_rows(5, seed=9)]
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_predict_precision(trained_run, tmp_path):
    data = write_tsv(tmp_path / "x.tsv", sentiment_rows(6, seed=3))
    rows = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"{precision}.jsonl"
        proc = frugal("predict", trained_run, "--data", data, "--output", out, "--precision", precision)
        assert proc.returncode == 0, proc.stderr
        rows[precision] = [json.loads(x) for x in out.read_text().splitlines()]
        reason = {"fp32": "fp32 (--precision=fp32)", "bf16": "bf16 (--precision=bf16)",
                  "auto": "fp32 (auto"}[precision]  # a tiny model stays fp32 on any processor
        assert f"precision: {reason}" in proc.stderr
    assert rows["auto"] == rows["fp32"]
    for half, full in zip(rows["bf16"], rows["fp32"], strict=True):  # bf16 keeps ~3 significant digits
        assert half["probabilities"]["pos"] == pytest.approx(full["probabilities"]["pos"], abs=2e-2)
    assert any(h["probabilities"] != f["probabilities"] for h, f in zip(rows["bf16"], rows["fp32"], strict=True))
    proc = frugal("predict", trained_run, "--data", data, "--precision", "int8")
    assert proc.returncode != 0 and "--precision: expected auto, fp32, bf16 or fp16, got 'int8'" in proc.stderr


def test_resume_a_finished_run_is_a_no_op(trained_run):
    before = (trained_run / "metrics.jsonl").read_text()
    proc = frugal("train", "--resume", "--output", trained_run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 6
    assert (trained_run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "nope.tsv"], "error: nope.tsv: file not found"),
        (["--train", "{bad}"], "error: {bad}:3 (field 'text'): empty text"),
        (["--train", "{good}", "--eval", "{unseen}"], "error: {unseen}:2 (field 'label'): label 'meh' never appears"),
        (["--train", "{good}", "--set", "train.lr=fast"], "error: train.lr: expected a number, got 'fast'"),
        (["--train", "{good}", "--model", "no-such-org/no-such-model"],
         "error: model 'no-such-org/no-such-model' is not a bundled alias or a local folder"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, tiny_encoder_dir, args, message):
    files = {
        "good": write_tsv(tmp_path / "good.tsv", sentiment_rows(8)),
        "bad": tmp_path / "bad.tsv",
        "unseen": write_tsv(tmp_path / "unseen.tsv", [("so so", "meh")]),
    }
    files["bad"].write_text("text\tlabel\nfine\tpos\n\tneg\n")
    args = [a.format(**files) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_encoder_dir)]
    proc = frugal("train", *args, "--output", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert message.format(**files) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_models_lists_aliases():
    proc = frugal("models")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["minilm", "smollm2"]
