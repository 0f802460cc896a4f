"""The NER task on a tiny real BERT: learning, sub-word alignment, windows for long sentences, entity spans,
parity with seqeval on the same predictions, and the CLI end to end with its errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from frugal_lm.config import load_config

PER = ["alice", "bob", "carol", "dave", "erin"]
LOC = [["paris"], ["london"], ["berlin"], ["new", "york"], ["rome"]]
ORG = [["acme"], ["globex", "corp"], ["initech"]]
FILL = ["the", "met", "in", "and", "visited", "with", "from", "said", "today", "a", "talk", "at"]


def toy_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """A learnable NER set (BIO tags): which list a word comes from decides its type."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 4)):
            for w in rng.sample(FILL, rng.randint(1, 3)):
                words.append(w)
                tags.append("O")
            kind = rng.choice(["PER", "LOC", "ORG"])
            name = [rng.choice(PER)] if kind == "PER" else rng.choice(LOC if kind == "LOC" else ORG)
            words += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        out.append((words, tags))
    return out


def to_iob1(tags: list[str]) -> list[str]:
    from frugal_lm.data.tags import from_bio

    return from_bio(tags, "iob1")


def write_conll(path: Path, sentences, iob1: bool = True) -> Path:
    lines = ["-DOCSTART- -X- O O", ""]
    for words, tags in sentences:
        for w, t in zip(words, to_iob1(tags) if iob1 else tags, strict=True):
            lines.append(f"{w} NN I-NP {t}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ner_data")
    return (write_conll(folder / "train.conll", toy_sentences(64, seed=1)),
            write_conll(folder / "dev.conll", toy_sentences(24, seed=2)))


@pytest.fixture(scope="module")
def ner_model_dir(tmp_path_factory) -> Path:
    from frugal_lm.models.tiny import save_tiny_bert

    vocab = " ".join(PER + [w for x in LOC + ORG for w in x] + FILL)
    return save_tiny_bert(tmp_path_factory.mktemp("ner_bert"), [vocab] * 5 + ["zanzibar"],
                          head="base")


def ner_config(model_dir: Path, files, output: Path, **train):
    # random tiny embeddings must learn here, unlike a pretrained model's
    t = {"epochs": 8, "batch_size": 8, "lr": 1e-2, "log_every": 4, "eval_every": 16, "seed": 0,
         "warmup_ratio": 0.0, "freeze_embeddings": False}
    t.update(train)
    return load_config(overrides={"task": "ner", "output": str(output),
                                  "model": {"name": str(model_dir), "max_length": 32},
                                  "data": {"train": str(files[0]), "eval": str(files[1])}, "train": t})


@pytest.fixture(scope="module")
def ner_run(ner_model_dir, ner_files, tmp_path_factory) -> tuple[Path, dict]:
    from frugal_lm.engine.run import train

    run = tmp_path_factory.mktemp("ner_run") / "run"
    return run, train(ner_config(ner_model_dir, ner_files, run), progress=False)


def test_ner_learns_and_reports_entity_scores(ner_run):
    run, summary = ner_run
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["type"] == "train"]
    # 7 labels: chance is ln 7 = 1.95; the first record averages 4 steps at lr 1e-2, already falling
    assert losses[0] > 1.2 and losses[-1] < 0.2
    best = summary["best"]
    assert best["f1"] >= 0.95 and summary["metric"] == "f1"
    assert set(best["per_type"]) == {"LOC", "ORG", "PER"}
    assert set(best) >= {"precision", "recall", "f1", "token_accuracy", "loss"}
    labels = json.loads((run / "labels.json").read_text())
    assert labels["scheme"] == "iob1" and labels["labels"][0] == "O" and "I-ORG" in labels["labels"]
    # the exported model names its labels for plain transformers pipelines
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"]["0"] == "O" and config["architectures"] == ["BertForTokenClassification"]


