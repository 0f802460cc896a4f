"""Bad input, kind by kind: each gets a clear message naming the file, line and field and what was expected
(a DataError / ConfigError / ModelError, which the CLI prints as one line with exit 2), and nothing
half-written. The readers are also fuzzed with hypothesis: whatever the bytes, a reader returns records or
raises DataError, never anything else."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import sentiment_rows, write_tsv
from frugal_lm.data.conll import read_conll
from frugal_lm.data.readers import read_lines, read_records
from frugal_lm.errors import DataError

HEADER = b"text\tlabel\n"


def bad(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- readers: (file name, bytes, expected message as a regex with {f} for the file) ----------------------
READER_CASES = {
    "latin-1 bytes": ("a.tsv", HEADER + b"fine\tpos\ncaf\xe9 au lait\tneg\n",
                      r"{f}:3: not UTF-8 text \(invalid continuation byte: byte 0xe9 at column 4\)"),
    "utf-16": ("a.tsv", (HEADER + b"fine\tpos\n").decode().encode("utf-16"), r"{f}: UTF-16 text; expected UTF-8"),
    "ragged row": ("a.tsv", HEADER + b"fine\tpos\ntoo\tmany\tfields\n",
                   r"{f}:3: expected 2 fields \(text, label\), found 3"),
    "quote spanning lines": ("a.csv", b'text,label\nfine,pos\n"never closed,neg\nmore,pos\n',
                             r"{f}:3: a quoted field opened on line 3 runs on to line 4: an unclosed quote"),
    "empty file": ("a.tsv", b"", r"{f}: no examples found; expected a header line and at least one row"),
    "only a header": ("a.tsv", HEADER, r"{f}: no examples found"),
    "duplicate column names": ("a.tsv", b"text\tlabel\tlabel\nfine\tpos\tneg\n",
                               r"{f}:1: duplicate column name\(s\) 'label' in the header"),
    "NaN-like label": ("a.csv", b"text,label\nfine,pos\nhmm,nan\n",
                       r"{f}:3 \(field 'label'\): label 'nan' looks like a missing value"),
    "NaN label in JSONL": ("a.jsonl", b'{"text": "fine", "label": "pos"}\n{"text": "hmm", "label": NaN}\n',
                           r"{f}:2 \(field 'label'\): bad label nan; expected a string or an integer"),
    "binary garbage": ("a.tsv", bytes(range(256)) * 4, r"{f}:2: not UTF-8 text \(invalid start byte: byte 0x80"),
    "NUL bytes": ("a.csv", b"text,label\nfi\x00ne,pos\n", r"{f}:2 \(field 'text'\): a NUL byte in the text"),
    "malformed JSON": ("a.jsonl", b'{"text": "fine", "label": "pos"}\n{"text": "oops"\n',
                       r"{f}:2: malformed JSON \(Expecting ',' delimiter"),
    "JSON that is not an object": ("a.jsonl", b'["fine", "pos"]\n', r"{f}:1: expected a JSON object, got list"),
    "missing column": ("a.tsv", b"sentence\tlabel\nfine\tpos\n",
                       r"{f}:1 \(field 'text'\): column 'text' not found; the header has: sentence, label"),
    "empty text": ("a.tsv", HEADER + b"fine\tpos\n \tneg\n", r"{f}:3 \(field 'text'\): empty text"),
    "unknown format": ("a.xlsx", b"PK\x03\x04", r"{f}: unknown file format '.xlsx'; expected one of"),
}


@pytest.mark.parametrize("kind", list(READER_CASES))
def test_reader_explains_bad_input(kind, tmp_path):
    name, data, message = READER_CASES[kind]
    path = bad(tmp_path / name, data)
    with pytest.raises(DataError, match=message.format(f=str(path).replace(".", r"\."))):
        read_records(path)


def test_readers_accept_what_is_merely_unusual(tmp_path):
    # a UTF-8 byte-order mark (Excel), mixed line endings, stray whitespace around labels, a quoted field
    # that legitimately spans lines, and a 10 MB line
    bom = read_records(bad(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\nfine,pos\n"))
    assert [(r.text, r.label) for r in bom] == [("fine", "pos")]
    mixed = read_records(bad(tmp_path / "mixed.tsv", b"text\tlabel\r\none\tpos\r\ntwo\tneg\nthree\tpos\r\n"))
    assert [(r.text, r.label, r.line) for r in mixed] == [("one", "pos", 2), ("two", "neg", 3), ("three", "pos", 4)]
    spaces = read_records(bad(tmp_path / "spaces.tsv", HEADER + b"one\t pos\ntwo\tpos \t\n"[:-2] + b"\n"))
    assert {r.label for r in spaces} == {"pos"}
    quoted = read_records(bad(tmp_path / "quoted.csv", b'text,label\n"two\nlines",pos\nnext,neg\n'))
    assert [(r.text, r.line) for r in quoted] == [("two\nlines", 2), ("next", 4)]
    long = read_records(bad(tmp_path / "long.tsv", HEADER + b"word " * 2_000_000 + b"\tpos\n"))
    assert len(long[0].text) == 10_000_000 - 1


def test_folders_and_unreadable_files(tmp_path):
    (tmp_path / "d.tsv").mkdir()
    with pytest.raises(DataError, match=r"d\.tsv: is a folder; expected a \.csv, \.tsv or \.jsonl file"):
        read_records(tmp_path / "d.tsv")
    with pytest.raises(DataError, match=r"d\.tsv: not a file"):
        read_lines(tmp_path / "d.tsv")
    with pytest.raises(DataError, match=r"d\.tsv: is a folder"):
        read_conll(tmp_path / "d.tsv")
    # unreadable even for root: reading /proc/self/mem at offset 0 fails with EIO
    with pytest.raises(DataError, match=r"/proc/self/mem: cannot be read \(Input/output error\)"):
        read_records("/proc/self/mem", fmt="tsv")


def test_plain_text_and_conll_name_the_bad_line(tmp_path):
    path = bad(tmp_path / "a.txt", b"one\ntwo\nthr\xe9e\n")
    with pytest.raises(DataError, match=r"a\.txt:3: not UTF-8 text"):
        read_lines(path)
    path = bad(tmp_path / "a.conll", b"EU B-ORG\nrejects O\n\nGerm\xe4n B-MISC\n")
    with pytest.raises(DataError, match=r"a\.conll:4: not valid UTF-8 \(byte 0xe4 at column 5\)"):
        read_conll(path)


# -- fuzzing -------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".tsv", ".csv", ".jsonl"]))
def test_fuzz_any_bytes_give_records_or_a_data_error(tmp_path, data, suffix):
    path = bad(tmp_path / f"fuzz{suffix}", HEADER.replace(b"\t", b"," if suffix == ".csv" else b"\t") + data
               if suffix != ".jsonl" else data)
    try:
        records = read_records(path)
    except DataError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert all(r.text.strip() and r.label for r in records)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_conll_and_plain_text(tmp_path, data):
    for reader, name in ((read_conll, "f.conll"), (read_lines, "f.txt")):
        path = bad(tmp_path / name, data)
        try:
            reader(path)
        except DataError as exc:
            assert str(exc).startswith(str(path))


CELL = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"], blacklist_characters="\t\ufeff\x85"),
               min_size=1, max_size=20).filter(lambda t: t.strip() and t.strip() not in {"nan", "NaN", "NULL", "null", "#N/A"})


@FUZZ
@given(rows=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=8))
def test_fuzz_tsv_round_trip(tmp_path, rows):
    path = tmp_path / "rt.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    records = read_records(path)
    assert [(r.text, r.label) for r in records] == [(t.strip(), lab.strip()) for t, lab in rows]


# -- config and command line ---------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str]:
    """Run `frugal ARGS` in this process as the console script does; (exit status, stderr)."""
    from frugal_lm import cli as frugal_cli

    argv = sys.argv
    sys.argv = ["frugal", *map(str, args)]
    try:
        frugal_cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


@pytest.fixture
def files(tmp_path):
    return {"good": write_tsv(tmp_path / "good.tsv", sentiment_rows(8)), "run": tmp_path / "run"}


CONFIG_CASES = {
    "unknown YAML key": ("train:\n  lrr: 0.1\n", [], r"cfg\.yaml: unknown config key 'train\.lrr' \(did you mean 'lr'\?\)"),
    "unknown --set key": ("", ["--set", "train.epoch=2"], r"unknown config key 'train\.epoch' \(did you mean 'epochs'\?\)"),
    "wrong type": ("train:\n  batch_size: big\n", [], r"train\.batch_size: expected an integer, got 'big'"),
    "out of range": ("", ["--set", "train.warmup_ratio=1.5"], r"train\.warmup_ratio: must be in \[0, 1\), got 1\.5"),
    "zero batch": ("", ["--batch-size", "0"], r"train\.batch_size: must be at least 1, got 0"),
    "not a choice": ("", ["--set", "train.scheduler=step"], r"train\.scheduler: expected one of linear, cosine"),
    "invalid YAML": ("train: [1, 2\n", [], r"cfg\.yaml: not valid YAML at line 2 \(expected ',' or '\]'"),
    "YAML not a mapping": ("- 1\n- 2\n", [], r"cfg\.yaml: expected a mapping at the top level"),
}


@pytest.mark.parametrize("kind", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_exit_2(kind, capsys, tmp_path, files, tiny_encoder_dir):
    yaml_text, args, message = CONFIG_CASES[kind]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    code, err = cli(capsys, "train", cfg, "--train", files["good"], "--model", tiny_encoder_dir,
                    "--output", files["run"], *args)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not files["run"].exists()  # nothing half-written


def test_bad_models_and_runs(capsys, tmp_path, files, tiny_encoder_dir):
    base = ["train", "--train", files["good"], "--output", files["run"], "--max-steps", "1"]
    # a folder that is not a model
    (tmp_path / "notamodel").mkdir()
    code, err = cli(capsys, *base, "--model", tmp_path / "notamodel")
    assert code == 2 and "notamodel: not a model folder (no config.json)" in err
    # a model whose weights file is truncated
    broken = tmp_path / "broken"
    shutil.copytree(tiny_encoder_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = cli(capsys, *base, "--model", broken)
    assert code == 2 and "its .safetensors weights are corrupt or truncated" in err and "Traceback" not in err
    assert not files["run"].exists()
    # an existing run folder is refused unless --resume or --overwrite
    files["run"].mkdir()
    (files["run"] / "config.yaml").write_text("task: classify\n")
    code, err = cli(capsys, *base, "--model", tiny_encoder_dir)
    assert code == 2 and "a run already exists here; use --resume to continue it or --overwrite" in err
    assert (files["run"] / "config.yaml").read_text() == "task: classify\n"
    # --resume of a folder that is not a run
    code, err = cli(capsys, "train", "--resume", "--output", tmp_path / "nothing")
    assert code == 2 and "nothing: not a run folder" in err


def test_bad_arpa_file(tmp_path):
    from frugal_lm.lm.arpa import read_arpa

    path = bad(tmp_path / "lm.arpa", b"\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n")  # truncated
    with pytest.raises(DataError, match=r"lm\.arpa"):
        read_arpa(path)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, files, tiny_encoder_dir):
    """A file-size limit on the running process (RLIMIT_FSIZE, as a full disk: writes fail) once the first
    checkpoint exists: the run stops with one clear line, exit 2, the checkpoint intact, no leftovers."""
    run = files["run"]
    cmd = [sys.executable, "-m", "frugal_lm", "train", "--model", str(tiny_encoder_dir), "--train",
           str(write_tsv(tmp_path / "big.tsv", sentiment_rows(64))), "--output", str(run), "--max-steps", "100000",
           "--batch-size", "8", "--max-length", "32", "--set", "train.save_every=3", "--set", "train.log_every=50",
           "--set", "classify.method=finetune", "--quiet"]

    def child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write must fail, not kill the process

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=child,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 600  # generous: a loaded machine can take minutes to start Python and torch
    while not state.exists() and time.time() < deadline:
        time.sleep(0.01)
    assert state.exists(), "no checkpoint was ever written"
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    step = json.loads(state.read_text())["step"]
    assert last.startswith(f"error: {run}: writing failed: ")
    assert f"the checkpoint of step {step} is intact" in last and f"--resume --output {run}" in last
    assert step % 3 == 0 and not [p.name for p in run.iterdir() if p.name.startswith(".")]
    from frugal_lm.engine.checkpoint import read_state

    assert read_state(run / "checkpoint")["step"] == step  # complete and readable: --resume starts from it


def test_short_options_mean_one_thing_everywhere():
    import click
    import typer

    from frugal_lm import cli as frugal_cli

    frugal_cli._register_plugins()
    meaning: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts + param.secondary_opts if len(o) == 2):
                meaning.setdefault(short, set()).update(longs)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(frugal_cli.app))
    assert meaning["-o"] == {"--output"}
    assert {k: v for k, v in meaning.items() if len(v) > 1} == {}
