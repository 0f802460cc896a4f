"""Cross-validation and learning curves: stratified disjoint folds, per-class samples, sizes, summaries,
and both commands end to end on a tiny model."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from conftest import sentiment_rows, write_tsv
from frugal_lm.cli_cv import parse_sizes, sample_per_class, stratified_folds, summarize
from frugal_lm.errors import FrugalError


def test_folds_are_disjoint_cover_everything_and_are_stratified():
    labels = ["a"] * 23 + ["b"] * 11 + ["c"] * 6
    folds = stratified_folds(labels, 5, seed=1)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(40)) and len(flat) == len(set(flat))  # disjoint, complete
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for fold in folds:
        counts = Counter(labels[i] for i in fold)
        for label, total in Counter(labels).items():
            assert math.floor(total / 5) <= counts[label] <= math.ceil(total / 5)  # every label in proportion
    assert stratified_folds(labels, 5, seed=1) == folds and stratified_folds(labels, 5, seed=2) != folds
    with pytest.raises(FrugalError, match="label 'c' has 6 examples, fewer than --folds 7"):
        stratified_folds(labels, 7, seed=0)


def test_sample_per_class_sizes_and_nesting():
    labels = ["x"] * 30 + ["y"] * 5
    small = sample_per_class(labels, 4, seed=3)
    assert Counter(labels[i] for i in small) == {"x": 4, "y": 4}
    big = sample_per_class(labels, 8, seed=3)
    assert Counter(labels[i] for i in big) == {"x": 8, "y": 5}  # a class with fewer gives all it has
    assert set(small) <= set(big)  # growing the size adds examples to the same sample
    assert sample_per_class(labels, None, seed=0) == list(range(35))
    assert sample_per_class(labels, 4, seed=4) != small


def test_parse_sizes():
    assert parse_sizes("8,16,32,64,all") == [8, 16, 32, 64, None]
    assert parse_sizes(" 2 , 4 ") == [2, 4]
    for bad, message in [("8,x", "got 'x'"), ("16,8", "must increase"), ("all,8", "'all' last"), ("0", "at least 1"),
                         ("", "at least one size")]:
        with pytest.raises(FrugalError, match=message):
            parse_sizes(bad)


def test_summarize_mean_std_and_flattening():
    rows = [{"accuracy": 0.5, "per_class": {"a": {"f1": 0.2}}, "confusion": [[1]]},
            {"accuracy": 0.7, "per_class": {"a": {"f1": 0.4}}, "confusion": [[2]]}]
    s = summarize(rows)
    assert s["accuracy"]["mean"] == pytest.approx(0.6) and s["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert s["per_class.a.f1"]["mean"] == pytest.approx(0.3) and s["accuracy"]["n"] == 2
    assert "confusion" not in s


def _config(tmp_path, model_dir, rows: int, with_eval: bool):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(rows, seed=5))
    lines = ["task: classify", f"output: {tmp_path / 'run'}", "model:", f"  name: {model_dir}", "  max_length: 32",
             "data:", f"  train: {train}"]
    if with_eval:
        lines.append(f"  eval: {write_tsv(tmp_path / 'dev.tsv', sentiment_rows(12, seed=6))}")
    lines += ["train:", "  epochs: 1", "  batch_size: 8", "  lr: 0.005", "  log_every: 1",
              "classify:", "  method: finetune"]
    path = tmp_path / "cv.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cv_command_writes_mean_std_and_a_plot(tiny_encoder_dir, tmp_path):
    from typer.testing import CliRunner

    from frugal_lm.cli import _register_plugins, app

    _register_plugins()
    config = _config(tmp_path, tiny_encoder_dir, 12, with_eval=False)
    out = tmp_path / "cvout"
    result = CliRunner().invoke(app, ["cv", str(config), "--folds", "2", "--seeds", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "cv.json").read_text())
    assert len(data["runs"]) == 4 and {(r["seed"], r["fold"]) for r in data["runs"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(r["train"] == 6 and r["heldout"] == 6 for r in data["runs"])
    accs = [r["metrics"]["accuracy"] for r in data["runs"]]
    assert data["summary"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 4)
    assert "macro_f1" in data["summary"] and "per_class.pos.f1" in data["summary"]
    assert (out / "cv.png").stat().st_size > 1000
    assert "accuracy" in result.output and "±" in result.output
    assert not (out / "runs" / "seed0_fold0" / "run" / "model").exists()  # weights dropped, scores kept
    assert (out / "runs" / "seed0_fold0" / "heldout.json").exists()


def test_learning_curve_command_trains_each_size(tiny_encoder_dir, tmp_path):
    from typer.testing import CliRunner

    from frugal_lm.cli import _register_plugins, app

    _register_plugins()
    config = _config(tmp_path, tiny_encoder_dir, 16, with_eval=True)
    out = tmp_path / "lc"
    result = CliRunner().invoke(app, ["learning-curve", str(config), "--sizes", "2,4,all", "--seeds", "1",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "learning_curve.json").read_text())
    assert [p["size"] for p in data["points"]] == [2, 4, "all"]
    assert [p["per_class"] for p in data["points"]] == [2, 4, 8]
    assert [[r["train"] for r in p["runs"]] for p in data["points"]] == [[4], [8], [16]]
    assert data["eval_examples"] == 12 and (out / "learning_curve.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["learning-curve", str(_config(tmp_path, tiny_encoder_dir, 16, with_eval=False)),
                                   "--sizes", "2", "--seeds", "1", "--output", str(out)])
    assert bad.exit_code != 0 and "needs data.eval" in str(bad.exception)
