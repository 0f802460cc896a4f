"""Shared fixtures: tiny real models and tokenizers (2 layers, hidden 32) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models gain nothing from threads, and on a busy 2-core machine thread hand-offs cost 10x.
torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"

CORPUS = [
    "the movie was great and the acting was wonderful",
    "a terrible film with a boring plot",
    "i loved every minute of this charming story",
    "the worst thing i have seen this year",
    "an excellent and moving performance",
    "dull , slow and far too long",
    "the cat sat on the mat",
    "a dog ran in the park with a ball",
]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BertForMaskedLM with a WordPiece tokenizer."""
    from frugal_lm.models.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), CORPUS, head="masked")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny random GPT2LMHeadModel with a byte-level BPE tokenizer."""
    from frugal_lm.models.tiny import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"), CORPUS)


POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "charming"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor"]
FILLER = ["the", "movie", "film", "was", "a", "really", "plot", "story", "and", "very"]


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable toy sentiment set: the label is given by which word list the sentence draws from."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(2, 8)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]], header: str = "text\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny random BertModel (no head) whose vocabulary covers the toy sentiment words."""
    from frugal_lm.models.tiny import save_tiny_bert

    texts = CORPUS + [" ".join(POSITIVE + NEGATIVE + FILLER)] * 3
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_enc"), texts, head="base")


@pytest.fixture(scope="session")
def tiny_encoder_nodrop_dir(tmp_path_factory) -> Path:
    """As tiny_encoder_dir, without dropout, for exact gradient comparisons."""
    from frugal_lm.models.tiny import save_tiny_bert

    texts = CORPUS + [" ".join(POSITIVE + NEGATIVE + FILLER)] * 3
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_enc_nodrop"), texts, head="base",
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train.tsv with 48 rows, dev.tsv with 16 rows) of the toy sentiment task."""
    folder = tmp_path_factory.mktemp("sentiment")
    return (write_tsv(folder / "train.tsv", sentiment_rows(48, seed=1)),
            write_tsv(folder / "dev.tsv", sentiment_rows(16, seed=2)))


def make_config(model_dir: Path, files: tuple[Path, Path], output: Path, **train):
    """A RunConfig for the toy task with quick defaults; `train` overrides train.* keys."""
    from frugal_lm.config import load_config

    t = {"epochs": 2, "batch_size": 8, "lr": 5e-3, "log_every": 1, "eval_every": 3, "seed": 0}
    t.update(train)
    # finetune: the toy sets are small enough for classify.method=auto to pick the few-shot recipe
    return load_config(overrides={"output": str(output), "model": {"name": str(model_dir), "max_length": 32},
                                  "data": {"train": str(files[0]), "eval": str(files[1])}, "train": t,
                                  "classify": {"method": "finetune"}})
