"""Typed config: precedence YAML < flags < --set, errors that name the key, shipped recipes valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal_lm.config import RunConfig, load_config
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
    assert RunConfig() == load_config()


@pytest.mark.parametrize("recipe", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    for path in (cfg.data.train, cfg.data.eval):
        assert path is None or (ROOT / path).exists(), path
