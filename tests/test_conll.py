"""Token-level readers: CoNLL column files and JSONL token lists, and their errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frugal_lm.data.conll import TaggedSentence, read_conll, read_tagged, read_tagged_jsonl
from frugal_lm.errors import DataError

SLICE = Path(__file__).parent / "data" / "conll_train_200.txt"  # first 200 sentences of CoNLL-2003 eng.train


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


# --- CoNLL --------------------------------------------------------------------------------------------------

def test_conll2003_slice():
    sents = read_conll(SLICE)
    raw = SLICE.read_text(encoding="utf-8").splitlines()
    token_lines = [i for i, line in enumerate(raw, start=1) if line.strip() and not line.startswith("-DOCSTART-")]
    assert len(sents) == 200
    assert [n for s in sents for n in s.lines] == token_lines  # every token line, in order, none else
    assert all("-DOCSTART-" not in s.tokens for s in sents)
    first = sents[0]
    assert first.tokens[:3] == ["EU", "rejects", "German"]
    assert first.tags[:3] == ["I-ORG", "O", "I-MISC"]
    assert first.line == first.lines[0] == 3  # after "-DOCSTART- -X- O O" and a blank line
    for s in sents:
        assert len(s.tokens) == len(s.tags) == len(s.lines) > 0 and s.line == s.lines[0]
        assert s.lines == list(range(s.line, s.line + len(s.tokens)))
        # Each token's fields, read back from its own line: the token is the first column, the tag the last.
        for tok, tag, n in zip(s.tokens, s.tags, s.lines, strict=True):
            assert raw[n - 1].split()[0] == tok and raw[n - 1].split()[-1] == tag


def test_tabs_spaces_and_line_endings_read_the_same(tmp_path):
    spaces = write(tmp_path / "a.conll", "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n")
    tabs = write(tmp_path / "b.tsv", "-DOCSTART-\t-X-\tO\tO\n\nEU\tNNP\tB-ORG\nrejects\tVBZ\tO\n\nPeter\tNNP\tB-PER\n")
    mixed = write(tmp_path / "c.txt", "-DOCSTART- -X- O O\r\n\r\nEU \t NNP  B-ORG\r\nrejects\tVBZ O  \r\n"
                  " \t \r\nPeter NNP\tB-PER")  # CRLF, runs of blanks, whitespace-only separator, no final newline
    got = [[(s.tokens, s.tags, s.lines) for s in read_conll(p)] for p in (spaces, tabs, mixed)]
    assert got[0] == got[1] == got[2] == [(["EU", "rejects"], ["B-ORG", "O"], [3, 4]), (["Peter"], ["B-PER"], [6])]


def test_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path / "bom.conll", "\ufeffEU B-ORG\n".encode())
    assert read_conll(path)[0].tokens == ["EU"]


def test_docstart_without_blank_line_ends_the_sentence(tmp_path):
    path = write(tmp_path / "d.conll", "a O\n-DOCSTART- O\nb O\n\n\n\nc O\n")
    assert [(s.tokens, s.line) for s in read_conll(path)] == [(["a"], 1), (["b"], 3), (["c"], 7)]


def test_column_selection(tmp_path):
    path = write(tmp_path / "cols.conll", "EU NNP I-NP B-ORG\nrejects VBZ I-VP O\n")
    assert read_conll(path, tag_column=1)[0].tags == ["NNP", "VBZ"]
    assert read_conll(path, tag_column=-2)[0].tags == ["I-NP", "I-VP"]
    assert read_conll(path, tag_column=3)[0].tags == ["B-ORG", "O"]
    (s,) = read_conll(path, token_column=1, tag_column=0)
    assert (s.tokens, s.tags) == (["NNP", "VBZ"], ["EU", "rejects"])


def test_unlabelled(tmp_path):
    one = write(tmp_path / "one.txt", "EU\nrejects\n\nPeter\n")
    assert [(s.tokens, s.tags) for s in read_conll(one, labelled=False)] == [(["EU", "rejects"], None),
                                                                             (["Peter"], None)]
    four = write(tmp_path / "four.conll", "EU NNP I-NP B-ORG\n")
    assert read_conll(four, labelled=False) == [TaggedSentence(["EU"], None, 1, [1])]


@pytest.mark.parametrize("text, kwargs, line, message", [
    ("a NN O\nb NN O\n\nc NN O\nd O\n", {}, 5, "expected 3 columns (as on line 1), found 2"),
    ("\n-DOCSTART- -X- O O\n\na NN I-NP O\nb NN I-NP O\nc O\n", {}, 6, "expected 4 columns (as on line 4), found 2"),
    ("\na NN O\n", {"tag_column": 3}, 2, "tag column 3 is out of range: the file has 3 columns (as on this line); "
     "expected an index from -3 to 2"),
    ("a NN O\n", {"tag_column": -4}, 1, "tag column -4 is out of range: the file has 3 columns"),
    ("a NN O\n", {"token_column": 5}, 1, "token column 5 is out of range: the file has 3 columns"),
    ("a\nb\n", {}, 1, "the token and the tag column are both column 0 of 1; expected a labelled file with at "
     "least 2 columns"),
    ("a O\nb O\n", {"tag_column": 0}, 1, "the token and the tag column are both column 0 of 2"),
    ("a\n", {"labelled": False, "token_column": 1}, 1, "token column 1 is out of range: the file has 1 column "),
])
def test_conll_errors_name_the_line(tmp_path, text, kwargs, line, message):
    path = write(tmp_path / "bad.conll", text)
    assert error(read_conll, path, **kwargs).startswith(f"{path}:{line}: {message}")


def test_conll_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "latin1.conll", "a O\n\nb O\nM\u00fcnchen B-LOC\n".encode("latin-1"))
    assert error(read_conll, path) == (f"{path}:4: not valid UTF-8 (byte 0xfc at column 2); "
                                       "expected a UTF-8 text file")


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    ("\n  \n\t\n", "file is empty (only blank lines); expected one token per line"),
    ("-DOCSTART- -X- O O\n\n-DOCSTART- -X- O O\n", "no sentences found (only -DOCSTART- lines); expected one token "
     "per line with its columns separated by spaces or tabs, and a blank line between sentences"),
])
def test_conll_files_without_sentences(tmp_path, text, message):
    path = write(tmp_path / "x.conll", text)
    assert error(read_conll, path).startswith(f"{path}: {message}")


def test_missing_file_and_folder(tmp_path):
    for reader in (read_conll, read_tagged_jsonl, read_tagged):
        assert error(reader, tmp_path / "nope.conll") == f"{tmp_path / 'nope.conll'}: file not found; " \
            "expected a path to a data file"
        assert error(reader, tmp_path) == f"{tmp_path}: is a folder; expected a data file"


# --- JSONL --------------------------------------------------------------------------------------------------

def test_jsonl(tmp_path):
    rows = [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "id": 1}, {"tokens": ["Peter"], "tags": ["B-PER"]}]
    path = write(tmp_path / "a.jsonl", json.dumps(rows[0]) + "\n\n  \n" + json.dumps(rows[1]))
    assert read_tagged_jsonl(path) == [TaggedSentence(["EU", "rejects"], ["B-ORG", "O"], 1, [1, 1]),
                                       TaggedSentence(["Peter"], ["B-PER"], 4, [4])]
    # Unlabelled: tags are neither needed nor read.
    bare = write(tmp_path / "b.jsonl", '{"tokens": ["x"]}\n{"tokens": ["y"], "tags": 5}\n')
    assert [(s.tokens, s.tags) for s in read_tagged_jsonl(bare, labelled=False)] == [(["x"], None), (["y"], None)]


def test_jsonl_custom_keys(tmp_path):
    path = write(tmp_path / "k.jsonl", '{"words": ["a", "b"], "ner": ["O", "B-LOC"]}\n')
    (s,) = read_tagged_jsonl(path, tokens_key="words", tags_key="ner")
    assert (s.tokens, s.tags) == (["a", "b"], ["O", "B-LOC"])


@pytest.mark.parametrize("line2, field, message", [
    ('{"tokens": ["a"], "tags": ["O"]', None, "malformed JSON (Expecting ',' delimiter at column 32); expected one "
     'JSON object per line like {"tokens": [...], "tags": [...]}'),
    ('["a"]', None, "expected a JSON object, got list"),
    ('{"tags": ["O"], "text": "a"}', "tokens", "missing key 'tokens'; expected a list of strings under it "
     "(keys found: tags, text)"),
    ('{"tokens": ["a"]}', "tags", "missing key 'tags'; expected a list of strings under it (keys found: tokens)"),
    ('{"tokens": "a b", "tags": ["O", "O"]}', "tokens", "expected a list of strings, got str"),
    ('{"tokens": ["a", 7], "tags": ["O", "O"]}', "tokens", "item 1 is int 7; expected a string"),
    ('{"tokens": ["a"], "tags": [null]}', "tags", "item 0 is NoneType None; expected a string"),
    ('{"tokens": [], "tags": []}', "tokens", "empty list; expected at least one token"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}', "tags", "1 tags for 2 tokens; expected one tag per token"),
])
def test_jsonl_errors_name_line_and_field(tmp_path, line2, field, message):
    path = write(tmp_path / "bad.jsonl", '{"tokens": ["ok"], "tags": ["O"]}\n' + line2 + "\n")
    where = f"{path}:2" + (f" (field '{field}')" if field else "")
    assert error(read_tagged_jsonl, path) == f"{where}: {message}"


@pytest.mark.parametrize("text, message", [
    (b"", "file is empty"),
    (b"\n \n", "file is empty (only blank lines); expected one JSON object per line"),
])
def test_jsonl_empty(tmp_path, text, message):
    path = write(tmp_path / "e.jsonl", text)
    assert error(read_tagged_jsonl, path) == f"{path}: {message}"


def test_jsonl_not_utf8(tmp_path):
    path = write(tmp_path / "l.jsonl", b'{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["\xe9"], "tags": ["O"]}\n')
    assert error(read_tagged_jsonl, path) == (f"{path}:2: not valid UTF-8 (byte 0xe9 at column 14); "
                                              "expected a UTF-8 text file")


# --- format by suffix ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.conll", "conll"), ("a.txt", "conll"), ("eng.train", "conll"),
    ("eng.testa", "conll"), ("noext", "conll"), ("a.json", "conll"),
])
def test_read_tagged_picks_format_by_suffix(tmp_path, name, fmt):
    text = '{"tokens": ["a"], "tags": ["O"]}\n' if fmt == "jsonl" else "a NN O\n"
    (s,) = read_tagged(write(tmp_path / name, text))
    assert (s.tokens, s.tags) == (["a"], ["O"])


def test_read_tagged_explicit_format_and_options(tmp_path):
    path = write(tmp_path / "data.txt", '{"w": ["a"], "t": ["B-X"]}\n')
    (s,) = read_tagged(path, fmt="jsonl", tokens_key="w", tags_key="t")
    assert (s.tokens, s.tags) == (["a"], ["B-X"])
    conll = write(tmp_path / "data.jsonl", "a NN B-X\n")
    (s,) = read_tagged(conll, fmt="conll", tag_column=1)
    assert s.tags == ["NN"]
    assert read_tagged(conll, fmt="conll", labelled=False)[0].tags is None
    assert error(read_tagged, path, fmt="csv") == f"{path}: unknown format 'csv'; expected 'conll' or 'jsonl'"
