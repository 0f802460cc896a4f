"""Raw-text corpora for pretraining, tokenized once to disk and memory-mapped, so they may exceed RAM.

Input text, read as a stream (`documents`):
    sentences   one sentence per line, a blank line between documents (BERT's format; documents matter
                for next-sentence prediction: its negatives come from another document)
    paragraphs  paragraphs separated by blank lines, each one document, split into sentences at . ! ?
    lines       every line one document, split into sentences

Two caches, both under `cache` (default $FRUGAL_CACHE/corpora) and keyed by a hash of the file (path,
size, modification time), the tokenizer and the settings, built once with a progress bar and reused:
    tok-<hash>/   the tokenized text: tokens.i32 (all sentences back to back), sentences.i64 (token offset
                  of each sentence), documents.i64 (sentence offset of each document); numpy memmaps
    <objective>-<hash>/data.arrow  the training rows (Arrow, opened memory-mapped with `datasets`):
        mlm      [CLS] + chunk + [SEP] blocks of the token stream, [SEP] between documents
        mlm+nsp  BERT's segment pairs: [CLS] A [SEP] B [SEP], token types, next_sentence_label (1: random)
        clm      the clm task's packing (data/packing.py): documents framed by BOS/EOS, overlapping blocks
Memory use stays flat in the corpus size: the text is read line by line and tokenized a batch at a time,
and rows are written to disk as they are made.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frugal_lm.errors import DataError

DOCUMENTS = ("sentences", "paragraphs", "lines")
OBJECTIVES = ("mlm", "mlm+nsp", "clm")
_SPLIT_CASED = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_SPLIT_ANY = re.compile(r"(?<=[.!?])\s+")
FORMAT_VERSION = 1  # bump when what the caches hold changes


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? followed by a capital (any letter in uncased text)."""
    text = " ".join(text.split())
    if not text:
        return []
    pattern = _SPLIT_CASED if any(c.isupper() for c in text) else _SPLIT_ANY
    return [s for s in pattern.split(text) if s.strip()]


PIECE = 1000  # lines per piece of a long document: what is held in memory at once


def iter_pieces(path: str | Path, documents: str = "sentences",
                keep_lines: bool = False) -> Iterator[tuple[list[str], bool]]:
    """Stream a text file as (sentences, ends_document) pieces, so that even one huge document (a file
    without blank lines) is never held whole: `sentences` and `lines` layouts yield at most PIECE lines at a
    time; a `paragraphs` paragraph is split into sentences as a whole. With `keep_lines`, lines as they are.

    Raises:
        DataError: missing file, bytes that are not UTF-8 (the line is named), no text at all.
    """
    if documents not in DOCUMENTS:
        raise ValueError(f"documents: expected one of {DOCUMENTS}, got {documents!r}")
    p = Path(path)
    if not p.is_file():
        raise DataError(str(path), "file not found" if not p.exists() else "not a file")
    current: list[str] = []
    found = False
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(str(path), "not UTF-8 text", line=lineno) from None
            if documents == "lines":
                if line:
                    found = True
                    yield ([line] if keep_lines else split_sentences(line)), True
                continue
            if line:
                current.append(line)
                if documents == "sentences" and len(current) >= PIECE:
                    found = True
                    yield current, False
                    current = []
            elif current or (found and documents == "sentences"):
                found = True
                yield _sentences(current, documents, keep_lines), True
                current = []
    if current or (found and documents == "sentences"):
        found = True
        yield _sentences(current, documents, keep_lines), True
    if not found:
        raise DataError(str(path), "no text found; expected one sentence per line, a blank line between "
                        "documents")


def iter_documents(path: str | Path, documents: str = "sentences", keep_lines: bool = False) -> Iterator[list[str]]:
    """The documents of a text file, each a list of sentences (see the module docstring); with
    `keep_lines`, each a list of its lines as they are (causal LMs learn the text's own line breaks).
    Each document is held whole: `iter_pieces` streams without that."""
    doc: list[str] = []
    for piece, ends in iter_pieces(path, documents, keep_lines):
        doc.extend(piece)
        if ends:
            if doc:
                yield doc
            doc = []


def _sentences(lines: list[str], documents: str, keep_lines: bool) -> list[str]:
    return lines if keep_lines or documents == "sentences" else split_sentences(" ".join(lines))