def test_evaluation_matches_seqeval_on_the_same_predictions(ner_model_dir, ner_files, tmp_path):
    from seqeval.metrics import classification_report, f1_score

    from frugal_lm.data.tags import to_bio
    from frugal_lm.engine.run import load_run, train

    # a half-trained model makes errors (invalid sequences too), so the scores compared are not all 1
    train(ner_config(ner_model_dir, ner_files, tmp_path / "run", max_steps=8, eval_every=0), progress=False)
    _, task, model = load_run(tmp_path / "run")
    records = task.read(str(ner_files[1]))
    ours = task.evaluate(model, records)
    gold = [to_bio(r.tags, "iob1") for r in records]
    pred = [row["tags"] for row in task.predict(model, records)]  # in IOB1, the data's scheme
    pred_bio = [to_bio(p, "iob1") for p in pred]
    assert 0.2 < ours["f1"] < 0.999
    assert ours["f1"] == pytest.approx(f1_score(gold, pred_bio), abs=1e-12)
    report = classification_report(gold, pred_bio, output_dict=True)
    for t, scores in ours["per_type"].items():
        assert scores["f1"] == pytest.approx(report[t]["f1-score"], abs=1e-12)
        assert scores["support"] == report[t]["support"]


def test_first_subtoken_alignment(ner_run):
    from frugal_lm.engine.run import load_run
    from frugal_lm.tasks.labels import IGNORE

    _, task, _ = load_run(ner_run[0])
    records = task.from_texts(["alice visited parisian today"])
    records[0].tags = ["B-PER", "O", "B-LOC", "O"]
    task.scheme = "bio"
    ids = task.tokenizer(["parisian"], add_special_tokens=False)["input_ids"][0]
    assert len(ids) >= 2  # the test needs a word that splits into sub-tokens
    example = task.encode(records)[0]
    names = {v: k for k, v in task.label2id.items()}
    labels = [names.get(x, "-") if x != IGNORE else "-" for x in example["labels"]]
    # [CLS] alice visited zanz ##ibar... today [SEP]: only first sub-tokens carry a label
    assert labels == ["-", "B-PER", "O", "B-LOC"] + ["-"] * (len(ids) - 1) + ["O", "-"]
    task.options.label_all_subtokens = True
    labels = [names[x] if x != IGNORE else "-" for x in task.encode(records)[0]["labels"]]
    assert labels == ["-", "B-PER", "O", "B-LOC"] + ["I-LOC"] * (len(ids) - 1) + ["O", "-"]


def test_long_sentences_are_windowed_and_every_word_predicted(ner_run):
    import numpy as np

    from frugal_lm.engine.run import load_run

    _, task, model = load_run(ner_run[0])
    rng = random.Random(3)
    words = [rng.choice(PER + FILL + ["parisian"]) for _ in range(70)]
    long = task.from_texts([" ".join(words)])
    task.cfg.model.max_length = 16  # 14 sub-tokens per window: the sentence needs many windows
    examples, windows = task._encode(long)
    assert len(windows) > 5 and all(len(e["input_ids"]) <= 16 for e in examples)
    wids = [w for w in range(70) for _ in range(len(task.tokenizer([words[w]], add_special_tokens=False)
                                                     ["input_ids"][0]))]
    assert all(w.start == 0 or wids[w.start] != wids[w.start - 1] for w in windows)  # start at word starts
    row = task.predict(model, long)[0]
    assert len(row["tags"]) == len(row["tokens"]) == 70
    # each word is read from the window where it has most context: compare with a direct forward pass
    word_logits, _, _ = task._word_logits(model, long)
    import torch

    target = 35
    best = max((w for w in windows if any(f[1] == target for f in w.firsts)),
               key=lambda w: min(next(f[2] for f in w.firsts if f[1] == target) - w.start,
                                 w.end - 1 - next(f[2] for f in w.firsts if f[1] == target)))
    k = windows.index(best)
    pos = next(f[0] for f in best.firsts if f[1] == target)
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([examples[k]["input_ids"]])).logits[0, pos].numpy()
    np.testing.assert_allclose(word_logits[0][target], direct, rtol=1e-5, atol=1e-5)
    # the boundary: a sentence of exactly max_length sub-tokens (with [CLS] and [SEP]) is one window
    short = task.from_texts(["bob met carol in new york today"])
    n = len(task.tokenizer(short[0].tokens, is_split_into_words=True)["input_ids"])
    task.cfg.model.max_length = 64
    wide = task.predict(model, short)[0]["tags"]
    task.cfg.model.max_length = n
    assert len(task._encode(short)[1]) == 1 and task.predict(model, short)[0]["tags"] == wide
    task.cfg.model.max_length = n - 1
    assert len(task._encode(short)[1]) == 2 and len(task.predict(model, short)[0]["tags"]) == 7


