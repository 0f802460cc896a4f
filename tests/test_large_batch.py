"""classify.large_batch: fine-tuning at the default batch and lr trains at 64 rows and 2e-4 on enough data."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import sentiment_rows, write_tsv
from frugal_lm.config import TrainConfig, load_config
from frugal_lm.engine.run import train
from frugal_lm.tasks.classify import LARGE_BATCH_MIN_STEPS, large_batch

GROWN = {"batch_size": 64, "lr": 2e-4}


def test_large_batch_applies_only_at_the_defaults_with_enough_steps():
    base = TrainConfig()  # 32 rows, lr 1e-4, 3 epochs
    rows = LARGE_BATCH_MIN_STEPS * 64 // 3  # exactly 150 steps of 64 over 3 epochs
    assert large_batch(base, rows) == GROWN
    assert large_batch(base, rows - 1) == {}  # 149.98 steps: too few
    assert large_batch(dataclasses.replace(base, epochs=1.0), rows) == {}
    # what the user chose stays: another batch, lr, a step count, token-budget batches
    for changed in ({"batch_size": 16}, {"lr": 5e-5}, {"max_steps": 500}, {"batch_tokens": 2048}):
        assert large_batch(dataclasses.replace(base, **changed), 10 * rows) == {}, changed
    # the steps count the global batch: accumulation and processes
    assert large_batch(dataclasses.replace(base, grad_accum=2), 2 * rows) == GROWN
    assert large_batch(dataclasses.replace(base, grad_accum=2), 2 * rows - 1) == {}
    assert large_batch(base, 4 * rows, processes=4) == GROWN
    assert large_batch(base, 4 * rows - 1, processes=4) == {}


def config(model_dir, train_file, dev_file, output, **extra):
    return load_config(overrides={
        "output": str(output), "model": {"name": str(model_dir), "max_length": 32},
        "data": {"train": str(train_file), "eval": str(dev_file)},
        "classify": {"method": "finetune", **extra.pop("classify", {})},
        "train": {"epochs": 3, "log_every": 5, "seed": 0, **extra}})


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large_batch")
    return (write_tsv(folder / "train.tsv", sentiment_rows(3200, seed=1)),
            write_tsv(folder / "dev.tsv", sentiment_rows(32, seed=2)))


def test_a_run_trains_grown_says_so_and_resumes_grown(tiny_encoder_dir, big_files, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = config(tiny_encoder_dir, *big_files, run)
    assert (cfg.train.batch_size, cfg.train.lr) == (32, 1e-4)  # the config keeps the user's view
    train(cfg, progress=False, stop_at_step=40)
    assert "classify.large_batch: 3200 rows x 3 epochs -> batch 64, lr 0.0002" in capsys.readouterr().out
    resumed = load_config(run / "config.yaml")  # what `frugal train --resume --output run` continues from
    summary = train(resumed, resume=True, progress=False)
    assert summary["steps"] == 150  # 3 x 3200 / 64; at 32 rows it would be 300
    assert summary["train_overrides"] == GROWN
    assert json.loads((run / "metrics.json").read_text())["train_overrides"] == GROWN
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]
    assert max(lrs) == pytest.approx(2e-4, rel=0.05)  # the peak of the linear schedule after warmup
    card = (run / "README.md").read_text()
    assert "batch size 64 x accumulation 1, lr 0.0002" in card


def test_a_chosen_batch_or_a_small_set_trains_as_configured(tiny_encoder_dir, big_files, tmp_path):
    chosen = train(config(tiny_encoder_dir, *big_files, tmp_path / "a", batch_size=128), progress=False)
    assert (chosen["steps"], chosen["train_overrides"]) == (75, {})
    off = train(config(tiny_encoder_dir, *big_files, tmp_path / "b", classify={"large_batch": False}),
                progress=False)
    assert (off["steps"], off["train_overrides"]) == (300, {})
    small = write_tsv(tmp_path / "small.tsv", sentiment_rows(640, seed=3))  # 30 steps of 64 over 3 epochs
    few = train(config(tiny_encoder_dir, small, big_files[1], tmp_path / "c"), progress=False)
    assert (few["steps"], few["train_overrides"]) == (60, {})
