"""N-gram models: interpolated modified Kneser-Ney against hand arithmetic and a brute-force reference,
ARPA I/O, robustness on tiny corpora, OOVs, chunked counting and the ``frugal ngram`` CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from frugal_lm.cli_ngram import register
from frugal_lm.errors import DataError, FrugalError
from frugal_lm.lm.ngram import (
    NgramCounts,
    NgramModel,
    count_ngrams,
    estimate,
    kn_discounts,
    train,
)

DATA = Path(__file__).parent / "data"
PTB50 = DATA / "ptb_50.txt"  # first 50 lines of PTB train (Mikolov split)

# Toy corpus for the hand computations below.
# Padded: <s> a b c </s> / <s> a b </s> / <s> b c a </s> / <s> c b </s>
TOY = ["a b c", "a b", "b c a", "c b"]


def lg(x: float) -> float:
    return math.log10(x)


def _write(tmp_path: Path, lines: list[str], name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _model(lines: list[str], order: int, **kw) -> NgramModel:
    return estimate(count_ngrams(lines, order), **kw)


# ----------------------------------------------------------------------------------------------------
# (1) probabilities by hand


def test_discounts_follow_chen_goodman_and_fall_back():
    # t1..t4 = 10, 5, 3, 2: Y = 10/(10+2*5) = 0.5
    d, fell_back = kn_discounts({1: 10, 2: 5, 3: 3, 4: 2})
    assert not fell_back
    assert d == pytest.approx((1 - 2 * 0.5 * 5 / 10, 2 - 3 * 0.5 * 3 / 5, 3 - 4 * 0.5 * 2 / 3))
    assert d == pytest.approx((0.5, 1.1, 1.6666667))
    # a zero count-of-count (t3 = 0, or t4 = 0 which would make D3+ = 3) gives KenLM's fallback (0.5, 1, 1.5)
    assert kn_discounts({1: 10, 2: 5, 3: 0, 4: 2}) == ((0.5, 1.0, 1.5), True)
    assert kn_discounts({1: 10, 2: 5, 3: 3}) == ((0.5, 1.0, 1.5), True)
    assert kn_discounts({}) == ((0.5, 1.0, 1.5), True)
    # D2 = 2 - 3*Y*t3/t2 = 2 - 3*(1/3)*100 < 0 when t3 >> t2: out of range, falls back
    assert kn_discounts({1: 1, 2: 1, 3: 100, 4: 1}) == ((0.5, 1.0, 1.5), True)


def test_bigram_by_hand():
    m = _model(TOY, 2)
    # Bigram (top order) raw counts: <s> a 2, a b 2, b c 2, b </s> 2, and 1 each: c </s>, <s> b, c a,
    # a </s>, <s> c, c b -> count-of-counts t1=6, t2=4, t3=0: the estimate is undefined, fallback
    # D = 0.5, 1, 1.5. Unigram adjusted (continuation) counts: a {<s>,c}=2, b {a,<s>,c}=3, c {b,<s>}=2,
    # </s> {c,b,a}=3 -> t1=0: fallback too.
    assert m.stats["discount_fallback"] == [True, True]
    assert m.stats["discounts"] == [[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]]
    assert m.counts == [6, 10]  # <unk> <s> </s> a b c; ten bigram types
    # Unigrams: sum of adjusted counts 2+3+2+3 = 10; gamma = (D2*2 + D3*2)/10 = (2+3)/10 = 0.5;
    # uniform over V = {a, b, c, </s>, <unk>} = 5 words.
    p_a, p_b, p_c = 1 / 10 + 0.5 / 5, 1.5 / 10 + 0.5 / 5, 1 / 10 + 0.5 / 5
    p_eos, p_unk = 1.5 / 10 + 0.5 / 5, 0.5 / 5
    assert (p_a, p_b, p_c, p_eos, p_unk) == pytest.approx((0.2, 0.25, 0.2, 0.25, 0.1))
    for w, p in [("a", p_a), ("b", p_b), ("c", p_c), ("</s>", p_eos), ("<unk>", p_unk), ("zzz", p_unk)]:
        assert m.logprob(w) == pytest.approx(lg(p), abs=1e-6)
    # Context a: a b (2), a </s> (1); den 3; gamma = (D2 + D1)/3 = 0.5
    assert m.logprob("b", ["a"]) == pytest.approx(lg((2 - 1) / 3 + 0.5 * p_b), abs=1e-6)
    assert m.logprob("</s>", ["a"]) == pytest.approx(lg((1 - 0.5) / 3 + 0.5 * p_eos), abs=1e-6)
    assert m.logprob("c", ["a"]) == pytest.approx(lg(0.5 * p_c), abs=1e-6)  # unseen: backoff
    # Context <s>: <s> a (2), <s> b (1), <s> c (1); den 4; gamma = (1 + 0.5 + 0.5)/4 = 0.5
    assert m.logprob("a", ["<s>"]) == pytest.approx(lg(1 / 4 + 0.5 * p_a), abs=1e-6)
    # Context c: c </s>, c a, c b (1 each); den 3; gamma = 1.5/3
    assert m.logprob("a", ["c"]) == pytest.approx(lg(0.5 / 3 + 0.5 * p_a), abs=1e-6)
    # Sentence "a b c": p(a|<s>) p(b|a) p(c|b) p(</s>|c); context b: b c (2), b </s> (2); den 4; gamma 0.5
    expected = lg((1 / 4 + 0.5 * p_a) * (1 / 3 + 0.5 * p_b) * (1 / 4 + 0.5 * p_c) * (0.5 / 3 + 0.5 * p_eos))
    assert m.score("a b c") == pytest.approx(expected, abs=1e-6)
    assert m.perplexity("a b c") == pytest.approx(10 ** (-expected / 4), rel=1e-6)
    # ARPA backoffs are the gammas; <s> gets -99
    assert m._bow[1][m._idx[1][(m._index["a"],)]] == pytest.approx(lg(0.5), abs=1e-7)
    assert m.logprob("<s>") == -99.0


def test_trigram_by_hand():
    m = _model(TOY, 3)
    # Trigram raw counts: <s> a b 2; a b c, b c </s>, a b </s>, <s> b c, b c a, c a </s>, <s> c b,
    # c b </s> 1 each. Bigram adjusted counts: <s>-initial keep raw counts (<s> a 2, <s> b 1, <s> c 1);
    # the others count distinct left words among trigrams: a b {<s>}=1, b c {a,<s>}=2, c </s> {b}=1,
    # b </s> {a,c}=2, c a {b}=1, a </s> {c}=1, c b {<s>}=1. Unigrams as in the bigram model.
    # Every order falls back to D = 0.5, 1, 1.5.
    assert m.stats["discount_fallback"] == [True, True, True]
    assert m.counts == [6, 10, 9]
    p_a, p_b, p_c, p_eos = 0.2, 0.25, 0.2, 0.25  # unigrams, as in test_bigram_by_hand
    # bigram level, from adjusted counts
    p_a_s = (2 - 1) / 4 + (1 + 0.5 + 0.5) / 4 * p_a  # context <s>: a 2, b 1, c 1
    p_b_a = (1 - 0.5) / 2 + (0.5 + 0.5) / 2 * p_b  # context a: b 1, </s> 1
    p_c_b = (2 - 1) / 4 + (1 + 1) / 4 * p_c  # context b: c 2, </s> 2
    p_eos_c = (1 - 0.5) / 3 + 1.5 / 3 * p_eos  # context c: </s> 1, a 1, b 1
    p_a_b = (1 + 1) / 4 * p_a  # unseen bigram b a
    assert m.logprob("a", ["<s>"]) == pytest.approx(lg(p_a_s), abs=1e-6)
    assert m.logprob("b", ["a"]) == pytest.approx(lg(p_b_a), abs=1e-6)
    assert m.logprob("a", ["b"]) == pytest.approx(lg(p_a_b), abs=1e-6)
    # trigram level, raw counts
    p_b_sa = (2 - 1) / 2 + 1 / 2 * p_b_a  # context <s> a: b 2
    p_c_ab = (1 - 0.5) / 2 + (0.5 + 0.5) / 2 * p_c_b  # context a b: c 1, </s> 1
    p_eos_bc = (1 - 0.5) / 2 + (0.5 + 0.5) / 2 * p_eos_c  # context b c: </s> 1, a 1
    assert m.logprob("b", ["<s>", "a"]) == pytest.approx(lg(p_b_sa), abs=1e-6)
    assert m.logprob("c", ["a", "b"]) == pytest.approx(lg(p_c_ab), abs=1e-6)
    # unseen context "b b": no backoff weight, straight to p(a|b); longer contexts are truncated to 2 words
    assert m.logprob("a", ["b", "b"]) == pytest.approx(lg(p_a_b), abs=1e-6)
    assert m.logprob("a", ["x", "y", "b", "b"]) == pytest.approx(lg(p_a_b), abs=1e-6)
    # unseen trigram a b a in seen context a b: gamma(a b) * p(a|b)
    assert m.logprob("a", ["a", "b"]) == pytest.approx(lg(0.5 * p_a_b), abs=1e-6)
    expected = lg(p_a_s * p_b_sa * p_c_ab * p_eos_bc)
    assert m.score("a b c") == pytest.approx(expected, abs=1e-6)
    scores = list(m.full_scores("a b c"))
    assert [length for _, length, _ in scores] == [2, 3, 3, 3]
    assert sum(s for s, _, _ in scores) == pytest.approx(expected, abs=1e-6)


def _reference_kn(sentences: list[str], order: int):
    """Textbook interpolated modified KN (KenLM's conventions), slow and direct; returns p(w | history)."""
    padded = [["<s>", *s.split(), "</s>"] for s in sentences if s.split()]
    raw: Counter = Counter()
    for s in padded:
        for n in range(1, order + 1):
            for i in range(len(s) - n + 1):
                raw[tuple(s[i:i + n])] += 1
    left: dict[tuple, set] = {}
    for g in raw:
        if len(g) > 1:
            left.setdefault(g[1:], set()).add(g[0])
    adj = {g: (c if len(g) == order or g[0] == "<s>" else len(left.get(g, ()))) for g, c in raw.items()}
    adj[("<s>",)] = 0
    vocab = sorted({w for s in padded for w in s} | {"<unk>"})
    disc = {}
    for n in range(1, order + 1):
        t = Counter(c for g, c in adj.items() if len(g) == n)
        disc[n] = kn_discounts(t)[0]

    def d(n: int, c: int) -> float:
        return 0.0 if c == 0 else disc[n][min(c, 3) - 1]

    children: dict[tuple, list] = {}
    for g, c in adj.items():
        children.setdefault(g[:-1], []).append(c)

    def p(w: str, h: tuple) -> float:
        n = len(h) + 1
        if n == 1:
            kids = children[()]
            den = sum(kids)
            gamma = sum(d(1, c) for c in kids) / den
            c = adj.get((w,), 0)
            return (c - d(1, c)) / den + gamma / (len(vocab) - 1)
        if h not in children:
            return p(w, h[1:])
        kids = children[h]
        den = sum(kids)
        gamma = sum(d(n, c) for c in kids) / den
        c = adj.get(h + (w,), 0)
        return (c - d(n, c)) / den + gamma * p(w, h[1:])

    return p, vocab


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_bruteforce_reference_on_ptb_slice(order):
    lines = PTB50.read_text().splitlines()
    m = _model(lines, order)
    ref, vocab = _reference_kn(lines, order)
    assert sorted(m.vocab) == vocab
    assert not any(m.stats["discount_fallback"][:2])  # real text: the Chen-Goodman estimate, not the fallback
    words = lines[3].split()
    histories = [("<s>",), ("<s>", words[0]), tuple(words[:3]), ("the", "zzz", "of"), ("n't", "<unk>", "the")]
    for h in histories:
        h = h[len(h) - (order - 1):] if order > 1 else ()
        known = tuple(w if w in vocab else "<unk>" for w in h)  # an OOV in the history is <unk> (seen in PTB)
        for w in vocab[::7] + ["</s>", "<unk>", "the"]:
            if w != "<s>":
                assert m.logprob(w, h) == pytest.approx(math.log10(ref(w, known)), abs=2e-7), (w, h)


# ----------------------------------------------------------------------------------------------------
# (2) distributions sum to one


def _mass(m: NgramModel, context: list[str]) -> float:
    return sum(10 ** m.logprob(w, context) for w in m.vocab if w != "<s>")


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_every_context_sums_to_one(order):
    m = _model(PTB50.read_text().splitlines(), order)
    contexts = [[], ["<s>"], ["<s>", "pierre"], ["pierre", "<unk>", "n"], ["the", "company"], ["of", "the"],
                ["zzz", "qqq"], ["the", "zzz"], ["<s>", "zzz", "said"], ["said", "</s>"],
                ["a", "b", "c", "d"]]
    for ctx in contexts:
        assert _mass(m, ctx) == pytest.approx(1.0, abs=1e-6), ctx


def test_pruned_model_still_sums_to_one():
    lines = PTB50.read_text().splitlines()
    full = _model(lines, 3)
    m = _model(lines, 3, prune=[0, 1, 1])
    assert m.counts[0] == full.counts[0] and m.counts[1] < full.counts[1] and m.counts[2] < full.counts[2]
    for ctx in [["<s>"], ["<s>", "pierre"], ["of", "the"], ["the", "company"], ["zzz"], ["n't", "be"]]:
        assert _mass(m, ctx) == pytest.approx(1.0, abs=1e-6), ctx
    # every entry stays reachable: each n-gram's context and suffix are in the model
    for n in (2, 3):
        for key in m._idx[n]:
            assert key[:-1] in m._idx[n - 1] and key[1:] in m._idx[n - 1]
    with pytest.raises(FrugalError, match="unigrams"):
        _model(lines, 3, prune=[1, 1])
    with pytest.raises(FrugalError, match="non-decreasing"):
        _model(lines, 3, prune=[0, 2, 1])


# ----------------------------------------------------------------------------------------------------
# (3) ARPA round trip and foreign files


def test_arpa_round_trip_is_exact(tmp_path):
    lines = PTB50.read_text().splitlines()
    m = _model(lines, 4)
    path = tmp_path / "m.arpa"
    m.save(path)
    text = path.read_text()
    assert text.startswith("\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    back = NgramModel(path)
    assert back.order == 4 and back.counts == m.counts
    for s in lines[:20] + ["unseen words here", "the the the"]:
        assert list(back.full_scores(s)) == list(m.full_scores(s))
        assert back.score(s, bos=False, eos=False) == m.score(s, bos=False, eos=False)
    for n in range(1, 5):
        for key, row in m._idx[n].items():
            other = back._idx[n][tuple(back._index[m.words[i]] for i in key)]
            assert back._lp[n][other] == m._lp[n][row]
    # writing what was read gives the same bytes
    back.save(tmp_path / "again.arpa")
    assert (tmp_path / "again.arpa").read_text() == text


KENLM_STYLE = """This file was written by hand in the style of SRILM's ngram-count.

\\data\\
ngram 1=5
ngram 2=3

\\1-grams:
-99\t<s>\t-0.30103
-0.6989700\t</s>
-0.5228787 a -0.1760913

-0.5228787\tb
-1.0\tc\t0

\\2-grams:
-0.30103\t<s> a
-0.1249387\ta b\t0.5
-0.30103 b </s>


\\end\\
"""


def test_reads_foreign_arpa(tmp_path):
    path = tmp_path / "srilm.arpa"
    path.write_text(KENLM_STYLE)
    m = NgramModel.load(path)
    assert m.order == 2 and m.counts == [6, 3]  # <unk> added, as KenLM does
    assert m.logprob("a", ["<s>"]) == pytest.approx(-0.30103)
    assert m.logprob("b", ["a"]) == pytest.approx(-0.1249387)  # a bigram backoff column is ignored
    assert m.logprob("c", ["a"]) == pytest.approx(-0.1760913 + -1.0)  # backoff(a) + p(c)
    assert m.logprob("c", ["b"]) == pytest.approx(-1.0)  # missing backoff column means 0
    assert m.logprob("zzz", ["a"]) == pytest.approx(-0.1760913 - 100)  # no <unk> in the file: -100
    scores = list(m.full_scores("a b zzz"))
    assert [(round(s, 6), n, oov) for s, n, oov in scores] == [
        (-0.30103, 2, False), (-0.124939, 2, False), (-100.0, 1, True), (-0.69897, 1, False)]
    assert m.score("a b", bos=True, eos=True) == pytest.approx(-0.30103 - 0.1249387 - 0.30103)


@pytest.mark.parametrize("text,line,message", [
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n\n\\end\\\n", 7, "ngram 1=2"),  # where the section ends
    ("\\data\\\nngram 1=1\nngram 2=1\n\n\\1-grams:\n-1\ta\n\n\\2-grams:\n-1\ta zz\n\\end\\\n", 9, "'zz'"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\nminus-one\ta\n\\end\\\n", 5, "not a number"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\ta b c d\n\\end\\\n", 5, "field"),
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\ta\n-2\ta\n\\end\\\n", 6, "duplicate"),
    ("\\data\\\nngram 1=1\nngram 2=1\n\n\\1-grams:\n-1\ta\n\\end\\\n", 7, "truncated"),
    ("\\data\\\nngram one=1\n", 2, "bad header"),
    ("just text\n", 1, "no \\\\data"),
])
def test_malformed_arpa_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        NgramModel(path)
    assert err.value.path == str(path) and err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_arpa_read_in_small_chunks(tmp_path, monkeypatch):
    from frugal_lm.lm import arpa

    monkeypatch.setattr(arpa, "_CHUNK", 3)  # parse a few lines at a time: chunk boundaries everywhere
    m = _model(PTB50.read_text().splitlines(), 3)
    m.save(tmp_path / "m.arpa")
    back = NgramModel(tmp_path / "m.arpa")
    assert back.counts == m.counts and back.score("the company said") == m.score("the company said")
    # a duplicate in a later chunk is still found and named
    path = tmp_path / "dup.arpa"
    path.write_text("\\data\\\nngram 1=5\n\n\\1-grams:\n-1\ta\n-1\tb\n-1\tc\n-1\td\n-1\ta\n\\end\\\n")
    with pytest.raises(DataError, match="duplicate 1-gram 'a'") as err:
        NgramModel(path)
    assert err.value.line == 9


def test_missing_arpa_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        NgramModel(tmp_path / "nope.arpa")


# ----------------------------------------------------------------------------------------------------
# (4) tiny corpora


@pytest.mark.parametrize("lines", [["hello"], ["a b"], ["a b", "b a"], ["x y z", "x", "z z z z"]])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_tiny_corpora_give_valid_models(tmp_path, lines, order):
    m = _model(lines, order)
    assert m.order == order
    assert m.stats["discounts"][0] == [0.5, 1.0, 1.5]  # fallback: no valid count-of-counts on so little data
    for ctx in ([], ["<s>"], lines[0].split(), ["never", "seen"]):
        assert _mass(m, ctx) == pytest.approx(1.0, abs=1e-6), ctx
    for s in lines + ["unknown words"]:
        assert all(math.isfinite(s) and s < 0 for s, _, _ in m.full_scores(s))
    m.save(tmp_path / "tiny.arpa")
    back = NgramModel(tmp_path / "tiny.arpa")
    assert [back.score(s) for s in lines] == [m.score(s) for s in lines]


# ----------------------------------------------------------------------------------------------------
# (5) OOVs, <unk>, vocabulary limit


def test_oov_scored_as_unk_and_counted():
    m = _model(TOY, 2)
    # p(<unk>) = gamma()/V = 0.5/5 (bigram toy above); after "a": gamma(a) * p(<unk>) = 0.5 * 0.1
    scores = list(m.full_scores("a zzz"))
    assert scores[1] == (pytest.approx(lg(0.5 * 0.1), abs=1e-6), 1, True)
    assert [oov for _, _, oov in scores] == [False, True, False]
    # the OOV becomes history: "zzz </s>" backs off from the unseen context <unk>
    assert scores[2][0] == pytest.approx(lg(0.25), abs=1e-6)
    total = m.score_corpus(["a zzz", "", "b c", "qq rr"])
    assert (total.sentences, total.tokens, total.oovs) == (3, 3 + 3 + 3, 3)
    assert total.log10_prob == pytest.approx(m.score("a zzz") + m.score("b c") + m.score("qq rr"))
    assert total.perplexity == pytest.approx(10 ** (-total.log10_prob / 9))
    oov_part = sum(lp for line in ["a zzz", "b c", "qq rr"] for lp, _, oov in m.full_scores(line) if oov)
    assert total.oov_log10_prob == pytest.approx(oov_part)
    assert total.perplexity_excluding_oovs == pytest.approx(10 ** (-(total.log10_prob - oov_part) / 6))


def test_literal_unk_in_corpus_is_counted_like_a_word():
    m = _model(["the <unk> sat", "a <unk> ran", "<unk> <unk>"], 2)
    # Unigram continuation counts: <unk> follows the, a, <s>, <unk> -> 4; </s> follows sat, ran, <unk> -> 3;
    # sat, ran, the, a -> 1 each. Sum 11; fallback discounts; gamma = (4 * 0.5 + 2 * 1.5) / 11;
    # uniform over <unk> </s> the sat a ran = 6 words.
    gamma = (4 * 0.5 + 2 * 1.5) / 11
    assert m.logprob("<unk>") == pytest.approx(lg((4 - 1.5) / 11 + gamma / 6), abs=1e-6)
    assert m.logprob("sat") == pytest.approx(lg((1 - 0.5) / 11 + gamma / 6), abs=1e-6)
    assert m.logprob("sat", ["<unk>"]) > m.logprob("sat")  # it has its own bigrams
    assert m.logprob("zzz", ["the"]) == m.logprob("<unk>", ["the"])


def test_vocab_size_maps_rare_words_to_unk(tmp_path):
    path = _write(tmp_path, ["a a a b b c", "a b d", "a e"])
    m = train([path], 2, vocab_size=2)
    assert sorted(m.vocab) == ["</s>", "<s>", "<unk>", "a", "b"]
    assert m.logprob("c", ["b"]) == m.logprob("<unk>", ["b"]) == m.logprob("e", ["b"])
    assert m.stats["vocab_size"] == 4  # a, b, </s>, <unk>


def test_literal_sentence_markers_are_whitespace():
    a = _model(["x <s> y </s>", "y x"], 3)
    b = _model(["x y", "y x"], 3)
    assert a.counts == b.counts and a.score("x y") == b.score("x y")


# ----------------------------------------------------------------------------------------------------
# chunked counting


def test_counting_in_chunks_equals_counting_at_once(tmp_path):
    lines = PTB50.read_text().splitlines()
    whole = estimate(count_ngrams(lines, 3))
    first = count_ngrams(lines[:20], 3)
    second = count_ngrams(reversed(lines[20:]), 3)  # a different word -> id assignment, remapped on merge
    second.save(tmp_path / "chunk2.tsv")
    merged = first.update(NgramCounts.load(tmp_path / "chunk2.tsv"))
    assert (merged.sentences, merged.tokens) == (50, sum(len(s.split()) + 1 for s in lines))
    chunked = estimate(merged)
    assert chunked.counts == whole.counts
    for s in lines[:10] + ["a new sentence"]:
        assert chunked.score(s) == pytest.approx(whole.score(s), abs=1e-9)
    with pytest.raises(FrugalError, match="order"):
        first.update(count_ngrams(lines[:2], 2))


# ----------------------------------------------------------------------------------------------------
# (6) CLI


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # keeps "ngram" a named group, as in the real CLI
        pass

    return app


def test_cli_train_writes_arpa_and_json(app, tmp_path):
    out = tmp_path / "m.arpa"
    res = CliRunner().invoke(app, ["ngram", "train", "--order", "3", "--data", str(PTB50),
                                   "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    header = [line for line in out.read_text().splitlines()[:5] if line.startswith("ngram ")]
    assert header == [f"ngram {n}={c}" for n, c in enumerate(summary["ngrams"], 1)]
    assert summary["ngrams"] == NgramModel(out).counts
    assert summary["tokens"] == sum(len(s.split()) + 1 for s in PTB50.read_text().splitlines())
    assert len(summary["discounts"]) == 3 and summary["discount_fallback"] == [False, False, False]
    res = CliRunner().invoke(app, ["ngram", "score", "--model", str(out), "--data", str(PTB50), "--json"])
    assert res.exit_code == 0, res.output
    scored = json.loads(res.output)
    expected = NgramModel(out).score_file(PTB50)
    assert scored["perplexity"] == pytest.approx(expected.perplexity) and scored["tokens"] == expected.tokens
    # several files after one --data, as in "--data FILE..."
    half = _write(tmp_path, PTB50.read_text().splitlines()[:25], "half.txt")
    rest = _write(tmp_path, PTB50.read_text().splitlines()[25:], "rest.txt")
    res = CliRunner().invoke(app, ["ngram", "train", "--order", "3", "--data", str(half), str(rest),
                                   "--output", str(tmp_path / "two.arpa"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ngrams"] == summary["ngrams"]
    assert (tmp_path / "two.arpa").read_text() == out.read_text()
    # human-readable summary with pruning and a vocabulary cut
    res = CliRunner().invoke(app, ["ngram", "train", "-n", "2", "-d", str(PTB50), "-o", str(out),
                                   "--prune", "0,1", "--vocab-size", "100"])
    assert res.exit_code == 0, res.output
    assert "2-grams" in res.output and NgramModel(out).counts[0] == 103


@pytest.mark.parametrize("case", ["missing", "empty", "order", "prune", "bad_arpa"])
def test_cli_errors_name_the_problem(app, tmp_path, case):
    empty = _write(tmp_path, ["", "  ", ""], "empty.txt")
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\ta\n-1\tb\n\\end\\\n")
    args = {
        "missing": ["train", "--order", "3", "--data", str(tmp_path / "nope.txt"), "--output", "o.arpa"],
        "empty": ["train", "--order", "3", "--data", str(empty), "--output", str(tmp_path / "o.arpa")],
        "order": ["train", "--order", "0", "--data", str(PTB50), "--output", str(tmp_path / "o.arpa")],
        "prune": ["train", "--order", "2", "--data", str(PTB50), "--output", "o.arpa", "--prune", "0,x"],
        "bad_arpa": ["score", "--model", str(bad), "--data", str(PTB50)],
    }[case]
    res = CliRunner().invoke(app, ["ngram", *args])
    assert res.exit_code != 0
    err = res.exception
    assert isinstance(err, FrugalError), repr(err)
    message = str(err)
    if case == "missing":
        assert isinstance(err, DataError) and "nope.txt" in message and "not found" in message
    elif case == "empty":
        assert isinstance(err, DataError) and "empty.txt" in message and "no words" in message
    elif case == "order":
        assert "order" in message
    elif case == "prune":
        assert "--prune" in message
    else:
        assert isinstance(err, DataError) and err.line == 7 and message.startswith(f"{bad}:7:")
    assert not (tmp_path / "o.arpa").exists()


# ----------------------------------------------------------------------------------------------------
# KenLM reads our files and agrees (skipped where the kenlm module is not installed)


def test_kenlm_reads_our_arpa_and_agrees(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lines = PTB50.read_text().splitlines()
    for order, prune in [(3, None), (4, [0, 0, 1])]:
        m = _model(lines, order, prune=prune)
        m.save(tmp_path / "m.arpa")
        k = kenlm.Model(str(tmp_path / "m.arpa"))
        assert k.order == order
        for s in lines[:10] + ["completely unseen words the of", "the <unk> said"]:
            assert k.score(s) == pytest.approx(m.score(s), abs=1e-3)
            ours = list(m.full_scores(s))
            theirs = list(k.full_scores(s))
            assert [n for _, n, _ in ours] == [n for _, n, _ in theirs]
