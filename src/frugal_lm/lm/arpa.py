"""ARPA backoff language models: the file format (write ours; read ours, KenLM's and SRILM's) and
:class:`NgramModel`, which scores text with one the way ``kenlm.Model`` does. Training is in
:mod:`frugal_lm.lm.ngram`, which re-exports :class:`NgramModel`.

The format::

    \\data\\
    ngram 1=3
    ngram 2=2

    \\1-grams:
    -99	<s>	-0.30103
    -0.47712	</s>
    -0.47712	a	-0.30103

    \\2-grams:
    -0.17609	<s> a
    -0.17609	a </s>

    \\end\\

Each entry is ``log10 p(w | context)``, the words, and optionally ``log10 backoff(words)`` (missing means 0).
The reader tolerates text before ``\\data\\``, blank lines anywhere, missing backoff columns, spaces instead
of tabs, backoffs on the highest order (ignored), ``-99``/``-inf`` probabilities and a missing ``\\end\\``.
"""

from __future__ import annotations

import gc
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

from ..errors import DataError

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
_NGRAM_LINE = re.compile(r"ngram\s+(\d+)\s*=\s*(\d+)$")
_SECTION = re.compile(r"\\(\d+)-grams:$")
_CHUNK = 1 << 16


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of small lists and tuples otherwise triggers
    collections that each walk every live object, which can triple the time of a load or an estimate."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class ArpaData:
    """Tables of an ARPA file, per order n (index 1..N; index 0 unused).

    ``index[n]`` maps an n-gram (tuple of ids into ``words``) to its row; ``logprobs[n][row]`` and
    ``backoffs[n][row]`` are log10 values (backoff 0.0 when absent; no backoffs at the highest order).
    Rows are in the dict's insertion order, so ``list(index[n])`` lists the n-grams row by row.
    """

    words: list[str]
    index: list[dict[tuple, int]]
    logprobs: list[list[float]]
    backoffs: list[list[float]]


