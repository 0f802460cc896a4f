"""Typed config: precedence YAML < flags < --set, errors that name the key, shipped recipes valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal_lm.config import load_config, task_defaults
from frugal_lm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_precedence(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("train:\n  lr: 1.0e-3\n  epochs: 2\nmodel:\n  name: foo\n")
    cfg = load_config(yml, overrides={"train": {"lr": 2e-3}}, sets=["train.lr=3e-3", "peft.method=lora"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.name, cfg.peft.method) == (3e-3, 2.0, "foo", "lora")
    assert load_config(yml, overrides={"train": {"lr": 2e-3}}).train.lr == 2e-3


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["tran.lr=1"], "unknown config key 'tran'"),
        (["train.batch_size=many"], "train.batch_size: expected an integer, got 'many'"),
        (["train.batch_size=2.5"], "train.batch_size: expected an integer"),
        (["train.scheduler=step"], "train.scheduler: expected one of linear, cosine, constant, got 'step'"),
        (["train.group_by_length=maybe"], "train.group_by_length: expected true or false"),
        (["train.warmup_ratio=1.5"], r"train.warmup_ratio: must be in \[0, 1\)"),
        (["train.grad_accum=0"], "train.grad_accum: must be at least 1"),
        (["train.lr"], "expected key.sub=value"),
    ],
)
def test_errors_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(sets=sets)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'train.epoch'"):
        load_config(typo)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(sets=["train.lr=0.001", "peft.target_modules=query,value", "data.eval=dev.tsv"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert task_defaults("classify") == load_config()
    ner = load_config(sets=["task=ner", "ner.scheme=bioes", "ner.tag_column=3"])
    path.write_text(ner.to_yaml())
    assert "ner:\n  scheme: bioes\n" in path.read_text()
    assert load_config(path) == ner and ner.options.scheme == "bioes" and ner.options.tag_column == 3


def test_task_defaults_sit_under_the_users_layers(tmp_path):
    ner = load_config(overrides={"task": "ner"})
    classify = load_config()
    # each task states its own selection metric and compute-saver defaults
    assert (classify.train.metric, ner.train.metric) == ("accuracy", "f1")
    assert classify.train.freeze_embeddings is True
    # a user's value beats the task default, from YAML and from --set
    yml = tmp_path / "c.yaml"
    yml.write_text("task: ner\ntrain:\n  metric: token_accuracy\n  freeze_embeddings: false\n")
    cfg = load_config(yml)
    assert (cfg.train.metric, cfg.train.freeze_embeddings) == ("token_accuracy", False)
    assert load_config(yml, sets=["train.metric=loss"]).train.metric == "loss"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.metric=acuracy"], "train.metric: 'acuracy' is not a metric of task classify "
                                   r"\(did you mean 'accuracy'\?\); its metrics: accuracy, macro_f1, loss"),
        (["task=ner", "train.metric=accuracy"], "train.metric: 'accuracy' is not a metric of task ner"),
        (["task=nerr"], r"task: unknown task 'nerr' \(did you mean 'ner'\?\); known tasks: classify, ner"),
        (["ner.scheme=bio"], "'ner' holds options of task ner, but this run's task is classify"),
        (["task=ner", "ner.scheme=iob3"], "ner.scheme: expected one of auto, iob1, bio, bioes, plain"),
        (["task=ner", "data.format=csv"], "data.format: task ner reads conll, jsonl, got 'csv'"),
    ],
)
def test_task_keys_are_validated_at_load_time(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(sets=sets)


@pytest.mark.parametrize("recipe", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    for path in (cfg.data.train, cfg.data.eval):
        assert path is None or (ROOT / path).exists(), path
