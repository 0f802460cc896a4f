"""Readers for labelled text files (CSV, TSV, JSONL) that check every row and explain bad input.

Every error names the file, the line and the field, and says what was expected, and is raised before
any training starts.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal_lm.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Record:
    """One example. `line` is the 1-based line in the source file, for error messages."""

    text: str
    text_pair: str | None
    label: Any
    line: int


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            str(path), f"unknown file format '{path.suffix or '(no suffix)'}'; expected one of "
            f"{', '.join(sorted(FORMATS))} (or set data.format)") from None


def _rows(path: Path, fmt: str) -> tuple[list[str] | None, list[tuple[int, dict[str, Any]]]]:
    """Yield (line number, row dict); the header for tabular files."""
    rows: list[tuple[int, dict[str, Any]]] = []
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if fmt == "jsonl":
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise DataError(str(path), f"malformed JSON ({exc.msg} at column {exc.colno}); "
                                    "expected one JSON object per line", line=lineno) from None
                if not isinstance(obj, dict):
                    raise DataError(str(path), f"expected a JSON object, got {type(obj).__name__}", line=lineno)
                rows.append((lineno, obj))
            return None, rows
        # TSV files of NLP corpora hold raw quotes (GLUE does), so TSV is read without quoting rules.
        if fmt == "tsv":
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(fh)
        csv.field_size_limit(sys.maxsize)
        header: list[str] | None = None
        lineno = 0
        try:
            for fields in reader:
                start, lineno = lineno + 1, reader.line_num  # a quoted field may span lines
                if header is None:
                    header = [h.strip() for h in fields]
                    if not any(header):
                        raise DataError(str(path), "empty header line; expected column names", line=lineno)
                    twice = sorted({h for h in header if header.count(h) > 1})
                    if twice:
                        raise DataError(str(path), f"duplicate column name(s) {', '.join(map(repr, twice))} in the "
                                        "header; expected each column named once", line=lineno)
                    continue
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != len(header):
                    if lineno > start and fmt == "csv":
                        raise DataError(str(path), f"a quoted field opened on line {start} runs on to line {lineno}: "
                                        "an unclosed quote? (expected a closing \" before the end of the row)",
                                        line=start)
                    raise DataError(str(path), f"expected {len(header)} fields ({', '.join(header)}), "
                                    f"found {len(fields)}", line=lineno)
                rows.append((start, dict(zip(header, fields, strict=True))))
        except csv.Error as exc:
            raise DataError(str(path), f"malformed {fmt.upper()}: {exc}", line=reader.line_num) from None
        return header, rows


def read_records(path: str | Path, fmt: str | None = None, text_column: str = "text",
                 text_pair_column: str | None = "text_pair", label_column: str | None = "label",
                 pair_required: bool = False) -> list[Record]:
    """Read and check a labelled text file.

    Args:
        path: the file.
        fmt: "csv", "tsv" or "jsonl"; taken from the suffix when None.
        text_column: column with the text.
        text_pair_column: column with the second text; used when present in the file (required when
            `pair_required`).
        label_column: column with the label; None for unlabelled prediction input.

    Returns:
        The records, in file order.

    Raises:
        DataError: missing or empty file, unknown format, missing column, empty text or label, malformed line.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.is_dir():
        raise DataError(str(path), "is a folder; expected a .csv, .tsv or .jsonl file")
    fmt = detect_format(path, fmt)
    try:
        header, rows = _rows(path, fmt)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except OSError as exc:  # unreadable: permissions, a device, a vanished network file
        raise DataError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(str(path), "no examples found; expected a header line and at least one row"
                        if fmt != "jsonl" else "no examples found; expected one JSON object per line")
    use_pair = text_pair_column is not None and (
        pair_required or (text_pair_column in header if header is not None else text_pair_column in rows[0][1]))
    needed = [c for c in (text_column, text_pair_column if use_pair else None, label_column) if c]
    if header is not None:
        for col in needed:
            if col not in header:
                raise DataError(str(path), f"column '{col}' not found; the header has: {', '.join(header)}. "
                                f"Set data.text_column / data.label_column to the right names.", line=1, field=col)
    records = []
    for lineno, row in rows:
        for col in needed:
            if col not in row:
                raise DataError(str(path), f"missing field; the object has: {', '.join(row)}", line=lineno, field=col)
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(str(path), "empty text; expected a non-empty string", line=lineno, field=text_column)
        if "\x00" in text:
            raise DataError(str(path), "a NUL byte in the text (binary data?); expected plain text", line=lineno,
                            field=text_column)
        pair = None
        if use_pair:
            pair = row[text_pair_column]
            if not isinstance(pair, str) or not pair.strip():
                raise DataError(str(path), "empty text; expected a non-empty string", line=lineno,
                                field=text_pair_column)
        label = None
        if label_column:
            label = row[label_column]
            if isinstance(label, str):
                label = label.strip()
            if label is None or label == "" or isinstance(label, (dict, list, float)) and not _int_like(label):
                raise DataError(str(path), f"bad label {label!r}; expected a string or an integer", line=lineno,
                                field=label_column)
            label = _canonical(label)
            if fmt != "jsonl" and label in MISSING:
                raise DataError(str(path), f"label {label!r} looks like a missing value (as pandas writes one); "
                                "expected a class name", line=lineno, field=label_column)
        records.append(Record(text.strip(), pair.strip() if pair else None, label, lineno))
    return records


# What a spreadsheet or pandas writes for a missing cell; never a class anyone means.
MISSING = {"nan", "NaN", "NULL", "null", "#N/A"}


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """Name the line of the first undecodable byte, and say when the file is UTF-16 rather than broken."""
    with path.open("rb") as fh:
        if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return DataError(str(path), "UTF-16 text; expected UTF-8 (save the file as UTF-8)")
        fh.seek(0)
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(str(path), f"not UTF-8 text ({bad.reason}: byte 0x{raw[bad.start]:02x} at column "
                                 f"{bad.start + 1}); expected UTF-8 (a latin-1 file converts with: "
                                 "iconv -f latin1 -t utf-8)", line=lineno)
    return DataError(str(path), f"not UTF-8 text ({exc.reason}); expected UTF-8")


def _int_like(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


def _canonical(label: Any) -> str:
    """Labels compare as strings, so 1 in JSONL and "1" in TSV are the same class."""
    if isinstance(label, bool):
        return str(label).lower()
    if isinstance(label, float):
        return str(int(label))
    return str(label)


def label_vocabulary(records: list[Record]) -> list[str]:
    """The label set of the training data, sorted numerically when all labels are integers."""
    labels = {r.label for r in records}
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def check_labels(records: list[Record], labels: list[str], path: str, column: str) -> None:
    """Raise DataError at the first label that training never saw."""
    known = set(labels)
    for r in records:
        if r.label not in known:
            raise DataError(str(path), f"label {r.label!r} never appears in the training data "
                            f"(known labels: {', '.join(labels)})", line=r.line, field=column)


def read_lines(path: str | Path) -> list[str]:
    """Plain text, one example per line, surrounding whitespace stripped, blank lines skipped.

    Raises:
        DataError: the file is missing, not UTF-8 (the line is named), or has no text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found" if not path.exists() else "not a file")
    lines = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(str(path), "not UTF-8 text", line=lineno) from None
            if line:
                lines.append(line)
    if not lines:
        raise DataError(str(path), "no text found; expected one sentence per line")
    return lines
