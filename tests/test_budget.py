"""Time budgets: duration parsing, and the budget-aware learning-rate schedule (Li et al., ICLR 2020) on a tiny
real BERT, timed by a fake clock (Trainer.clock) that the tests advance: no sleeping, no timed assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_config as _make_config
from frugal_lm.config import format_duration, load_config, parse_duration
from frugal_lm.engine import trainer as trainer_module
from frugal_lm.engine.run import train
from frugal_lm.engine.trainer import Trainer
from frugal_lm.errors import ConfigError
from frugal_lm.tasks.classify import ClassifyTask

# ---------------------------------------------------------------------------------------------------------------
# durations


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1h30m15s", 5415), ("1.5h", 5400), ("2m30s", 150),
    (" 15M ", 900), ("15", 900), (15, 900), (1.5, 90), ("0", 0), ("", 0), (None, 0), ("1e-09", 6e-8),
])
def test_durations_parse(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "message"), [
    ("15 minutes", r"train\.time_budget: expected a duration such as 90s, 15m, 2h or 1h30m .*got '15 minutes'"),
    ("-3m", r"train\.time_budget: must not be negative, got '-3m'"),
    ("abc", r"train\.time_budget: expected a duration .*got 'abc'"),
    ("1h30", r"got '1h30'"),  # a bare number after a unit: seconds or minutes? refused rather than guessed
    ("30s15m", r"got '30s15m'"),  # units out of order
    (True, r"got True"),
])
def test_bad_durations_name_the_key_and_the_forms(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_duration(value)


def test_format_duration_round_trips():
    for seconds in (900, 5400, 90, 5415, 7200, 0.5):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    assert (format_duration(900), format_duration(5400), format_duration(90)) == ("15m", "1h30m", "1m30s")


def test_time_budget_and_max_minutes_are_one_budget(tmp_path):
    cfg = load_config(sets=["train.time_budget=1h30m"])
    assert (cfg.train.time_budget, cfg.train.max_minutes) == ("1h30m", 90.0)
    # a later layer's alias replaces the earlier one, either way round
    cfg = load_config(overrides={"train": {"time_budget": "90s"}}, sets=["train.max_minutes=5"])
    assert (cfg.train.time_budget, cfg.train.max_minutes) == ("", 5.0)
    cfg = load_config(overrides={"train": {"max_minutes": 5}}, sets=["train.time_budget=90s"])
    assert (cfg.train.time_budget, cfg.train.max_minutes) == ("90s", 1.5)
    # a YAML number is minutes; the resolved config round-trips
    yml = tmp_path / "c.yaml"
    yml.write_text("train:\n  time_budget: 15\n")
    cfg = load_config(yml)
    assert cfg.train.max_minutes == 15.0
    yml.write_text(cfg.to_yaml())
    assert load_config(yml) == cfg
    with pytest.raises(ConfigError, match=r"train\.time_budget \('90s'\) and train\.max_minutes \(5\.0\) are the same "
                                          r"budget, given twice"):
        load_config(overrides={"train": {"time_budget": "90s", "max_minutes": 5}})
    with pytest.raises(ConfigError, match=r"train\.time_budget: expected a duration"):
        load_config(sets=["train.time_budget=15 minutes"])


# ---------------------------------------------------------------------------------------------------------------
# the schedule, on a fake clock

STEP_S, EVAL_S, SAVE_S, LOAD_S = 1.0, 0.5, 0.25, 3.0


class FakeClock:
    """Seconds that pass only when the tests say: each optimizer step, evaluation and checkpoint takes a fixed
    time, loading LOAD_S once per session."""

    def __init__(self, step_s: float = STEP_S) -> None:
        self.t, self.step_s = 100.0, step_s

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(Trainer, "clock", staticmethod(fake))

    def timed(fn, seconds):
        def wrapper(*args, **kwargs):
            fake.t += seconds() if callable(seconds) else seconds
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Trainer, "_step", timed(Trainer._step, lambda: fake.step_s))
    monkeypatch.setattr(Trainer, "fit", timed(Trainer.fit, LOAD_S))
    monkeypatch.setattr(ClassifyTask, "evaluate", timed(ClassifyTask.evaluate, EVAL_S))
    monkeypatch.setattr(trainer_module, "save_checkpoint", timed(trainer_module.save_checkpoint, SAVE_S))
    return fake


def make_config(model_dir, files, output, **train_keys):
    # 48 rows / 8 = 6 steps an epoch; 20 epochs = 120 planned steps, far more than a 1-minute budget holds
    keys = {"epochs": 20, "eval_every": 10, "warmup_ratio": 0.05, "log_every": 1, **train_keys}
    return _make_config(model_dir, files, output, **keys)


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def lrs(run: Path) -> list[float]:
    """The learning rate after each step (the one the next step trains with)."""
    return [r["lr"] for r in log(run) if r["type"] == "train"]


def state(run: Path) -> dict:
    return json.loads((run / "checkpoint" / "state.json").read_text())


def test_a_budget_decays_the_lr_to_its_end_and_ends_evaluated_and_saved(clock, tiny_encoder_dir, sentiment_files,
                                                                      tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    summary = train(make_config(tiny_encoder_dir, sentiment_files, run, time_budget="1m"), progress=False)
    assert "time budget 1m: learning rate decays to its end at the budget (linear schedule" in capsys.readouterr().err
    assert summary["stopped"] == "time budget" and summary["lr_schedule"] == "budget"
    assert summary["time_budget_s"] == 60.0
    steps = summary["steps"]
    assert 30 < steps < 120  # the budget, not the planned steps, ended it
    # the whole run, loading, final evaluation and export included, within the budget (±5%: the issue)
    assert 0.95 * 60 <= summary["finished_wall_s"] <= 60.0
    # the schedule reached its end (0 for linear) at the budget, decreasing all the way after warmup
    values = lrs(run)
    assert len(values) == steps and values[-1] == 0.0 and values[-2] > 0.0
    after_warmup = values[values.index(max(values)):]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    # ... well below what the step schedule (120 planned steps) would have left at this step
    warmup = int(0.05 * 120)
    assert values[-2] < 5e-3 * 0.1 < 5e-3 * (1 - (steps - warmup) / (120 - warmup))
    saved = state(run)
    assert saved["progress"] == 120.0 and saved["schedule"] == "budget"
    # it stopped because the next step (with an evaluation and checkpoint due before it) would not have ended
    # before the reserve: the reserve was left whole
    assert saved["wall"] + saved["reserve_s"] <= 60.0 < saved["wall"] + saved["reserve_s"] + STEP_S + EVAL_S + SAVE_S
    # evaluated at the end and exported: metrics.json has the final metrics, model/ loads
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["accuracy"] >= 0 and metrics["final"] == summary["final"]
    assert [r for r in log(run) if r["type"] == "eval"][-1]["step"] == steps
    AutoModelForSequenceClassification.from_pretrained(str(run / "model"))


def test_the_lr_falls_with_time_not_only_with_steps(clock, tiny_encoder_dir, sentiment_files, tmp_path):
    fast = train(make_config(tiny_encoder_dir, sentiment_files, tmp_path / "fast", time_budget="1m"), progress=False)
    clock.step_s = 2 * STEP_S  # the same run on a machine half as fast
    slow = train(make_config(tiny_encoder_dir, sentiment_files, tmp_path / "slow", time_budget="1m"), progress=False)
    assert slow["steps"] < fast["steps"]
    a, b = lrs(tmp_path / "fast"), lrs(tmp_path / "slow")
    # at the same step, the slower run is further through its budget: its learning rate is lower
    assert all(y < x for x, y in zip(a[10:slow["steps"] - 1], b[10:], strict=False))
    assert a[-1] == b[-1] == 0.0


def test_without_a_budget_the_schedule_is_the_step_schedule(tiny_encoder_dir, sentiment_files, tmp_path):
    run = tmp_path / "run"
    summary = train(make_config(tiny_encoder_dir, sentiment_files, run, epochs=2), progress=False)
    assert summary["lr_schedule"] == "steps" and summary["time_budget_s"] is None
    total, warmup, peak = 12, 0, 5e-3  # int(0.05 * 12) = 0 warmup steps
    expected = [peak * max(0.0, 1 - (n - warmup) / (total - warmup)) for n in range(1, total + 1)]
    assert lrs(run) == pytest.approx(expected, rel=1e-12, abs=0)


def test_an_interrupted_budget_run_resumes_on_the_same_curve(clock, tiny_encoder_dir, sentiment_files, tmp_path):
    whole = train(make_config(tiny_encoder_dir, sentiment_files, tmp_path / "whole", time_budget="1m"),
                  progress=False)
    run = tmp_path / "run"
    cfg = make_config(tiny_encoder_dir, sentiment_files, run, time_budget="1m")
    first = train(cfg, progress=False, stop_at_step=20)
    assert first["stopped"] == "interrupted"
    saved = state(run)
    assert saved["schedule"] == "budget" and 20 < saved["progress"] < 120
    before = lrs(run)
    resumed = train(cfg, resume=True, progress=False)  # the same budget: it keeps counting, loading included
    assert resumed["stopped"] == "time budget" and resumed["lr_schedule"] == "budget"
    after = lrs(run)[20:]
    # continues where it was: lower than before the interruption, down to the end at the budget
    assert before[-1] > after[0] > after[1] and after[-1] == 0.0
    assert all(a > b for a, b in zip(after, after[1:], strict=False))
    # the second session's loading counted too: fewer steps than the uninterrupted run, within the one budget
    assert resumed["steps"] < whole["steps"] and 0.95 * 60 <= resumed["finished_wall_s"] <= 60.0


def test_a_budget_stopped_run_resumed_keeps_its_recorded_progress(clock, tiny_encoder_dir, sentiment_files,
                                                                  tmp_path, capsys):
    run = tmp_path / "run"
    # 3 epochs = 18 planned steps; a budget of 10s holds about 5
    cfg = make_config(tiny_encoder_dir, sentiment_files, run, epochs=3, eval_every=3, time_budget="10s")
    first = train(cfg, progress=False)
    assert first["stopped"] == "time budget" and first["steps"] < 18
    assert state(run)["progress"] == 18.0
    capsys.readouterr()
    # no new budget: on to the planned end, but the curve had ended, and stays at its end
    cfg.train.time_budget, cfg.train.max_minutes = "", 0.0
    resumed = train(cfg, resume=True, progress=False)
    assert "the learning-rate schedule already reached its end" in capsys.readouterr().err
    assert resumed["stopped"] == "completed" and resumed["steps"] == 18 and resumed["lr_schedule"] == "steps"
    assert lrs(run)[first["steps"]:] == [0.0] * (18 - first["steps"])
    assert state(run)["progress"] == 18.0


def test_cli_time_budget(tiny_encoder_dir, sentiment_files, tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--model", tiny_encoder_dir, "--train", sentiment_files[0], "--eval", sentiment_files[1],
              "--max-length", "32", "--method", "finetune", "--quiet"]

    def frugal(*args):
        return subprocess.run([sys.executable, "-m", "frugal_lm", "train", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    bad = frugal(*common, "--output", tmp_path / "bad", "--time-budget", "15 minutes")
    assert bad.returncode == 2 and "error: train.time_budget: expected a duration such as 90s" in bad.stderr
    both = frugal(*common, "--output", tmp_path / "both", "--time-budget", "15m", "--max-minutes", "15")
    assert both.returncode == 2 and "--time-budget and --max-minutes are the same budget" in both.stderr
    ok = frugal(*common, "--output", tmp_path / "run", "--time-budget", "1h30m", "--max-steps", "2")
    assert ok.returncode == 0, ok.stderr
    assert "time budget 1h30m: learning rate decays to its end at the budget" in ok.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["time_budget_s"] == 5400.0 and metrics["lr_schedule"] == "budget" and metrics["steps"] == 2
    saved = load_config(tmp_path / "run" / "config.yaml").train
    assert (saved.time_budget, saved.max_minutes) == ("1h30m", 90.0)
