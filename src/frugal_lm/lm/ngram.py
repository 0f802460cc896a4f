"""N-gram language models with interpolated modified Kneser-Ney smoothing, the estimate of KenLM's ``lmplz``.

Pipeline: :func:`count_ngrams` (streams text, one sentence per line) -> :func:`estimate` (adjusted counts,
discounts, interpolation) -> :class:`NgramModel` (scoring and ARPA files; defined in :mod:`frugal_lm.lm.arpa`,
re-exported here). :func:`train` runs it over files.

The estimate (Chen & Goodman 1998, section 3.5; Heafield et al. 2013):

* adjusted counts ``a(x)``: the raw count for highest-order n-grams and for n-grams that start with ``<s>``
  (nothing can precede ``<s>``); otherwise the continuation count, the number of distinct words ``v`` with
  ``v x`` observed;
* three discounts per order from the count-of-counts ``t_k`` of adjusted counts:
  ``Y = t1/(t1+2 t2)``, ``D1 = 1-2Y t2/t1``, ``D2 = 2-3Y t3/t2``, ``D3+ = 3-4Y t4/t3``;
* ``p(w|h) = (a(hw) - D(a(hw))) / sum_v a(hv) + gamma(h) p(w|h')`` with
  ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / sum_v a(hv)``; unigrams interpolate with the uniform
  distribution over the vocabulary (including ``<unk>``, excluding ``<s>``);
* the ARPA backoff of context ``h`` is ``gamma(h)``.

Words: ``<s>`` and ``</s>`` are added around every line; literal ``<s>``/``</s>`` in the text are dropped
(as ``lmplz --skip_symbols``). A literal ``<unk>`` in the text is counted as an ordinary word that *is* the
unknown-word token, so on Penn Treebank it gets its real frequency; words outside the vocabulary (or below a
``vocab_size`` cut) are mapped to it too, as are unknown words when scoring.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

from ..errors import DataError, FrugalError
from . import arpa
from .arpa import BOS, EOS, UNK, CorpusScore, NgramModel, read_lines

__all__ = ["BOS", "EOS", "UNK", "CorpusScore", "NgramCounts", "NgramModel", "count_ngrams", "estimate",
           "kn_discounts", "read_lines", "train"]

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # fixed ids of trained models (KenLM's order)
# KenLM's --discount_fallback defaults: used for an order whose count-of-counts cannot give valid discounts.
FALLBACK_DISCOUNTS: tuple[float, float, float] = (0.5, 1.0, 1.5)
# Log10 probabilities are rounded to this many decimals so that an ARPA round trip is exact.
LOG_DECIMALS = 7

_head = itemgetter(slice(None, -1))  # n-gram -> its context
_tail = itemgetter(slice(1, None))  # n-gram -> its lower-order suffix


class _GrowingIndex(dict):
    """word -> id; an unseen word gets the next id (C-level ``map(index.__getitem__, ...)`` stays fast)."""

    def __init__(self, words: list[str]):
        super().__init__((w, i) for i, w in enumerate(words))
        self.words = words

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self.words)
        self.words.append(word)
        return i


class _FixedIndex(dict):
    """word -> id over a fixed vocabulary; any other word is ``<unk>``."""

    def __missing__(self, word: str) -> int:
        return UNK_ID


@dataclass
class NgramCounts:
    """Raw counts that the estimate needs, mergeable across chunks of a corpus.

    ``counts[order]`` holds every highest-order n-gram; ``counts[n]`` for ``1 < n < order`` holds only the
    n-grams that start with ``<s>`` (all other lower-order counts are derived as continuation counts).
    ``counts[1]`` is used only when ``order == 1``. Keys are tuples of word ids into ``words``.
    """

    order: int
    words: list[str] = field(default_factory=lambda: [UNK, BOS, EOS])
    counts: list[Counter] = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0  # words plus one </s> per sentence, what perplexity is normalised by
    fixed_vocab: bool = False

    def __post_init__(self) -> None:
        if self.order < 1:
            raise FrugalError(f"n-gram order must be at least 1, got {self.order}")
        if not self.counts:
            self.counts = [Counter() for _ in range(self.order + 1)]

    def index(self) -> dict[str, int]:
        """A word -> id mapping that extends ``words`` for new words (unless the vocabulary is fixed)."""
        if self.fixed_vocab:
            return _FixedIndex((w, i) for i, w in enumerate(self.words))
        return _GrowingIndex(self.words)

    def update(self, other: NgramCounts) -> NgramCounts:
        """Add ``other``'s counts into these (a ``Counter``-style merge of two chunks); returns self.

        Raises:
            FrugalError: the orders differ.
        """
        if other.order != self.order:
            raise FrugalError(f"cannot merge counts of order {other.order} into order {self.order}")
        index = self.index()
        remap = [index[w] for w in other.words]
        identity = remap == list(range(len(remap)))
        for mine, theirs in zip(self.counts, other.counts, strict=True):
            if identity:
                mine.update(theirs)
            else:
                for key, c in theirs.items():
                    mine[tuple(remap[i] for i in key)] += c
        self.sentences += other.sentences
        self.tokens += other.tokens
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Spill to a TSV file, atomically: two header lines, then ``n<TAB>count<TAB>w1 w2 ...`` lines."""
        from ..io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"#order\t{self.order}\t{self.sentences}\t{self.tokens}\t{int(self.fixed_vocab)}\n")
            f.write("#words\t" + " ".join(self.words) + "\n")
            words = self.words
            for n, cnt in enumerate(self.counts):
                f.writelines(f"{n}\t{c}\t{' '.join([words[i] for i in k])}\n" for k, c in cnt.items())

    @classmethod
    def load(cls, path: str | os.PathLike) -> NgramCounts:
        """Read counts written by :meth:`save`.

        Raises:
            DataError: the file is missing or malformed (names file and line).
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(str(path), "file not found")
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            try:
                _, order, sentences, tokens, fixed = next(f).rstrip("\n").split("\t")
                words = next(f).rstrip("\n").split("\t", 1)[1].split(" ")
                self = cls(int(order), words=words, sentences=int(sentences), tokens=int(tokens),
                           fixed_vocab=bool(int(fixed)))
            except (StopIteration, ValueError, IndexError, FrugalError) as e:
                raise DataError(str(path), f"not an n-gram counts file ({e})", line=1) from None
            index = {w: i for i, w in enumerate(words)}
            for lineno, line in enumerate(f, 3):
                try:
                    n, c, text = line.rstrip("\n").split("\t")
                    self.counts[int(n)][tuple(index[w] for w in text.split(" "))] += int(c)
                except (ValueError, KeyError, IndexError) as e:
                    raise DataError(str(path), f"bad counts line ({e!r})", line=lineno) from None
        return self


def count_ngrams(lines: Iterable[str], order: int, vocab: Sequence[str] | None = None,
                 into: NgramCounts | None = None) -> NgramCounts:
    """Count the n-grams of whitespace-tokenised sentences, one per line; blank lines are skipped.

    Memory grows with the number of distinct n-grams, never with the corpus: ``lines`` is streamed. For a
    corpus larger than RAM, count chunks separately (in other processes if wanted), :meth:`NgramCounts.save`
    them to disk, then ``load`` and :meth:`NgramCounts.update` them into one before :func:`estimate`.

    Args:
        lines: sentences (an open file works).
        order: highest n-gram order, >= 1.
        vocab: a fixed vocabulary; other words become ``<unk>``. ``None`` grows it from the text. Chunks
            that will be merged need not share one (ids are remapped on merge) unless a cut is wanted.
        into: add to these counts instead of starting new ones (their vocabulary is used, not ``vocab``).

    Returns:
        The counts (``into`` if given).
    """
    if into is None:
        into = NgramCounts(order)
        if vocab is not None:
            into.words = [UNK, BOS, EOS] + [w for w in dict.fromkeys(vocab) if w not in (UNK, BOS, EOS)]
            into.fixed_vocab = True
    elif into.order != order:
        raise FrugalError(f"cannot count order {order} into counts of order {into.order}")
    with arpa.paused_gc():
        return _count(lines, order, into)


def _count(lines: Iterable[str], order: int, into: NgramCounts) -> NgramCounts:
    get = into.index().__getitem__
    top = into.counts[order]
    starts = [(n, into.counts[n]) for n in range(2, order)]
    sentences = tokens = 0
    for line in lines:
        toks = line.split()
        if not toks:
            continue
        mid = list(map(get, toks))
        if BOS_ID in mid or EOS_ID in mid:  # literal <s> / </s> are treated as whitespace
            mid = [i for i in mid if i != BOS_ID and i != EOS_ID]
        ids = [BOS_ID, *mid, EOS_ID]
        sentences += 1
        tokens += len(ids) - 1
        if order == 1:
            top.update(zip(ids[1:]))
            continue
        # zip over shifted lists makes every window in C; windows shorter than `order` exist only at the
        # start of a sentence and are exactly the <s>-prefixed n-grams counted below.
        top.update(zip(*[ids[k:] for k in range(order)], strict=False))
        for n, cnt in starts:
            if n > len(ids):
                break
            cnt[tuple(ids[:n])] += 1
    into.sentences += sentences
    into.tokens += tokens
    return into


def kn_discounts(count_of_counts: dict[int, int], fallback: tuple[float, float, float] = FALLBACK_DISCOUNTS,
                 ) -> tuple[tuple[float, float, float], bool]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from the count-of-counts t1..t4 (Chen & Goodman eq. 26).

    On tiny or artificial data the estimate breaks: some ``t_k`` is zero (division by zero, or ``D3+ = 3``
    when ``t4 = 0``) or a discount leaves ``(0, k)``. Then the whole order falls back to ``fallback``, by
    default KenLM's ``--discount_fallback`` values ``(0.5, 1.0, 1.5)``, which keep every probability positive.

    Args:
        count_of_counts: ``{k: number of n-grams with adjusted count k}`` (other keys are ignored).
        fallback: discounts to use when the estimate is invalid.

    Returns:
        ``((D1, D2, D3+), used_fallback)``.
    """
    t1, t2, t3, t4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if t1 and t2 and t3 and t4:
        y = t1 / (t1 + 2 * t2)
        d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
        if all(0 < dk < k for k, dk in enumerate(d, 1)):
            return d, False
    return tuple(fallback), True  # type: ignore[return-value]