# -- the tokenized cache ---------------------------------------------------------------------------
class TokenizedCorpus:
    """Sentences as token ids, memory-mapped: `sentence(k)`, `document(d) -> (first, end)` sentence range."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tokens = np.memmap(folder / "tokens.i32", dtype=np.int32, mode="r") \
            if (folder / "tokens.i32").stat().st_size else np.zeros(0, np.int32)
        self.sentences = np.fromfile(folder / "sentences.i64", dtype=np.int64)
        self.documents = np.fromfile(folder / "documents.i64", dtype=np.int64)

    @property
    def n_documents(self) -> int:
        return len(self.documents) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.sentences[-1])

    def sentence(self, k: int) -> list[int]:
        return self.tokens[self.sentences[k]:self.sentences[k + 1]].tolist()

    def document(self, d: int) -> tuple[int, int]:
        return int(self.documents[d]), int(self.documents[d + 1])

    def document_tokens(self, d: int) -> np.ndarray:
        first, end = self.document(d)
        return self.tokens[self.sentences[first]:self.sentences[end]]


def file_key(path: str | Path) -> dict[str, Any]:
    """What identifies a data file's content cheaply: its absolute path, size and modification time."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tokenizer_key(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _progress(total: int, desc: str, unit: str = "B") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                disable=os.environ.get("FRUGAL_NO_PROGRESS") == "1")


def tokenize_corpus(path: str | Path, tokenizer: Any, documents: str, cache: Path, keep_lines: bool = False,
                    batch_sentences: int = 2000) -> TokenizedCorpus:
    """The tokenized cache of `path` (built on first use, then reused). With `keep_lines` the units are
    lines, each but a document's last tokenized with its line break (the text a causal LM should learn)."""
    from frugal_lm.io import atomic_path

    key = {"v": FORMAT_VERSION, "file": file_key(path), "tokenizer": tokenizer_key(tokenizer),
           "documents": documents, "keep_lines": keep_lines}
    folder = Path(cache) / f"tok-{_digest(key)}"
    if (folder / "meta.json").exists():
        return TokenizedCorpus(folder)
    bar = _progress(os.path.getsize(path), f"tokenizing {Path(path).name}")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        n_tok = n_sent = 0
        with open(tmp / "tokens.i32", "wb") as ft, open(tmp / "sentences.i64", "wb") as fs, \
                open(tmp / "documents.i64", "wb") as fd:
            fs.write(np.int64(0).tobytes())
            fd.write(np.int64(0).tobytes())
            pending: list[str] = []
            ends: list[int] = []  # index into pending after which a document ends

            def flush() -> None:
                nonlocal n_tok, n_sent
                if not pending:
                    return
                ids = tokenizer(pending, add_special_tokens=False)["input_ids"]
                lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
                ft.write(flat.tobytes())
                fs.write((n_tok + np.cumsum(lengths)).tobytes())
                fd.write((n_sent + np.asarray(ends, dtype=np.int64)).tobytes())
                n_tok += int(lengths.sum())
                n_sent += len(ids)
                bar.update(sum(len(s.encode("utf-8")) + 1 for s in pending))
                pending.clear()
                ends.clear()

            open_doc = False  # sentences written since the last document end
            for piece, doc_ends in iter_pieces(path, documents, keep_lines):
                if keep_lines:  # every line keeps its line break but a document's last
                    piece = [line + "\n" for line in piece[:-1]] + [x + ("" if doc_ends else "\n") for x in piece[-1:]]
                pending.extend(piece)
                open_doc = open_doc or bool(piece)
                if doc_ends and open_doc:
                    ends.append(len(pending))
                    open_doc = False
                if len(pending) >= batch_sentences:
                    flush()
            flush()
        (tmp / "meta.json").write_text(json.dumps({**key, "tokens": n_tok, "sentences": n_sent}))
    bar.close()
    return TokenizedCorpus(folder)


# -- rows: blocks and sentence pairs -----------------------------------------------------------------
@dataclass(frozen=True)
class BuildSettings:
    """What the training rows depend on besides the tokenized text (part of the cache key)."""

    objective: str
    max_length: int
    seed: int = 0
    nsp_probability: float = 0.5
    short_seq_probability: float = 0.1
    bos: int | None = None  # clm: document boundary tokens
    eos: int | None = None
    cls: int | None = None  # mlm: block frame
    sep: int | None = None


def mlm_blocks(documents: Iterable[Sequence[int]], max_length: int, cls: int, sep: int) -> Iterator[list[int]]:
    """[CLS] + chunk + [SEP] blocks cut from the documents' tokens joined with one [SEP] between documents;
    every token of the stream in exactly one block (the last block may be shorter)."""
    width = max_length - 2
    if width < 1:
        raise ValueError(f"max_length must be at least 3 for MLM blocks, got {max_length}")
    buf: list[int] = []
    first = True
    for ids in documents:
        if not first:
            buf.append(sep)
        first = False
        for piece in _chunks(ids):
            buf.extend(piece)
            pos = 0
            while len(buf) - pos >= width:
                yield [cls, *buf[pos:pos + width], sep]
                pos += width
            del buf[:pos]
    if buf:
        yield [cls, *buf, sep]