def test_predictions_are_entity_spans_with_offsets(ner_run):
    from frugal_lm.engine.run import load_run

    _, task, model = load_run(ner_run[0])
    text = "alice  met bob in new york, today."
    row = task.predict(model, task.from_texts([text]))[0]
    assert row["tokens"] == ["alice", "met", "bob", "in", "new", "york", ",", "today", "."]
    found = {(e["text"], e["type"], e["start"], e["end"]) for e in row["entities"]}
    # the toy training text has no punctuation (its tokenizer maps ',' and '.' to [UNK]), so the tiny model's
    # tag there is noise that changes with the tokenizer trainer's id order; every other word is checked
    assert {f for f in found if f[0] not in {",", "."}} == {("alice", "PER", 0, 1), ("bob", "PER", 2, 3),
                                                             ("new york", "LOC", 4, 6)}
    for e in row["entities"]:
        assert text[e["char_start"]:e["char_end"]] == e["text"] and 0 < e["score"] <= 1
    # IOB1 (the training data's scheme) on output: entities start with I-
    assert row["tags"][:3] == ["I-PER", "O", "I-PER"]
    task.options.output_scheme = "bioes"
    assert task.predict(model, task.from_texts([text]))[0]["tags"][4:6] == ["B-LOC", "E-LOC"]


def test_unseen_eval_type_warns_and_counts_as_missed(ner_run, tmp_path, capsys):
    from frugal_lm.engine.run import load_run

    _, task, model = load_run(ner_run[0])
    dev = write_conll(tmp_path / "dev.conll", [(["alice", "met", "zanzibar"], ["B-PER", "O", "B-GPE"])])
    records = task.read(str(dev))
    task.check(records, str(dev))
    assert f"warning: {dev}:5: entity type 'GPE' never appears in the training data" in capsys.readouterr().err
    metrics = task.evaluate(model, records)
    assert metrics["entities_gold"] == 2 and metrics["recall"] <= 0.5
    assert metrics["per_type"]["GPE"]["recall"] == 0.0


def test_jsonl_and_bioes_data_train(ner_model_dir, tmp_path):
    from frugal_lm.data.tags import from_bio
    from frugal_lm.engine.run import load_run, train

    def jsonl(path, sentences):
        path.write_text("".join(json.dumps({"tokens": w, "tags": from_bio(t, "bioes")}) + "\n"
                                for w, t in sentences))
        return path

    files = (jsonl(tmp_path / "train.jsonl", toy_sentences(32, 5)), jsonl(tmp_path / "dev.jsonl", toy_sentences(8, 6)))
    summary = train(ner_config(ner_model_dir, files, tmp_path / "run", max_steps=4), progress=False)
    assert summary["steps"] == 4
    _, task, model = load_run(tmp_path / "run")
    assert task.scheme == "bioes"
    tags = task.predict(model, task.read(str(files[1]), labelled=False))[0]["tags"]
    assert all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in tags)