def adjusted_counts(counts: NgramCounts, consume: bool = False) -> list[Counter]:
    """Adjusted counts per order (index 1..order), every vocabulary word present at order 1.

    Args:
        counts: raw counts from :func:`count_ngrams`.
        consume: reuse (and empty) ``counts``' highest-order table instead of copying it, to save memory.
    """
    order = counts.order
    adj: list[Counter] = [Counter() for _ in range(order + 1)]
    adj[order] = counts.counts[order] if consume else Counter(counts.counts[order])
    if consume:
        counts.counts[order] = Counter()
    for n in range(order - 1, 0, -1):
        # One per distinct left extension; (n+1)-grams include the <s>-prefixed ones, so <s> counts as one.
        cont = Counter(map(_tail, adj[n + 1]))
        if n > 1:
            cont.update(counts.counts[n])  # <s>-prefixed n-grams keep their raw counts
        adj[n] = cont
    uni = adj[1]
    for i in range(len(counts.words)):
        uni.setdefault((i,), 0)
    uni[(BOS_ID,)] = 0  # <s> is never predicted
    return adj


def estimate(counts: NgramCounts, prune: Sequence[int] | None = None,
             fallback: tuple[float, float, float] = FALLBACK_DISCOUNTS, consume: bool = False) -> NgramModel:
    """Interpolated modified Kneser-Ney estimate from raw counts.

    Args:
        counts: from :func:`count_ngrams` (merged over chunks if counted in chunks).
        prune: per-order thresholds as KenLM's ``--prune``: an n-gram of order n whose adjusted count is
            <= ``prune[n-1]`` is left out (its mass goes to the backoff, so distributions still sum to 1); the
            last value repeats for higher orders; unigrams are never pruned. An n-gram whose context or
            suffix was pruned is left out too, so every ARPA entry stays reachable.
        fallback: discounts for orders where the count-of-counts give none (see :func:`kn_discounts`).
        consume: let the estimate empty ``counts`` to save memory.

    Returns:
        The model, with ``stats`` (n-gram counts, discounts, fallbacks).

    Raises:
        FrugalError: no words were counted, or a bad ``prune`` list.
    """
    order = counts.order
    if counts.tokens <= counts.sentences:
        raise FrugalError("the corpus has no words")
    thresholds = _thresholds(prune, order)
    with arpa.paused_gc():
        return _estimate(counts, thresholds, fallback, consume)


