"""Readers for token-level data (NER and other tagging): CoNLL column files and JSONL with token lists.

Every error is a DataError that names the file and line and says what was expected. Files are read line by
line, so large corpora cost memory for the sentences only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from frugal_lm.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_CONLL_SHAPE = ("one token per line with its columns separated by spaces or tabs, and a blank line "
                "between sentences")


@dataclass
class TaggedSentence:
    """One sentence. `tags` is None for unlabelled input; `line` is the 1-based line of the first token and
    `lines` the line of each token (for JSONL, the object's line throughout), for error messages."""

    tokens: list[str]
    tags: list[str] | None
    line: int
    lines: list[int]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each line of a UTF-8 file; DataError when it cannot be read.

    Bytes are decoded a line at a time so that a decoding error can name its line.
    """
    name = str(path)
    if not path.exists():
        raise DataError(name, "file not found; expected a path to a data file")
    if path.is_dir():
        raise DataError(name, "is a folder; expected a data file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(name, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                "expected a UTF-8 text file", line=lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):  # a byte-order mark is not part of the first token
                text = text[1:]
            yield lineno, text


def _column(index: int, ncols: int, what: str, path: str, lineno: int) -> int:
    """A column index (negative counts from the end) checked against the file's column count."""
    if not -ncols <= index < ncols:
        raise DataError(path, f"{what} column {index} is out of range: the file has {ncols} column"
                        f"{'s' if ncols != 1 else ''} (as on this line); expected an index from {-ncols} "
                        f"to {ncols - 1}", line=lineno)
    return index % ncols


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1,
               labelled: bool = True) -> list[TaggedSentence]:
    """Sentences from a CoNLL column file: one token per line, columns split on spaces or tabs, blank lines
    between sentences, ``-DOCSTART-`` lines skipped.

    The first token line fixes the number of columns and every token line must have as many. The token and
    tag columns are indexes (negative from the end; by default the first and the last). With
    `labelled=False` tags are None and a single column of tokens is enough.
    """
    path = Path(path)
    name = str(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    ncols = first_line = tok = tag = 0
    any_line = any_text = False

    def flush() -> None:
        nonlocal tokens, tags, lines
        if tokens:
            sentences.append(TaggedSentence(tokens, tags if labelled else None, lines[0], lines))
            tokens, tags, lines = [], [], []

    for lineno, text in _lines(path):
        any_line = True
        fields = text.split()
        if not fields:
            flush()
            continue
        any_text = True
        if fields[0] == "-DOCSTART-":
            flush()  # a document boundary is a sentence boundary even without a blank line
            continue
        if len(fields) != ncols:
            if ncols:
                raise DataError(name, f"expected {ncols} columns (as on line {first_line}), found {len(fields)}",
                                line=lineno)
            ncols, first_line = len(fields), lineno
            tok = _column(token_column, ncols, "token", name, lineno)
            if labelled:
                tag = _column(tag_column, ncols, "tag", name, lineno)
                if tag == tok:
                    raise DataError(name, f"the token and the tag column are both column {tok} of {ncols}; "
                                    "expected a labelled file with at least 2 columns (token ... tag), or "
                                    "read it as unlabelled", line=lineno)
        tokens.append(fields[tok])
        if labelled:
            tags.append(fields[tag])
        lines.append(lineno)
    flush()
    if not sentences:
        if not any_line:
            raise DataError(name, "file is empty")
        if not any_text:
            raise DataError(name, f"file is empty (only blank lines); expected {_CONLL_SHAPE}")
        raise DataError(name, f"no sentences found (only -DOCSTART- lines); expected {_CONLL_SHAPE}")
    return sentences


def _string_list(obj: dict, key: str, path: str, lineno: int) -> list[str]:
    if key not in obj:
        raise DataError(path, f"missing key '{key}'; expected a list of strings under it "
                        f"(keys found: {', '.join(map(str, obj)) or 'none'})", line=lineno, field=key)
    value = obj[key]
    if not isinstance(value, list):
        raise DataError(path, f"expected a list of strings, got {type(value).__name__}", line=lineno, field=key)
    if not value:
        raise DataError(path, "empty list; expected at least one token", line=lineno, field=key)
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(path, f"item {k} is {type(item).__name__} {item!r}; expected a string",
                            line=lineno, field=key)
    return value


def read_tagged_jsonl(path: str | Path, tokens_key: str = "tokens", tags_key: str = "tags",
                      labelled: bool = True) -> list[TaggedSentence]:
    """Sentences from JSONL: one object per line with a list of token strings under `tokens_key` and, when
    labelled, a list of tag strings of the same length under `tags_key`. Blank lines are skipped."""
    path = Path(path)
    name = str(path)
    sentences: list[TaggedSentence] = []
    any_line = False
    for lineno, text in _lines(path):
        any_line = True
        if not text.strip():
            continue
        try:
            obj = json.loads(text.rstrip("\r\n"))  # so that an unclosed object errs at its last column
        except json.JSONDecodeError as exc:
            raise DataError(name, f"malformed JSON ({exc.msg} at column {exc.colno}); expected one JSON object "
                            f"per line like {{\"{tokens_key}\": [...], \"{tags_key}\": [...]}}",
                            line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(name, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        tokens = _string_list(obj, tokens_key, name, lineno)
        tags = None
        if labelled:
            tags = _string_list(obj, tags_key, name, lineno)
            if len(tags) != len(tokens):
                raise DataError(name, f"{len(tags)} tags for {len(tokens)} tokens; expected one tag per token",
                                line=lineno, field=tags_key)
        sentences.append(TaggedSentence(tokens, tags, lineno, [lineno] * len(tokens)))
    if not sentences:
        if not any_line:
            raise DataError(name, "file is empty")
        raise DataError(name, "file is empty (only blank lines); expected one JSON object per line")
    return sentences


def read_tagged(path: str | Path, fmt: str | None = None, token_column: int = 0, tag_column: int = -1,
                tokens_key: str = "tokens", tags_key: str = "tags", labelled: bool = True) -> list[TaggedSentence]:
    """Read CoNLL (`fmt="conll"`) or JSONL (`fmt="jsonl"`). Without `fmt`, .jsonl and .ndjson files are JSONL
    and every other file (.conll, .txt, .train, .testa, no suffix, ...) is CoNLL, since CoNLL corpora come
    with all sorts of suffixes."""
    path = Path(path)
    if fmt is None:
        fmt = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "conll"
    if fmt == "conll":
        return read_conll(path, token_column=token_column, tag_column=tag_column, labelled=labelled)
    if fmt == "jsonl":
        return read_tagged_jsonl(path, tokens_key=tokens_key, tags_key=tags_key, labelled=labelled)
    raise DataError(str(path), f"unknown format '{fmt}'; expected 'conll' or 'jsonl'")