def _chunks(ids: Sequence[int], size: int = 65536) -> Iterator[list[int]]:
    """A document's tokens as Python ints, a slice at a time (a memory-mapped document may be huge)."""
    for start in range(0, len(ids), size):
        piece = ids[start:start + size]
        yield piece.tolist() if hasattr(piece, "tolist") else [int(t) for t in piece]


def clm_blocks(documents: Iterable[Sequence[int]], max_length: int, bos: int | None,
               eos: int | None) -> Iterator[list[int]]:
    """`packing.pack(packing.join_documents(documents, bos, eos), max_length)`, streamed: blocks that
    overlap by one token (every token after the first a prediction target once)."""
    if max_length < 2:
        raise ValueError(f"block length must be at least 2 tokens, got {max_length}")
    buf: list[int] = []  # the stream's unemitted tail; never empty once started (blocks overlap by one)
    for ids in documents:
        if bos is not None and not (buf and buf[-1] == bos):  # as join_documents: no repeated boundary
            buf.append(bos)
        for piece in [*_chunks(ids), [eos] if eos is not None else []]:
            buf.extend(piece)
            pos = 0
            while len(buf) - pos >= max_length:
                yield buf[pos:pos + max_length]
                pos += max_length - 1
            del buf[:pos]
    if len(buf) >= 2:
        yield buf


def _truncate_pair(a: list[int], b: list[int], budget: int, rng: random.Random) -> None:
    """BERT's truncation: trim the longer segment, from its front or back at random, until both fit."""
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def nsp_pairs(corpus: Any, max_length: int, rng: random.Random, nsp_probability: float = 0.5,
              short_seq_probability: float = 0.1) -> Iterator[tuple[list[int], list[int], int]]:
    """BERT's segment pairs (A, B, label) over a corpus with `n_documents`, `document(d)` and `sentence(k)`.

    Per document, sentences are gathered until the target length (max_length - 3, or with probability
    `short_seq_probability` a random shorter one), split at a random sentence boundary into A and B; with
    probability `nsp_probability` B is replaced by text from a random *other* document (label 1) and the
    unused sentences go back to be used next. A chunk of one sentence is split inside it. Pairs are trimmed
    to fit. With a single document, negatives come from a random place in it (and a warning says so).
    """
    budget = max_length - 3
    if budget < 2:
        raise ValueError(f"max_length must be at least 5 for sentence pairs, got {max_length}")
    n_docs = corpus.n_documents
    if n_docs == 1:
        print("warning: the corpus has one document, so next-sentence negatives come from elsewhere in it; "
              "separate documents with a blank line", file=sys.stderr)
    for d in range(n_docs):
        first, end = corpus.document(d)
        target = budget if rng.random() >= short_seq_probability else rng.randint(2, budget)
        chunk: list[list[int]] = []
        length = 0
        k = first
        while k < end:
            seg = corpus.sentence(k)
            if seg:
                chunk.append(seg)
                length += len(seg)
            if chunk and (k == end - 1 or length >= target):
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:a_end] for t in s]
                    rest = [t for s in chunk[a_end:] for t in s]
                else:  # one sentence: A and B are its two parts
                    a_end = 1
                    cut = rng.randint(1, len(chunk[0]) - 1) if len(chunk[0]) >= 2 else len(chunk[0])
                    a, rest = chunk[0][:cut], chunk[0][cut:]
                if not rest or rng.random() < nsp_probability:
                    b = _random_segment(corpus, d, max(1, target - len(a)), rng, (first, end))
                    label = 1
                    k -= len(chunk) - a_end  # unused sentences are not wasted
                else:
                    b, label = rest, 0
                _truncate_pair(a, b, budget, rng)
                if a and b:
                    yield a, b, label
                chunk, length = [], 0
                target = budget if rng.random() >= short_seq_probability else rng.randint(2, budget)
            k += 1


def _random_segment(corpus: Any, doc: int, want: int, rng: random.Random, here: tuple[int, int]) -> list[int]:
    n_docs = corpus.n_documents
    if n_docs > 1:
        other = rng.randrange(n_docs - 1)
        other += other >= doc  # any document but this one
        first, end = corpus.document(other)
    else:
        first, end = here
    out: list[int] = []
    k = rng.randrange(first, end)
    while k < end and len(out) < want:
        out.extend(corpus.sentence(k))
        k += 1
    return out or corpus.sentence(rng.randrange(first, end))