def _estimate(counts: NgramCounts, thresholds: list[int], fallback: tuple[float, float, float],
              consume: bool) -> NgramModel:
    order = counts.order
    adj = adjusted_counts(counts, consume=consume)
    words = list(counts.words)
    idx: list[dict[tuple, int]] = [{} for _ in range(order + 1)]
    lps: list[list[float]] = [[] for _ in range(order + 1)]
    bows: list[list[float]] = [[] for _ in range(order + 1)]
    discounts, fallbacks = [], []
    prev_p = np.zeros(0)
    for n in range(1, order + 1):
        (d1, d2, d3), fell_back = kn_discounts(Counter(adj[n].values()), fallback)
        discounts.append((d1, d2, d3))
        fallbacks.append(fell_back)
        dtab = np.array([0.0, d1, d2, d3])
        if n == 1:  # unigrams in id order: <unk> <s> </s> first, as KenLM writes them
            keys = list(zip(range(len(words))))
            c = np.fromiter(map(adj[1].__getitem__, keys), dtype=np.float64, count=len(keys))
        else:
            keys = list(adj[n])
            c = np.fromiter(adj[n].values(), dtype=np.float64, count=len(keys))
        adj[n] = Counter()  # free as we go
        disc = dtab[np.minimum(c, 3).astype(np.int64)]
        if n == 1:
            den = c.sum()
            gamma0 = disc.sum() / den
            p = (c - disc) / den + gamma0 / (len(words) - 1)  # uniform over the vocabulary less <s>
        else:
            prev = idx[n - 1]
            ctx = np.fromiter(map(prev.get, map(_head, keys), repeat(-1)), dtype=np.int64, count=len(keys))
            suf = np.fromiter(map(prev.get, map(_tail, keys), repeat(-1)), dtype=np.int64, count=len(keys))
            kept = (ctx >= 0) & (suf >= 0)
            if thresholds[n]:
                kept &= c > thresholds[n]
            live = ctx >= 0  # n-grams whose context is in the model feed its statistics
            mass = np.where(kept, disc, c)  # a pruned n-gram gives its whole count to the backoff
            # (astype: bincount of nothing is an int array)
            den = np.bincount(ctx[live], weights=c[live], minlength=len(prev)).astype(np.float64)
            num = np.bincount(ctx[live], weights=mass[live], minlength=len(prev)).astype(np.float64)
            is_ctx = den > 0
            gamma = np.divide(num, den, out=np.ones_like(num), where=is_ctx)
            with np.errstate(divide="ignore"):
                bows[n - 1] = np.round(np.log10(gamma), LOG_DECIMALS).tolist()
            if not kept.all():
                keys = list(compress(keys, kept))
                c, disc, ctx, suf = c[kept], disc[kept], ctx[kept], suf[kept]
            p = (c - disc) / den[ctx] + gamma[ctx] * prev_p[suf]
        with np.errstate(divide="ignore"):
            logp = np.round(np.log10(p), LOG_DECIMALS)
        if n == 1:
            logp[BOS_ID] = -99.0  # ARPA convention: <s> is never predicted
        lps[n] = logp.tolist()
        idx[n] = dict(zip(keys, range(len(keys)), strict=True))
        prev_p = p
    model = NgramModel._from_tables(arpa.ArpaData(words, idx, lps, bows))
    model.stats = {
        "order": order,
        "ngrams": model.counts,
        "discounts": [list(d) for d in discounts],
        "discount_fallback": fallbacks,
        "sentences": counts.sentences,
        "tokens": counts.tokens,
        "vocab_size": len(words) - 1,
    }
    return model


