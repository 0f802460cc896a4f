"""The task contract: a task registered with one line works through config, engine, run folder, eval and
predict without touching any other module; tied output heads are never frozen."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from typer.testing import CliRunner

from frugal_lm.config import option
from frugal_lm.errors import DataError
from frugal_lm.tasks.base import Task


@dataclass
class ToyOptions:
    keyword: str = option("good", "the word whose presence the model learns to detect")


@dataclass
class ToyRecord:
    text: str
    hit: bool | None


class ToyTask(Task):
    """Does the text contain the keyword? Written against the contract only, with its own reader, metric,
    option, saved state and prediction format."""

    name = "toy"
    help = "toy: detect a keyword"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    formats = ("txt",)
    metrics: ClassVar[dict[str, str]] = {"hit_rate": "max", "loss": "min"}
    defaults: ClassVar[dict[str, Any]] = {"train.metric": "hit_rate", "train.lr": 5e-3}
    Options = ToyOptions
    state_file = "toy.json"

    def read(self, path: str, labelled: bool = True) -> list[ToyRecord]:
        lines = [x.strip() for x in open(path, encoding="utf-8") if x.strip()]
        if not lines:
            raise DataError(path, "no lines")
        return self.from_texts(lines) if not labelled else [ToyRecord(x, self.options.keyword in x.split())
                                                            for x in lines]

    def from_texts(self, texts: list[str]) -> list[ToyRecord]:
        return [ToyRecord(t, None) for t in texts]

    def encode(self, records: list[ToyRecord]) -> list[dict[str, Any]]:
        enc = self.tokenizer([r.text for r in records], truncation=True, max_length=self.cfg.model.max_length)
        return [{"input_ids": ids, **({"labels": int(r.hit)} if r.hit is not None else {})}
                for ids, r in zip(enc["input_ids"], records, strict=True)]

    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["labels"].numel())

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"), self.count(batch)

    def _probs(self, model: Any, records: list[ToyRecord]) -> torch.Tensor:
        batch = self.collator()(self.encode(records))
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)

    def evaluate(self, model: Any, records: list[ToyRecord] | None = None, device: Any = None) -> dict[str, Any]:
        records = self.eval_records if records is None else records
        probs = self._probs(model, records)
        gold = torch.tensor([int(r.hit) for r in records])
        return {"hit_rate": float((probs.argmax(-1) == gold).float().mean()),
                "loss": float(-probs[torch.arange(len(gold)), gold].log().mean())}

    def predict(self, model: Any, records: list[ToyRecord]) -> list[dict[str, Any]]:
        return [{"text": r.text, "has_keyword": bool(p[1] > 0.5)} for r, p in zip(records, self._probs(model, records),
                                                                                   strict=True)]

    def state(self) -> dict[str, Any]:
        return {"keyword": self.options.keyword}

    def load_state(self, saved: dict[str, Any]) -> None:
        self.saved_keyword = saved["keyword"]


@pytest.fixture
def toy_registered(monkeypatch):
    from frugal_lm import tasks

    monkeypatch.setitem(tasks.TASKS, "toy", f"{__name__}:ToyTask")  # the one registry line


def test_a_registered_task_works_end_to_end(toy_registered, tiny_encoder_dir, tmp_path):
    import random

    from conftest import FILLER, NEGATIVE
    from frugal_lm.cli import app
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import load_run, train

    rng = random.Random(0)
    rows = [" ".join(rng.sample(FILLER, 4) + (["great"] if i % 2 else [rng.choice(NEGATIVE)])) for i in range(48)]
    (tmp_path / "train.txt").write_text("\n".join(rows))
    (tmp_path / "dev.txt").write_text("\n".join(rows[:16]))
    with pytest.raises(Exception, match=r"toy.keywrd"):
        load_config(sets=["task=toy", "toy.keywrd=x"])
    cfg = load_config(overrides={"task": "toy", "output": str(tmp_path / "run"),
                                 "model": {"name": str(tiny_encoder_dir), "max_length": 16},
                                 "data": {"train": str(tmp_path / "train.txt"), "eval": str(tmp_path / "dev.txt")},
                                 "train": {"epochs": 4, "batch_size": 8, "eval_every": 6}},
                      sets=["toy.keyword=great"])
    assert cfg.train.metric == "hit_rate" and cfg.train.lr == 5e-3  # the task's defaults
    summary = train(cfg, progress=False)
    assert summary["metric"] == "hit_rate" and summary["best"]["hit_rate"] >= 0.9
    assert json.loads((tmp_path / "run" / "toy.json").read_text()) == {"keyword": "great"}
    assert "toy:\n  keyword: great\n" in (tmp_path / "run" / "config.yaml").read_text()
    _, task, _ = load_run(tmp_path / "run")
    assert task.saved_keyword == "great" and task.options.keyword == "great"
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(tmp_path / "dev.txt")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hit_rate"] >= 0.9
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), "--text", rows[1], "--text", rows[0]])
    assert [json.loads(x) for x in result.output.splitlines()] == [{"text": rows[1], "has_keyword": True},
                                                                 {"text": rows[0], "has_keyword": False}]
    result = runner.invoke(app, ["config", "--task", "toy"])
    assert "toy.keyword" in result.output and "hit_rate" in result.output


def _trainable(model, name: str) -> bool:
    return dict(model.named_parameters(remove_duplicate=False))[name].requires_grad


def test_freezing_embeddings_keeps_a_tied_mlm_head_trainable(tiny_bert_dir):
    from transformers import AutoModelForMaskedLM

    from frugal_lm.engine.savers import freeze

    model = AutoModelForMaskedLM.from_pretrained(str(tiny_bert_dir))
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight  # BERT ties its MLM decoder to the word embeddings
    notes: list[str] = []
    kept = freeze(model, embeddings=True, first_layers=0, log=notes.append)
    assert kept == ["bert.embeddings.word_embeddings.weight"] and "tied to the output head" in notes[0]
    assert head.requires_grad
    assert not _trainable(model, "bert.embeddings.position_embeddings.weight")
    # one step of MLM training changes the head (it was frozen before this fix)
    before = head.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert not torch.equal(before, head.detach())


@pytest.mark.parametrize("tied", [True, False])
def test_freezing_embeddings_with_gpt2_heads(tiny_gpt2_dir, tied):
    from transformers import AutoModelForCausalLM

    from frugal_lm.engine.savers import freeze

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir), tie_word_embeddings=tied)
    kept = freeze(model, embeddings=True, first_layers=0)
    assert model.lm_head.weight.requires_grad
    assert not _trainable(model, "transformer.wpe.weight")
    assert _trainable(model, "transformer.wte.weight") is tied
    assert kept == (["transformer.wte.weight"] if tied else [])
