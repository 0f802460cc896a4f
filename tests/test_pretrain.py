"""Pretraining: masking statistics, NSP pairs, packing, the on-disk corpus cache, tokenizer training, the tied
MLM head, fill-mask, and from-scratch runs through the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPUS, sentiment_rows
from frugal_lm.data import corpus as C
from frugal_lm.data.packing import join_documents, pack
from frugal_lm.tasks.labels import IGNORE
from frugal_lm.tasks.pretrain import MaskingCollator, PretrainOptions

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FRUGAL_NO_PROGRESS": "1"}


def frugal(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frugal_lm", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def write_corpus(path: Path, n_docs: int = 30, seed: int = 0) -> Path:
    """Documents of 3-8 sentences, one sentence per line, a blank line between documents."""
    rng = random.Random(seed)
    pool = CORPUS + [t for t, _ in sentiment_rows(60, seed)]
    docs = ["\n".join(rng.choice(pool) for _ in range(rng.randint(3, 8))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    from frugal_lm.models.presets import train_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    data = write_corpus(folder / "text.txt", n_docs=40)
    return train_tokenizer("wordpiece", [data], 300, folder / "wordpiece", min_frequency=1)


def collator(tok, **options) -> MaskingCollator:
    return MaskingCollator(tok, tok.pad_token_id, PretrainOptions(**options), seed=0)


def random_rows(tok, n: int, rng: random.Random) -> list[dict]:
    normal = [i for i in range(len(tok)) if i not in set(tok.all_special_ids)]
    rows = []
    for _ in range(n):
        body = [rng.choice(normal) for _ in range(rng.randint(5, 40))]
        rows.append({"input_ids": [tok.cls_token_id, *body, tok.sep_token_id]})
    return rows


# -- masking -----------------------------------------------------------------------------------
def test_masking_rates_and_special_tokens(wordpiece):
    tok, rng = wordpiece, random.Random(0)
    col = collator(tok)
    special = set(tok.all_special_ids)
    chosen = maskable = masked = swapped = kept = 0
    for b in range(60):
        rows = random_rows(tok, 16, rng)
        col.set_position(0, b)
        batch = col(rows)
        original = col.pad(rows)["input_ids"]
        labels, ids, attn = batch["labels"], batch["input_ids"], batch["attention_mask"]
        is_special = torch.isin(original, torch.tensor(sorted(special))) | (attn == 0)
        sel = labels != IGNORE
        assert not (sel & is_special).any()  # special tokens and padding are never chosen
        assert torch.equal(ids[is_special], original[is_special])  # ... nor changed
        assert torch.equal(labels[sel], original[sel])  # labels hold the original tokens
        assert torch.equal(ids[~sel], original[~sel])  # unchosen tokens are left alone
        chosen += int(sel.sum())
        maskable += int((~is_special).sum())
        masked += int((ids[sel] == tok.mask_token_id).sum())
        kept += int((ids[sel] == original[sel]).sum())
        swapped += int(((ids[sel] != original[sel]) & (ids[sel] != tok.mask_token_id)).sum())
    assert maskable > 20_000
    assert abs(chosen / maskable - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    # a random replacement may draw the original token (1 in ~300): it then counts as kept
    assert abs(swapped / chosen - 0.1) < 0.015 and abs(kept / chosen - 0.1) < 0.015


def test_masks_depend_on_position_only(wordpiece):
    rows = random_rows(wordpiece, 8, random.Random(1))
    a, b = collator(wordpiece), collator(wordpiece)
    a.set_position(2, 5)
    first = a(rows)
    a(rows)  # a second call at another position must not matter: the next draw depends on position only
    b.set_position(2, 5)
    assert torch.equal(first["labels"], b(rows)["labels"])
    b.set_position(3, 5)  # the next epoch sees new masks
    assert not torch.equal(first["labels"], b(rows)["labels"])


def test_whole_word_masking_masks_whole_words(wordpiece):
    tok = wordpiece
    text = "unbelievably charming performances everywhere wonderfully"
    enc = tok([text] * 64, add_special_tokens=True)
    words = enc.word_ids(0)
    assert len(set(w for w in words if w is not None)) < len(words) - 2  # some words have several pieces
    col = collator(tok, whole_word_mask=True)
    n_words = chosen_words = 0
    for b in range(20):
        col.set_position(0, b)
        labels = col([{"input_ids": ids} for ids in enc["input_ids"]])["labels"]
        for row in labels:
            for w in set(x for x in words if x is not None):
                flags = {bool(row[i] != IGNORE) for i, x in enumerate(words) if x == w}
                assert len(flags) == 1, "a word was masked in part"
                n_words += 1
                chosen_words += flags.pop()
    assert abs(chosen_words / n_words - 0.15) < 0.03


# -- NSP pairs ---------------------------------------------------------------------------------
class ToyCorpus:
    """Document d's tokens are d*1000 + position: a token says which document and where it came from."""

    def __init__(self, n_docs: int = 200, seed: int = 0):
        rng = random.Random(seed)
        self.sents, self.starts = [], [0]
        for d in range(n_docs):
            pos = 0
            for _ in range(rng.randint(2, 9)):
                n = rng.randint(3, 15)
                self.sents.append([d * 1000 + pos + i for i in range(n)])
                pos += n
            self.starts.append(len(self.sents))

    n_documents = property(lambda self: len(self.starts) - 1)

    def document(self, d):
        return self.starts[d], self.starts[d + 1]

    def sentence(self, k):
        return list(self.sents[k])