def write_arpa(path: str | os.PathLike, data: ArpaData) -> None:
    """Write an ARPA file atomically (a crash never leaves half a file).

    Backoff columns are written only where the backoff is not 0 (log10 of 1), as the format allows.
    """
    from ..io import atomic_path

    order = len(data.index) - 1
    wget = data.words.__getitem__
    with paused_gc(), atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape",
                                                     newline="\n") as f:
        f.write("\\data\\\n")
        for n in range(1, order + 1):
            f.write(f"ngram {n}={len(data.index[n])}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            keys, lps = iter(data.index[n]), data.logprobs[n]
            bows = data.backoffs[n] if n < order else []
            for start in range(0, len(lps), _CHUNK):  # chunks bound the memory of the text
                stop = min(start + _CHUNK, len(lps))
                # C-level maps: words joined, floats by repr (shortest text that reads back exactly)
                texts = map(" ".join, map(partial(map, wget), islice(keys, stop - start)))
                probs = map(repr, lps[start:stop])
                if bows:
                    # backoffs take few distinct values: format each once; 0 (log10 of 1) needs no column
                    uniq, inverse = np.unique(np.asarray(bows[start:stop]), return_inverse=True)
                    forms = ["" if b == 0.0 else "\t" + repr(b) for b in uniq.tolist()]
                    tails = map(forms.__getitem__, inverse.ravel().tolist())
                else:
                    tails = repeat("")
                # one write per chunk: writelines would call write once per line
                f.write("".join(map("%s\t%s%s\n".__mod__, zip(probs, texts, tails, strict=False))))
        f.write("\n\\end\\\n")


def read_arpa(path: str | os.PathLike) -> ArpaData:
    """Read an ARPA file.

    Args:
        path: the file.

    Returns:
        Its tables; word ids are the rows of the unigram section.

    Raises:
        DataError: the file is missing or malformed; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    name = str(path)
    declared: dict[int, int] = {}
    data = ArpaData([], [{}], [[]], [[]])
    lineno = 0
    with paused_gc(), open(path, encoding="utf-8", errors="surrogateescape") as f:
        # preamble (SRILM and others may write comments before \data\), then the header
        for raw in f:
            lineno += 1
            if raw.strip() == "\\data\\":
                break
        else:
            raise DataError(name, "not an ARPA file: no \\data\\ line", line=lineno or None)
        line = ""
        for raw in f:
            lineno += 1
            line = raw.strip()
            if not line:
                continue
            if not line.startswith("ngram"):
                break
            m = _NGRAM_LINE.match(line)
            if not m:
                raise DataError(name, f"bad header line '{line[:80]}'", line=lineno)
            declared[int(m.group(1))] = int(m.group(2))
        if not declared or sorted(declared) != list(range(1, len(declared) + 1)):
            raise DataError(name, "the \\data\\ header must declare 'ngram 1=...' up to the order",
                            line=lineno)
        order = len(declared)
        while line != "\\end\\":
            m = _SECTION.match(line)
            if not m:
                if not line:
                    break  # end of file
                raise DataError(name, f"expected a '\\N-grams:' section or '\\end\\', got '{line[:80]}'",
                                line=lineno)
            n = int(m.group(1))
            if n != len(data.index) or n > order:
                raise DataError(name, f"section \\{n}-grams: out of order or not declared", line=lineno)
            if n == 1:
                windex: dict[str, int] = {}
            section = _Section(name, n, n < order, windex)
            data.index.append(section.index)
            data.logprobs.append(section.probs)
            data.backoffs.append(section.bows)
            chunk: list[str] = []
            first = lineno + 1
            line = ""
            for raw in f:
                lineno += 1
                if raw[:1] == "\\":
                    line = raw.strip()
                    break
                chunk.append(raw)
                if len(chunk) == _CHUNK:  # parse as we go: memory stays near the size of the tables
                    section.parse(chunk, first, data.words)
                    chunk = []
                    first = lineno + 1
            section.parse(chunk, first, data.words)
            if len(section.index) != declared[n]:
                raise DataError(name, f"header says ngram {n}={declared[n]} but the section has "
                                      f"{len(section.index)} entries", line=lineno)
    if len(data.index) - 1 != order:
        raise DataError(name, f"header declares {order} orders but the file has {len(data.index) - 1} "
                              "sections (truncated?)", line=lineno)
    return data


class _Section:
    """Accumulates one ``\\N-grams:`` section, parsed a chunk of lines at a time with C-level maps."""

    def __init__(self, name: str, n: int, with_bows: bool, windex: dict[str, int]):
        self.name, self.n, self.with_bows, self.windex = name, n, with_bows, windex
        self.index: dict[tuple, int] = {}
        self.probs: list[float] = []
        self.bows: list[float] = []

    def parse(self, lines: list[str], first: int, words: list[str]) -> None:
        """Parse entry lines (``first`` is the first one's line number); words of unigrams go to ``words``."""
        n = self.n
        parts = list(map(str.split, lines))
        sizes = set(map(len, parts))
        start = len(self.probs)
        try:
            if not sizes <= {0, n + 1, n + 2}:
                raise ValueError
            if 0 in sizes:  # blank lines
                parts = [p for p in parts if p]
            probs = list(map(float, map(itemgetter(0), parts)))
            if not self.with_bows:
                bows: list[float] = []  # the highest order has no backoffs: ignore any
            elif n + 2 in sizes:  # some or all lines have a backoff
                bows = [float(p[n + 1]) if len(p) == n + 2 else 0.0 for p in parts]
            else:
                bows = [0.0] * len(parts)
            if n == 1:
                new = list(map(itemgetter(1), parts))
                if len(set(new)) != len(new) or not self.windex.keys().isdisjoint(new):
                    raise ValueError  # a duplicate word
                self.windex.update(zip(new, range(len(words), len(words) + len(new)), strict=True))
                keys = list(zip(range(len(words), len(words) + len(new))))
            else:
                get = self.windex.__getitem__
                keys = list(map(tuple, map(partial(map, get), map(itemgetter(slice(1, n + 1)), parts))))
            self.index.update(zip(keys, range(start, start + len(keys)), strict=True))
            if len(self.index) != start + len(keys):
                raise ValueError  # a duplicate n-gram
        except (ValueError, KeyError):
            _explain(self.name, n, lines, first, self.windex, self.index, start)
            raise  # _explain always raises; this keeps type checkers content
        if n == 1:
            words.extend(new)
        self.probs.extend(probs)
        self.bows.extend(bows)


def _explain(name: str, n: int, lines: list[str], first: int, windex: dict[str, int],
             index: dict[tuple, int], start: int) -> None:
    """Find the first bad line of a chunk that failed the fast parse and raise a DataError naming it."""
    # n-grams of earlier chunks (for unigrams, windex holds exactly the earlier words)
    seen = {(w,) for w in windex} if n == 1 else {k for k, row in index.items() if row < start}
    for lineno, raw in enumerate(lines, first):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) not in (n + 1, n + 2):
            raise DataError(name, f"expected log10 prob, {n} word(s) and an optional backoff, "
                                  f"got {len(parts)} field(s)", line=lineno)
        try:
            [float(x) for x in parts[:1] + parts[n + 1:]]
        except ValueError:
            raise DataError(name, f"not a number in '{raw.strip()[:80]}'", line=lineno) from None
        gram = tuple(parts[1:n + 1])
        if n > 1:
            missing = [w for w in gram if w not in windex]
            if missing:
                raise DataError(name, f"word '{missing[0]}' is missing from the unigrams", line=lineno)
            key = tuple(windex[w] for w in gram)
        else:
            key = gram
        if key in seen:
            raise DataError(name, f"duplicate {n}-gram '{' '.join(gram)}'", line=lineno)
        seen.add(key)
    raise DataError(name, f"malformed \\{n}-grams: section", line=first)


def read_lines(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Stream the lines of several text files, checking that each exists first.

    Raises:
        DataError: a file is missing or is not a file.
    """
    for p in paths:
        if not Path(p).is_file():
            raise DataError(str(p), "file not found" if not Path(p).exists() else "not a file")
    for p in paths:
        with open(p, encoding="utf-8", errors="surrogateescape") as f:
            yield from f


@dataclass
class CorpusScore:
    """Totals of scoring many sentences; ``tokens`` counts one ``</s>`` per sentence, as KenLM does."""

    log10_prob: float = 0.0
    tokens: int = 0
    oovs: int = 0
    sentences: int = 0
    oov_log10_prob: float = 0.0  # the part of ``log10_prob`` paid for OOV words

    @property
    def perplexity(self) -> float:
        """``10 ** (-log10_prob / tokens)``: KenLM's "perplexity including OOVs"."""
        return 10.0 ** (-self.log10_prob / self.tokens) if self.tokens else math.nan

    @property
    def perplexity_excluding_oovs(self) -> float:
        """KenLM's "perplexity excluding OOVs": OOV words' probabilities and counts left out."""
        n = self.tokens - self.oovs
        return 10.0 ** (-(self.log10_prob - self.oov_log10_prob) / n) if n else math.nan


class NgramModel:
    """A backoff n-gram model in ARPA form, scored like ``kenlm.Model``.

    ``NgramModel(path)`` or ``NgramModel.load(path)`` reads an ARPA file (ours, KenLM's or SRILM's);
    :func:`frugal_lm.lm.ngram.train` makes one from text. Log probabilities are base 10. A word not in the
    vocabulary is scored as ``<unk>`` and flagged OOV (so is a literal ``<unk>``, as in KenLM); an ARPA file
    without ``<unk>`` gives it log10 probability -100, KenLM's convention.
    """

    stats: dict

    def __init__(self, path: str | os.PathLike):
        self._init(read_arpa(path))
        self.stats = {"order": self.order, "ngrams": self.counts, "path": str(path)}

    @classmethod
    def load(cls, path: str | os.PathLike) -> NgramModel:
        """Read an ARPA file; same as ``NgramModel(path)``."""
        return cls(path)

    @classmethod
    def _from_tables(cls, data: ArpaData) -> NgramModel:
        self = cls.__new__(cls)
        self._init(data)
        self.stats = {}
        return self

    def _init(self, data: ArpaData) -> None:
        # Per order n: _idx[n] maps an n-gram (tuple of word ids) to its row in _lp[n] / _bow[n].
        self.words, self._idx, self._lp, self._bow = data.words, data.index, data.logprobs, data.backoffs
        self.order = len(self._idx) - 1
        self._index = {w: i for i, w in enumerate(self.words)}
        for word, lp in ((UNK, -100.0), (BOS, -99.0)):  # KenLM's values when a file lacks them
            if word not in self._index:
                i = self._index[word] = len(self.words)
                self.words.append(word)
                self._idx[1][(i,)] = len(self._lp[1])
                self._lp[1].append(lp)
                if self.order > 1:
                    self._bow[1].append(0.0)
        self.unk_id, self.bos_id, self.eos_id = (self._index.get(w, -1) for w in (UNK, BOS, EOS))

    def __repr__(self) -> str:
        return f"NgramModel(order={self.order}, vocab={len(self.words)}, ngrams={self.counts})"

    @property
    def counts(self) -> list[int]:
        """Number of n-grams of each order 1..order."""
        return [len(t) for t in self._idx[1:]]

    @property
    def vocab(self) -> list[str]:
        """All words with a unigram, including ``<s>``, ``</s>`` and ``<unk>``."""
        return list(self.words)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as an ARPA file, atomically."""
        write_arpa(path, ArpaData(self.words, self._idx, self._lp, self._bow))

    def _ids(self, sentence: str) -> list[int]:
        get, unk = self._index.get, self.unk_id
        return [get(w, unk) for w in sentence.split()]

    def _start(self, bos: bool) -> tuple:
        return (self.bos_id,) if bos and self.order > 1 else ()

    def _scores(self, ids: Iterable[int], hist: tuple) -> Iterator[tuple[float, int]]:
        """(log10 p, length of the n-gram matched) for each id after ``hist``, by the ARPA backoff rule."""
        idx, lps, bows, keep = self._idx, self._lp, self._bow, self.order - 1
        for w in ids:
            length = len(hist)
            acc = 0.0
            while True:
                ctx = hist[len(hist) - length:]
                row = idx[length + 1].get(ctx + (w,))
                if row is not None:
                    yield lps[length + 1][row] + acc, length + 1
                    break
                if length == 0:
                    yield -100.0 + acc, 0  # only for ids without a unigram, which _init rules out
                    break
                row = idx[length].get(ctx)
                if row is not None:  # a context that is not in the model has backoff 1 (log10 0)
                    acc += bows[length][row]
                length -= 1
            if keep:
                hist = (hist + (w,))[-keep:]

    def full_scores(self, sentence: str, bos: bool = True,
                    eos: bool = True) -> Iterator[tuple[float, int, bool]]:
        """(log10 prob, n-gram length used, oov) for each word of ``sentence``, then ``</s>`` if ``eos``."""
        ids = self._ids(sentence)
        if eos:
            ids.append(self.eos_id if self.eos_id >= 0 else self.unk_id)
        unk = self.unk_id
        for w, (lp, length) in zip(ids, self._scores(ids, self._start(bos)), strict=True):
            yield lp, length, w == unk

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability of ``sentence`` (whitespace tokenised)."""
        return sum(lp for lp, _, _ in self.full_scores(sentence, bos=bos, eos=eos))

    def perplexity(self, sentence: str) -> float:
        """Perplexity of one sentence, counting ``</s>`` as a token (KenLM's ``Model.perplexity``)."""
        words = len(sentence.split()) + 1
        return 10.0 ** (-self.score(sentence) / words)

    def logprob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context); ``context`` is the preceding words (may start with ``<s>``)."""
        ids = [self._index.get(w, self.unk_id) for w in context]
        hist = tuple(ids[len(ids) - (self.order - 1):]) if self.order > 1 else ()
        return next(self._scores([self._index.get(word, self.unk_id)], hist))[0]

    def score_corpus(self, lines: Iterable[str]) -> CorpusScore:
        """Score sentences (one per line, blank lines skipped), each with ``<s>`` and ``</s>``."""
        total = CorpusScore()
        unk, eos = self.unk_id, (self.eos_id if self.eos_id >= 0 else self.unk_id)
        log10_prob, oov_log10_prob, start = 0.0, 0.0, self._start(True)
        for line in lines:
            ids = self._ids(line)
            if not ids:
                continue
            ids.append(eos)
            total.sentences += 1
            total.tokens += len(ids)
            total.oovs += ids.count(unk)
            for w, (lp, _) in zip(ids, self._scores(ids, start), strict=True):
                log10_prob += lp
                if w == unk:
                    oov_log10_prob += lp
        total.log10_prob, total.oov_log10_prob = log10_prob, oov_log10_prob
        return total

    def score_file(self, path: str | os.PathLike) -> CorpusScore:
        """:meth:`score_corpus` over a text file.

        Raises:
            DataError: the file is missing.
        """
        return self.score_corpus(read_lines([path]))