def _thresholds(prune: Sequence[int] | None, order: int) -> list[int]:
    """Per-order prune thresholds, index 1..order (index 0 unused)."""
    if not prune:
        return [0] * (order + 1)
    prune = [int(x) for x in prune]
    if prune[0] != 0:
        raise FrugalError("pruning unigrams is not supported: the first --prune value must be 0")
    if any(x < 0 for x in prune) or any(b < a for a, b in zip(prune, prune[1:], strict=False)):
        raise FrugalError(f"--prune thresholds must be >= 0 and non-decreasing, got {prune}")
    full = prune[:order] + [prune[-1]] * max(0, order - len(prune))
    return [0, *full]


def top_vocabulary(paths: Sequence[str | os.PathLike], size: int) -> list[str]:
    """The ``size`` most frequent words of the files (ties broken by first appearance); a first pass."""
    freq: Counter = Counter()
    for line in read_lines(paths):
        freq.update(line.split())
    for special in (UNK, BOS, EOS):
        freq.pop(special, None)
    return [w for w, _ in freq.most_common(size)]


def train(paths: Sequence[str | os.PathLike], order: int, vocab_size: int | None = None,
          prune: Sequence[int] | None = None,
          fallback: tuple[float, float, float] = FALLBACK_DISCOUNTS) -> NgramModel:
    """Train an interpolated modified Kneser-Ney model on text files (one sentence per line).

    Args:
        paths: training files, streamed line by line.
        order: highest n-gram order, >= 1.
        vocab_size: keep only the most frequent words (plus ``<s>``, ``</s>``, ``<unk>``); the rest become
            ``<unk>``. Costs one extra pass over the files.
        prune: per-order count thresholds (see :func:`estimate`).
        fallback: discounts for orders whose count-of-counts give none.

    Returns:
        The model; ``model.stats`` also has ``seconds``.

    Raises:
        DataError: a missing file, or no words in the files.
        FrugalError: a bad order, vocabulary size or prune list.
    """
    t0 = time.perf_counter()
    if order < 1:
        raise FrugalError(f"n-gram order must be at least 1, got {order}")
    if not paths:
        raise FrugalError("no training files given")
    if vocab_size is not None and vocab_size < 1:
        raise FrugalError(f"vocabulary size must be at least 1, got {vocab_size}")
    _thresholds(prune, order)  # fail before the long pass
    vocab = top_vocabulary(paths, vocab_size) if vocab_size is not None else None
    counts = count_ngrams(read_lines(paths), order, vocab=vocab)
    if counts.tokens <= counts.sentences:
        raise DataError(", ".join(str(p) for p in paths), "no words in the training data")
    model = estimate(counts, prune=prune, fallback=fallback, consume=True)
    model.stats["seconds"] = round(time.perf_counter() - t0, 3)
    return model