def pair_row(a: list[int], b: list[int], label: int, cls: int, sep: int) -> dict[str, Any]:
    ids = [cls, *a, sep, *b, sep]
    return {"input_ids": ids, "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
            "next_sentence_label": label, "length": len(ids)}


def iter_rows(corpus: TokenizedCorpus, s: BuildSettings) -> Iterator[dict[str, Any]]:
    """Training rows of the objective `s.objective` from a tokenized corpus, one at a time."""
    docs = (corpus.document_tokens(d) for d in range(corpus.n_documents))
    if s.objective == "mlm":
        for ids in mlm_blocks(docs, s.max_length, s.cls, s.sep):
            yield {"input_ids": ids, "length": len(ids)}
    elif s.objective == "clm":
        for ids in clm_blocks(docs, s.max_length, s.bos, s.eos):
            yield {"input_ids": ids, "length": len(ids)}
    else:
        rng = random.Random(s.seed)
        for a, b, label in nsp_pairs(corpus, s.max_length, rng, s.nsp_probability, s.short_seq_probability):
            yield pair_row(a, b, label, s.cls, s.sep)


def _schema(objective: str) -> Any:
    import pyarrow as pa

    fields = [("input_ids", pa.list_(pa.int32())), ("length", pa.int32())]
    if objective == "mlm+nsp":
        fields += [("token_type_ids", pa.list_(pa.int8())), ("next_sentence_label", pa.int8())]
    return pa.schema(fields)


def build_dataset(path: str | Path, tokenizer: Any, documents: str, settings: BuildSettings,
                  cache: str | Path, rows_per_batch: int = 4096) -> Any:
    """The memory-mapped `datasets.Dataset` of training rows for `path` (built once, then reused).

    Returns:
        A `datasets.Dataset` with input_ids, length (and token_type_ids, next_sentence_label for mlm+nsp).
    """
    import datasets
    import pyarrow as pa

    from frugal_lm.io import atomic_path

    cache = Path(cache)
    corpus = tokenize_corpus(path, tokenizer, documents, cache, keep_lines=settings.objective == "clm")
    key = {"corpus": corpus.folder.name, **asdict(settings)}
    folder = cache / f"{settings.objective.replace('+', '-')}-{_digest(key)}"
    if not (folder / "meta.json").exists():
        schema = _schema(settings.objective)
        bar = _progress(corpus.n_documents, f"packing {Path(path).name} ({settings.objective})", unit="doc")
        rows = 0
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            with pa.OSFile(str(tmp / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                batch: dict[str, list[Any]] = {name: [] for name in schema.names}

                def flush() -> None:
                    if batch["input_ids"]:
                        writer.write_batch(pa.record_batch([pa.array(batch[n], schema.field(n).type)
                                                            for n in schema.names], schema=schema))
                        for v in batch.values():
                            v.clear()

                for row in iter_rows(corpus, settings):
                    for name in schema.names:
                        batch[name].append(row[name])
                    rows += 1
                    if rows % rows_per_batch == 0:
                        flush()
                        bar.n = min(corpus.n_documents, bar.n + 1)
                        bar.refresh()
                flush()
            (tmp / "meta.json").write_text(json.dumps({**key, "rows": rows}))
        bar.update(corpus.n_documents - bar.n)
        bar.close()
    if json.loads((folder / "meta.json").read_text())["rows"] == 0:
        raise DataError(str(path), f"too little text for one {settings.objective} example of "
                        f"{settings.max_length} tokens")
    return datasets.Dataset.from_file(str(folder / "data.arrow"))


def encode_in_memory(path: str | Path, tokenizer: Any, documents: str, settings: BuildSettings) -> list[dict]:
    """The same rows as `build_dataset`, computed in memory with no cache (for tests and small files)."""

    class Memory:
        def __init__(self) -> None:
            keep = settings.objective == "clm"
            docs = [d for d in iter_documents(path, documents, keep) if d]
            if keep:
                docs = [[line + "\n" for line in d[:-1]] + d[-1:] for d in docs]
            self.docs = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
            self.flat = [s for d in self.docs for s in d]
            self.starts = np.cumsum([0] + [len(d) for d in self.docs])

        n_documents = property(lambda self: len(self.docs))

        def document(self, d: int) -> tuple[int, int]:
            return int(self.starts[d]), int(self.starts[d + 1])

        def sentence(self, k: int) -> list[int]:
            return list(self.flat[k])

        def document_tokens(self, d: int) -> list[int]:
            return [t for s in self.docs[d] for t in s]

    return list(iter_rows(Memory(), settings))  # type: ignore[arg-type]
