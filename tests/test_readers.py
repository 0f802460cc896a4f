"""Data readers: every kind of bad input names the file, line and field."""

from __future__ import annotations

import json

import pytest

from frugal_lm.data.readers import check_labels, label_vocabulary, read_records
from frugal_lm.errors import DataError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_csv_jsonl_read_the_same(tmp_path):
    tsv = write(tmp_path / "a.tsv", "text\tlabel\nfine day\tpos\nbad day\tneg\n")
    csv = write(tmp_path / "a.csv", 'text,label\n"fine day",pos\nbad day,neg\n')
    jsonl = write(tmp_path / "a.jsonl", '{"text": "fine day", "label": "pos"}\n\n{"text": "bad day", "label": "neg"}\n')
    got = [[(r.text, r.label) for r in read_records(p)] for p in (tsv, csv, jsonl)]
    assert got[0] == got[1] == got[2] == [("fine day", "pos"), ("bad day", "neg")]
    assert [r.line for r in read_records(jsonl)] == [1, 3]


def test_int_labels_sort_numerically_and_match_strings(tmp_path):
    jsonl = write(tmp_path / "a.jsonl", "".join(json.dumps({"text": f"t{i}", "label": i}) + "\n" for i in (10, 2, 1)))
    records = read_records(jsonl)
    assert label_vocabulary(records) == ["1", "2", "10"]
    tsv = write(tmp_path / "b.tsv", "text\tlabel\nx\t2\n")
    check_labels(read_records(tsv), label_vocabulary(records), str(tsv), "label")  # "2" == 2


def test_sentence_pairs(tmp_path):
    tsv = write(tmp_path / "p.tsv", "premise\thypothesis\tlabel\na man sleeps\tsomeone rests\tyes\n")
    (r,) = read_records(tsv, text_column="premise", text_pair_column="hypothesis")
    assert (r.text, r.text_pair, r.label) == ("a man sleeps", "someone rests", "yes")
    (r,) = read_records(tsv, text_column="premise", text_pair_column="text_pair")  # absent: single sentences
    assert r.text_pair is None


def test_glue_tsv_keeps_raw_quotes(tmp_path):
    tsv = write(tmp_path / "q.tsv", 'sentence\tlabel\nhe said " no way \t0\n')
    assert read_records(tsv, text_column="sentence")[0].text == 'he said " no way'


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("missing.tsv", None, {}, r"missing\.tsv: file not found"),
        ("data.xlsx", "x", {}, r"data\.xlsx: unknown file format '\.xlsx'; expected one of \.csv"),
        ("cols.tsv", "sentence\tlabel\nhi\t1\n", {}, r"cols\.tsv:1 \(field 'text'\): column 'text' not found; the header has: sentence, label"),
        ("empty.tsv", "text\tlabel\nhello\t1\n \t0\n", {}, r"empty\.tsv:3 \(field 'text'\): empty text"),
        ("fields.tsv", "text\tlabel\nhello\t1\nbye\t0\textra\n", {}, r"fields\.tsv:3: expected 2 fields \(text, label\), found 3"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', {}, r"bad\.jsonl:2: malformed JSON"),
        ("arr.jsonl", '["a", 1]\n', {}, r"arr\.jsonl:1: expected a JSON object, got list"),
        ("nolabel.jsonl", '{"text": "a"}\n', {}, r"nolabel\.jsonl:1 \(field 'label'\): missing field"),
        ("emptylabel.csv", "text,label\na,\n", {}, r"emptylabel\.csv:2 \(field 'label'\): bad label ''"),
        ("blank.tsv", "", {}, r"blank\.tsv: no examples found"),
        ("headonly.csv", "text,label\n", {}, r"headonly\.csv: no examples found"),
    ],
)
def test_bad_input_is_named(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(DataError, match=message):
        read_records(path, **kwargs)


def test_unseen_eval_label_is_named(tmp_path):
    train = read_records(write(tmp_path / "t.tsv", "text\tlabel\na\tpos\nb\tneg\n"))
    dev_path = write(tmp_path / "d.tsv", "text\tlabel\nc\tpos\nd\tneutral\n")
    with pytest.raises(DataError, match=r"d\.tsv:3 \(field 'label'\): label 'neutral' never appears in the training "
                                        r"data \(known labels: neg, pos\)"):
        check_labels(read_records(dev_path), label_vocabulary(train), str(dev_path), "label")