def test_cli_end_to_end(ner_model_dir, ner_files, tmp_path):
    from test_cli import frugal

    run = tmp_path / "run"
    proc = frugal("train", "--task", "ner", "--model", ner_model_dir, "--train", ner_files[0], "--eval",
                  ner_files[1], "--output", run, "--epochs", "8", "--batch-size", "8", "--lr", "1e-2",
                  "--max-length", "32", "--set", "train.freeze_embeddings=false", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["best"]["f1"] >= 0.9
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and "checkpoint" not in p.parts}
    assert files == {"config.yaml", "labels.json", "metrics.jsonl", "metrics.json", "loss.png", "eval.png",
                     "README.md", "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                     "model/tokenizer_config.json"}
    assert "entity types: LOC, ORG, PER" in (run / "README.md").read_text()
    proc = frugal("eval", run, "--data", ner_files[1])
    metrics = json.loads(proc.stdout)
    assert proc.returncode == 0 and metrics["f1"] >= 0.9 and set(metrics["per_type"]) == {"LOC", "ORG", "PER"}
    # (the toy data never starts a sentence with a name, so neither do these)
    proc = frugal("predict", run, "--text", "today carol visited new york", "--text", "the acme met bob")
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [[(e["text"], e["type"]) for e in r["entities"]] for r in rows] == [
        [("carol", "PER"), ("new york", "LOC")], [("acme", "ORG"), ("bob", "PER")]]
    (tmp_path / "in.txt").write_text("a talk with bob and dave\n\nthe erin visited rome\n")
    proc = frugal("predict", run, "--data", tmp_path / "in.txt", "--output", tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert proc.returncode == 0 and [len(r["entities"]) for r in rows] == [2, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alice NN I-PER\nmet NN\n", r"train\.conll:2: expected 3 columns \(as on line 1\), found 2"),
        ("alice NN B-PER\nmet NN PER\n", r"train\.conll:2: tag 'PER' mixes with prefixed tags"),
        ("", r"train\.conll: file is empty"),
        ("-DOCSTART- -X- O O\n\n", r"train\.conll: no sentences found"),
        ("alice NN O\nmet NN O\n", r"train\.conll: no entities in the training data"),
    ],
)
def test_bad_training_data_exits_2_and_writes_nothing(ner_model_dir, tmp_path, content, message):
    import re

    from test_cli import frugal

    (tmp_path / "train.conll").write_text(content)
    proc = frugal("train", "--task", "ner", "--model", ner_model_dir, "--train", "train.conll", "--output", "run",
                  cwd=tmp_path)
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_overwrite_with_bad_data_keeps_the_old_run(ner_run, ner_model_dir, tmp_path):
    import shutil

    from test_cli import frugal

    run = tmp_path / "run"
    shutil.copytree(ner_run[0], run)
    before = (run / "model" / "model.safetensors").read_bytes()
    (tmp_path / "bad.conll").write_text("alice NN I-PER\nmet NN\n")
    proc = frugal("train", "--task", "ner", "--model", ner_model_dir, "--train", tmp_path / "bad.conll",
                  "--output", run, "--overwrite")
    assert proc.returncode == 2 and (run / "model" / "model.safetensors").read_bytes() == before


def test_lora_ner_run_exported_unmerged_predicts_like_merged(ner_model_dir, ner_files, tmp_path):
    from frugal_lm.engine.run import load_run, train

    rows = {}
    for merge in (True, False):
        cfg = ner_config(ner_model_dir, ner_files, tmp_path / f"run{merge}", max_steps=6, eval_every=0)
        cfg.peft.method, cfg.peft.merge = "lora", merge
        train(cfg, progress=False)
        _, task, model = load_run(tmp_path / f"run{merge}")
        probs = task._word_logits(model, task.read(str(ner_files[1])))[0]
        rows[merge] = probs
    assert (tmp_path / "runFalse" / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "runFalse" / "model").exists()
    assert json.loads((tmp_path / "runFalse" / "adapter" / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"
    import numpy as np

    for a, b in zip(rows[True], rows[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_planner_times_the_prefix_cache_on_a_tagger(ner_model_dir, ner_files, tmp_path):
    """Token classification plans its cached recipes too: later epochs timed with a real cache on the tagger,
    the cache's memory counted."""
    from frugal_lm.plan import plan

    cfg = ner_config(ner_model_dir, ner_files, tmp_path / "run", epochs=3, precision="fp32")
    result = plan(cfg, memory=10**12, reps=1, kernel_probe=False, base_memory=0)
    cached = next(c for c in result["candidates"] if c["method"] == "frozen embeddings + 1 layer + prefix cache")
    assert cached["memory"]["prefix_cache"] > 0 and cached["cached_epoch_s"] > 0
    assert cached["run_s"] == pytest.approx(cached["epoch_s"] + 2 * cached["cached_epoch_s"])


def test_bf16_training_evaluates_entities_under_autocast_close_to_fp32(ner_model_dir, ner_files, tmp_path,
                                                                       monkeypatch):
    # the loop's evaluations of a tagger run under the run's bf16 autocast (Task.eval_autocast); the spans they
    # score agree with an fp32 evaluation of the exported model (what `frugal eval` runs)
    import torch

    from frugal_lm.engine.run import load_run, train
    from frugal_lm.tasks.ner import NerTask

    seen: list[bool] = []
    evaluate = NerTask.evaluate

    def spy(self, model, records=None, device=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return evaluate(self, model, records, device)

    monkeypatch.setattr(NerTask, "evaluate", spy)
    summary = train(ner_config(ner_model_dir, ner_files, tmp_path / "run", precision="bf16"), progress=False)
    assert seen and all(seen)
    assert summary["precision"] == "bf16" and summary["best"]["f1"] >= 0.9
    _, task, model = load_run(tmp_path / "run")
    fp32 = task.evaluate(model, task.read(str(ner_files[1])))
    assert abs(fp32["f1"] - summary["best"]["f1"]) <= 0.05
    assert fp32["loss"] == pytest.approx(summary["best"]["loss"], rel=0.1, abs=0.02)