def test_nsp_pairs_ratio_and_document_boundaries():
    pairs = list(C.nsp_pairs(ToyCorpus(), 48, random.Random(0)))
    assert len(pairs) > 300
    assert abs(sum(label for _, _, label in pairs) / len(pairs) - 0.5) < 0.06
    for a, b, label in pairs:
        assert a and b and len(a) + len(b) <= 48 - 3
        doc_a = {t // 1000 for t in a}
        assert len(doc_a) == 1  # A never crosses a document boundary
        if label == 0:  # the true continuation: same document, right after A
            assert {t // 1000 for t in b} == doc_a and min(b) > max(a)
        else:  # a segment of another document
            assert len({t // 1000 for t in b}) == 1 and not ({t // 1000 for t in b} & doc_a)


def test_nsp_rows_from_file_have_token_types(wordpiece, tmp_path):
    data = write_corpus(tmp_path / "c.txt")
    settings = C.BuildSettings("mlm+nsp", 24, cls=wordpiece.cls_token_id, sep=wordpiece.sep_token_id)
    ds = C.build_dataset(data, wordpiece, "sentences", settings, tmp_path / "cache")
    assert len(ds) > 20
    for row in ds:
        ids, types = row["input_ids"], row["token_type_ids"]
        assert len(ids) == len(types) == row["length"] <= 24
        first_sep = ids.index(wordpiece.sep_token_id)
        assert ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert row["next_sentence_label"] in (0, 1)


# -- packing -----------------------------------------------------------------------------------
def test_packing_loses_and_duplicates_nothing():
    rng = random.Random(0)
    for _ in range(300):
        docs = [[rng.randrange(10, 99) for _ in range(rng.randrange(0, 30))] for _ in range(rng.randrange(1, 6))]
        length = rng.randrange(3, 12)
        blocks = list(C.mlm_blocks(docs, length, 1, 2))
        stream = [t for i, d in enumerate(docs) for t in ([2] if i else []) + d]  # [SEP] between documents
        assert [t for b in blocks for t in b[1:-1]] == stream
        assert all(b[0] == 1 and b[-1] == 2 and len(b) <= length for b in blocks)
        assert all(len(b) == length for b in blocks[:-1])  # only the last block may be short
        for bos, eos in ((5, 5), (5, 6), (None, 6)):  # clm: exactly the clm task's packing, streamed
            assert list(C.clm_blocks(docs, length, bos, eos)) == pack(join_documents(docs, bos, eos), length)


# -- the on-disk dataset -----------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp", "clm"])
def test_disk_dataset_is_reused_and_equals_memory(wordpiece, tmp_path, objective):
    data = write_corpus(tmp_path / "c.txt", n_docs=25)
    tok = wordpiece
    settings = C.BuildSettings(objective, 32, seed=3, cls=tok.cls_token_id, sep=tok.sep_token_id,
                               bos=tok.cls_token_id, eos=tok.sep_token_id)
    first = C.build_dataset(data, tok, "sentences", settings, tmp_path / "cache")
    arrow = next((tmp_path / "cache").glob("*/data.arrow"))
    stamp = arrow.stat().st_mtime_ns
    second = C.build_dataset(data, tok, "sentences", settings, tmp_path / "cache")
    assert arrow.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache").iterdir())) == 2  # reused
    memory = C.encode_in_memory(data, tok, "sentences", settings)
    assert [dict(r) for r in second] == memory == [dict(r) for r in first]
    data.write_text(data.read_text() + "\nthe end\n")  # changed text: a new cache, not a stale one
    third = C.build_dataset(data, tok, "sentences", settings, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 4 and list(third) != list(first)


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_one_long_document_streams_in_pieces(wordpiece, tmp_path, monkeypatch, objective):
    monkeypatch.setattr(C, "PIECE", 3)  # a document of many lines is read and tokenized 3 lines at a time
    data = tmp_path / "c.txt"
    data.write_text("\n".join(CORPUS * 2) + "\n\n" + "\n".join(CORPUS[:4]) + "\n", encoding="utf-8")
    tok = wordpiece
    s = C.BuildSettings(objective, 16, cls=tok.cls_token_id, sep=tok.sep_token_id, bos=tok.cls_token_id,
                        eos=tok.sep_token_id)
    corpus = C.tokenize_corpus(data, tok, "sentences", tmp_path / "cache", keep_lines=objective == "clm")
    assert corpus.n_documents == 2 and len(corpus.sentences) - 1 == len(CORPUS) * 2 + 4
    assert [dict(r) for r in C.build_dataset(data, tok, "sentences", s, tmp_path / "cache")] == \
        C.encode_in_memory(data, tok, "sentences", s)


def test_reader_layouts_and_errors(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("First one. Second one! third?\nSame para.\n\nNext doc.\n", encoding="utf-8")
    assert list(C.iter_documents(p, "paragraphs")) == [["First one.", "Second one! third?", "Same para."],
                                                       ["Next doc."]]
    assert list(C.iter_documents(p, "sentences")) == [["First one. Second one! third?", "Same para."],
                                                      ["Next doc."]]
    assert len(list(C.iter_documents(p, "lines"))) == 3
    p.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(C.DataError, match=r"t.txt:2: not UTF-8"):
        list(C.iter_documents(p))
    p.write_text("\n\n")
    with pytest.raises(C.DataError, match="no text found"):
        list(C.iter_documents(p))


# -- tokenizers, presets, heads ----------------------------------------------------------------
def test_tokenizer_train_and_reload(tmp_path):
    from transformers import AutoTokenizer

    from frugal_lm.errors import FrugalError
    from frugal_lm.models.presets import train_tokenizer

    data = write_corpus(tmp_path / "c.txt")
    proc = frugal("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 200, "--data", data,
                  "--output", tmp_path / "wordpiece", "--min-frequency", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["vocab_size"] <= 200
    train_tokenizer("bpe", [data], 300, tmp_path / "bpe", min_frequency=1)
    for kind, size in (("wordpiece", 200), ("bpe", 300)):
        tok = AutoTokenizer.from_pretrained(str(tmp_path / kind))
        assert len(tok) <= size
        ids = tok("the cat sat on the mat")["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "thecatsatonthemat"
        if kind == "wordpiece":
            assert tok.mask_token == "[MASK]" and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        else:
            assert tok.eos_token == "<|endoftext|>"
    with pytest.raises(FrugalError, match="needs at least 257"):
        train_tokenizer("bpe", [data], 100, tmp_path / "x")


def test_preset_needs_a_tokenizer_and_only_presets_take_one(tmp_path, tiny_bert_dir):
    from frugal_lm.errors import ModelError
    from frugal_lm.models.registry import resolve_model

    with pytest.raises(ModelError, match="--tokenizer DIR"):
        resolve_model("bert-mini")
    with pytest.raises(ModelError, match="brings its own tokenizer"):
        resolve_model(str(tiny_bert_dir), tokenizer=str(tiny_bert_dir))


def test_encoder_without_head_gets_a_tied_mlm_head(tiny_encoder_dir, capsys):
    from frugal_lm.config import load_config
    from frugal_lm.tasks.pretrain import PretrainTask

    for objective in ("mlm", "mlm+nsp"):
        cfg = load_config(overrides={"task": "pretrain", "model": {"name": str(tiny_encoder_dir)},
                                     "pretrain": {"objective": objective}})
        model = PretrainTask(cfg).build_model(str(tiny_encoder_dir))
        decoder = model.cls.predictions.decoder.weight
        assert decoder is model.bert.embeddings.word_embeddings.weight
        log = capsys.readouterr().err
        assert "initialised it" in log and "tied to the input embeddings" in log


def test_fill_mask_matches_transformers_pipeline(tiny_bert_dir):
    from transformers import pipeline

    from frugal_lm.lm.fill_mask import fill_mask, load_masked_lm

    tok, model = load_masked_lm(str(tiny_bert_dir))
    ours = fill_mask(model, tok, ["the cat [MASK] on the mat", "a [MASK] ran in the [MASK]"], top_k=4)
    ref = pipeline("fill-mask", model=model, tokenizer=tok, top_k=4)
    one = ref("the cat [MASK] on the mat")
    assert [c["token_id"] for c in ours[0]] == [c["token"] for c in one]
    assert np.allclose([c["score"] for c in ours[0]], [c["score"] for c in one], atol=1e-6)
    assert [c["sequence"] for c in ours[0]] == [c["sequence"] for c in one]
    assert len(ours[1]) == 2 and all(len(m) == 4 for m in ours[1])  # two masks: a list per mask
    assert all(m[i]["score"] >= m[i + 1]["score"] for m in ours[1] for i in range(3))


# -- end to end --------------------------------------------------------------------------------
def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"]


def test_from_scratch_mlm_nsp_cli_run(wordpiece, tmp_path):
    from transformers import AutoModelForPreTraining, AutoModelForSequenceClassification

    wordpiece.save_pretrained(str(tmp_path / "tok"))
    data = write_corpus(tmp_path / "c.txt", n_docs=60)
    run = tmp_path / "run"
    proc = frugal("train", "--task", "pretrain", "--objective", "mlm+nsp", "--model", "bert-tiny",
                  "--tokenizer", tmp_path / "tok", "--train", data, "--eval", data, "--output", run,
                  "--max-length", "32", "--batch-size", "16", "--lr", "2e-3", "--max-steps", "16", "--epochs", "10",
                  "--set", "train.log_every=4", "--set", "train.eval_every=8",
                  "--set", f"pretrain.cache_dir={tmp_path / 'cache'}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "BertForPreTraining from scratch" in proc.stderr
    losses = _losses(run)
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5
    summary = json.loads((run / "metrics.json").read_text())
    assert {"mlm_loss", "mlm_accuracy", "mlm_perplexity", "nsp_accuracy", "nsp_loss"} <= set(summary["final"])
    assert (run / "pretrain.png").exists() and (run / "eval.png").exists()
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    model = AutoModelForPreTraining.from_pretrained(str(run / "model"))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    # the run folder is a base model for fine-tuning
    clf = AutoModelForSequenceClassification.from_pretrained(str(run / "model"), num_labels=2)
    assert torch.equal(clf.bert.encoder.layer[1].output.dense.weight, model.bert.encoder.layer[1].output.dense.weight)
    from typer.testing import CliRunner

    from frugal_lm.cli import _register_plugins, app

    _register_plugins()
    result = CliRunner().invoke(app, ["fill-mask", str(run), "the cat [MASK] on the mat", "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    masks = json.loads(result.stdout.strip().splitlines()[-1])["masks"]
    assert len(masks) == 1 and len(masks[0]) == 3 and masks[0][0]["score"] >= masks[0][2]["score"]


def test_from_scratch_clm_run_scores_with_perplexity(tmp_path):
    from frugal_lm.lm.scorers import load_scorer
    from frugal_lm.models.presets import train_tokenizer
    from frugal_lm.tasks.clm import read_documents

    data = write_corpus(tmp_path / "c.txt", n_docs=40)
    train_tokenizer("bpe", [data], 300, tmp_path / "bpe", min_frequency=1)
    run = tmp_path / "gpt"
    proc = frugal("train", "--task", "pretrain", "--objective", "clm", "--model", "gpt-tiny", "--tokenizer",
                  tmp_path / "bpe", "--train", data, "--eval", data, "--output", run, "--max-length", "32",
                  "--batch-size", "16", "--lr", "3e-3", "--max-steps", "16", "--epochs", "10", "--set", "train.log_every=4",
                  "--set", f"pretrain.cache_dir={tmp_path / 'cache'}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    losses = _losses(run)
    assert losses[-1] < losses[0] - 0.5
    final = json.loads((run / "metrics.json").read_text())["final"]
    scorer = load_scorer(str(run), max_length=32)
    assert scorer.kind == "causal"
    # the run's own perplexity metric is `frugal perplexity`'s figure on the same documents
    docs = [d.text for d in read_documents(str(data), "paragraphs")]
    assert scorer.perplexity(docs)["ppl_token"] == pytest.approx(final["perplexity"], rel=1e-4)


def test_resume_reproduces_masks_exactly(tiny_bert_dir, tmp_path, monkeypatch):
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import train

    seen: list[tuple] = []
    original = MaskingCollator.set_position

    def record(self, epoch, batch, process=0):
        seen.append((epoch, batch))
        original(self, epoch, batch, process)

    monkeypatch.setattr(MaskingCollator, "set_position", record)

    data = write_corpus(tmp_path / "c.txt", n_docs=30)

    def cfg(out: str):
        return load_config(overrides={
            "task": "pretrain", "output": str(tmp_path / out), "model": {"name": str(tiny_bert_dir), "max_length": 24},
            "data": {"train": str(data), "eval": str(data)}, "pretrain": {"cache_dir": str(tmp_path / "cache")},
            "train": {"max_steps": 10, "epochs": 5, "batch_size": 8, "lr": 1e-3, "log_every": 1, "eval_every": 5}})

    full = train(cfg("full"), progress=False)
    steps = [p for p in seen if p[0] != 2**31 - 1]  # training batches, not evaluation ones
    assert len(steps) == 10 and len(set(steps)) == 10  # the engine tells the collator each batch's place
    assert train(cfg("part"), progress=False, stop_at_step=4)["stopped"] == "interrupted"
    resumed = train(cfg("part"), resume=True, progress=False)
    assert resumed["final"] == full["final"]
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
