"""Named entity recognition (token classification): CoNLL / JSONL data in any tag scheme, sub-word
alignment, windows for long sentences, entity-level metrics, entity spans as predictions.

Internally every tag sequence is BIO (IOB2): the data's scheme (IOB1, BIO, BIOES or plain labels) is
detected or configured, converted on the way in, and predictions are written in the scheme asked for.

Sub-words: a word's label sits on its first sub-token; the others are ignored by the loss
(`ner.label_all_subtokens` labels them too, B- turned into I-). Predictions are read from first sub-tokens.

Long sentences: when a sentence has more sub-tokens than fit (model.max_length minus the special tokens),
it is cut into overlapping windows that start at word boundaries; each word is predicted by the window
in which it has the most context on both sides, so no word is dropped or left unpredicted.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from frugal_lm.config import option
from frugal_lm.data.conll import TaggedSentence, read_tagged
from frugal_lm.data.tags import (
    SCHEMES,
    check_scheme,
    detect_scheme,
    entities,
    entity_metrics,
    from_bio,
    repair_bio,
    to_bio,
)
from frugal_lm.engine.inference import map_batches
from frugal_lm.errors import ConfigError, DataError
from frugal_lm.tasks.labels import IGNORE, LabelTask, log_softmax, softmax

# Raw text (predict --text, .txt files) is split into words the way CoNLL data is: punctuation apart.
WORD = re.compile(r"\w+(?:['’.\-]\w+)*|[^\w\s]")


@dataclass
class NerOptions:
    scheme: str = option("auto", "tag scheme of the data: auto (detected from the training file), or one of "
                         "iob1 (CoNLL-2003's own), bio (IOB2), bioes, plain (labels without prefixes)",
                         ("auto", *SCHEMES))
    output_scheme: str = option("same", "scheme of predicted tags: same (as the training data) or a scheme",
                                ("same", *SCHEMES))
    token_column: int = option(0, "CoNLL files: column of the words (0-based)")
    tag_column: int = option(-1, "CoNLL files: column of the tags (0-based; -1 is the last)")
    tokens_key: str = option("tokens", "JSONL files: key of the word list")
    tags_key: str = option("tags", "JSONL files: key of the tag list")
    label_all_subtokens: bool = option(False, "label every sub-token of a word (B- becomes I- after the first), "
                                       "not only the first")
    window_overlap: int = option(0, "sentences longer than model.max_length: sub-tokens shared by successive "
                                 "windows (0: half a window)")


@dataclass
class RawSentence(TaggedSentence):
    """A sentence from raw text, with each word's character span in `text`."""

    text: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Window:
    sentence: int
    start: int  # content sub-token offset of the window in its sentence
    end: int
    length: int  # the sentence's content sub-tokens
    firsts: list[tuple[int, int, int]]  # (input position, word, content position) of each word's first sub-token


class NerTask(LabelTask):
    """Token classification with BIO labels on any encoder."""

    name = "ner"
    help = "named entity recognition: a tag per word (CoNLL columns or JSONL tokens/tags), entity spans out"
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    formats = ("conll", "jsonl")
    metrics: ClassVar[dict[str, str]] = {"f1": "max", "precision": "max", "recall": "max",
                                         "token_accuracy": "max", "loss": "min"}
    defaults: ClassVar[dict[str, Any]] = {"train.metric": "f1", "train.freeze_embeddings": True,
                                          "train.lr": 5e-4}
    Options = NerOptions

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        self.scheme = "bio"
        self._eval_cache: Any = None
        super().__init__(cfg, saved)

    # -- state -------------------------------------------------------------------------------
    @property
    def types(self) -> list[str]:
        return sorted({label[2:] for label in self.labels if label != "O"})

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scheme": self.scheme, "types": self.types}

    def load_state(self, saved: dict[str, Any]) -> None:
        super().load_state(saved)
        self.scheme = saved.get("scheme", "bio")

    def card_lines(self) -> list[str]:
        return [f"- entity types: {', '.join(self.types)} (data scheme {self.scheme}, BIO inside the model)"]

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[TaggedSentence]:
        o = self.options
        return read_tagged(path, self.cfg.data.format, token_column=o.token_column, tag_column=o.tag_column,
                           tokens_key=o.tokens_key, tags_key=o.tags_key, labelled=labelled)

    def learn(self, train: list[TaggedSentence]) -> None:
        tags = [s.tags for s in train]
        lines = [s.lines for s in train]
        path = self.cfg.data.train
        self.scheme = detect_scheme(tags, path, lines) if self.options.scheme == "auto" else self.options.scheme
        check_scheme(tags, self.scheme, path, lines)
        types = sorted({t for s in train for t, _, _ in entities(to_bio(s.tags, self.scheme))})
        if not types:
            raise DataError(path, "no entities in the training data (every tag is O); NER needs tagged entities")
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]

    def check(self, records: list[TaggedSentence], path: str) -> None:
        """Eval tags must fit the training scheme; an entity type training never saw is a warning (it counts
        as missed, since the model cannot predict it)."""
        check_scheme([s.tags for s in records], self.scheme, path, [s.lines for s in records])
        known = set(self.types)
        first: dict[str, int] = {}
        for s in records:
            for t, start, _ in entities(to_bio(s.tags, self.scheme)):
                if t not in known and t not in first:
                    first[t] = s.lines[start]
        for t, line in first.items():
            print(f"warning: {path}:{line}: entity type '{t}' never appears in the training data; "
                  "its entities count as missed", file=sys.stderr)

    def from_texts(self, texts: list[str]) -> list[RawSentence]:
        out = []
        for i, text in enumerate(texts):
            matches = list(WORD.finditer(text))
            if not matches:
                raise DataError("input", f"text {i + 1} has no words to tag: {text!r}", line=i + 1)
            out.append(RawSentence([m.group() for m in matches], None, i + 1, [i + 1] * len(matches),
                                   text=text, spans=[m.span() for m in matches]))
        return out

    # -- encoding ----------------------------------------------------------------------------
    def _specials(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a single sequence ([CLS] ... [SEP])."""
        enc = self.tokenizer([["x"]], is_split_into_words=True)
        ids, wids = enc["input_ids"][0], enc.word_ids(0)
        first = wids.index(0)
        last = len(wids) - 1 - wids[::-1].index(0)
        return ids[:first], ids[last + 1:]

    def _subtokens(self, records: list[TaggedSentence]) -> list[tuple[list[int], list[int]]]:
        """(sub-token ids, word index of each) per sentence, without special tokens or truncation."""
        tok = self.tokenizer
        enc = tok([s.tokens for s in records], is_split_into_words=True, add_special_tokens=False)
        out = []
        for i, s in enumerate(records):
            ids, wids = enc["input_ids"][i], enc.word_ids(i)
            if len(set(wids)) < len(s.tokens):
                # a word the tokenizer drops (a zero-width or control character) becomes [UNK], so that
                # every word keeps a first sub-token to carry its label and prediction
                seen = set(wids)
                words = [w if j in seen else (tok.unk_token or "?") for j, w in enumerate(s.tokens)]
                single = tok([words], is_split_into_words=True, add_special_tokens=False)
                ids, wids = single["input_ids"][0], single.word_ids(0)
            out.append((ids, wids))
        return out

    def _window_starts(self, wids: list[int], width: int) -> list[int]:
        n = len(wids)
        overlap = self.options.window_overlap or width // 2
        stride = max(1, width - min(overlap, width - 1))
        starts, s = [0], 0
        while s + width < n:
            target = s + stride
            t = target
            while t > s and wids[t] == wids[t - 1]:  # back to the first sub-token of a word
                t -= 1
            s = t if t > s else target  # a single word longer than the stride is cut inside
            starts.append(s)
        return starts

    def _encode(self, records: list[TaggedSentence]) -> tuple[list[dict[str, Any]], list[_Window]]:
        prefix, suffix = self._specials()
        width = self.cfg.model.max_length - len(prefix) - len(suffix)
        if width < 1:
            raise ConfigError(f"model.max_length: {self.cfg.model.max_length} leaves no room beside the "
                              f"{len(prefix) + len(suffix)} special tokens")
        index, all_sub = self.label2id, self.options.label_all_subtokens
        examples, windows = [], []
        for k, (s, (ids, wids)) in enumerate(zip(records, self._subtokens(records), strict=True)):
            bio = to_bio(s.tags, self.scheme) if s.tags is not None else None
            for start in self._window_starts(wids, width):
                end = min(start + width, len(ids))
                example: dict[str, Any] = {"input_ids": prefix + ids[start:end] + suffix}
                example["attention_mask"] = [1] * len(example["input_ids"])
                if bio is not None:
                    labels = []
                    for p in range(start, end):
                        w = wids[p]
                        first = p == 0 or wids[p - 1] != w
                        tag = bio[w] if first or not all_sub else "I" + bio[w][1:] if bio[w] != "O" else "O"
                        labels.append(index.get(tag, IGNORE) if first or all_sub else IGNORE)
                    example["labels"] = [IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix)
                examples.append(example)
                firsts = [(len(prefix) + p - start, wids[p], p) for p in range(start, end)
                          if p == 0 or wids[p - 1] != wids[p]]
                windows.append(_Window(k, start, end, len(ids), firsts))
        return examples, windows

    def encode(self, records: list[TaggedSentence]) -> list[dict[str, Any]]:
        return self._encode(records)[0]

    def prepare(self, tokenizer: Any) -> None:
        super().prepare(tokenizer)
        self.set_class_weights([x for e in self.train_set for x in e["labels"] if x != IGNORE])

    # -- inference ---------------------------------------------------------------------------
    def _word_logits(self, model: Any, records: list[TaggedSentence], encoded: Any = None,
                     device: Any = None) -> tuple[list[np.ndarray], float, int]:
        """One forward pass over all windows. Returns, per sentence, a (words x labels) array of logits, each
        word read from its first sub-token in the window where it has the most context; and the loss summed
        over labelled sub-tokens with their count (as training counts it)."""
        examples, windows = encoded or self._encode(records)

        def fn(m: Any, batch: dict[str, Any]) -> list[Any]:
            logits = self.logits(m, batch).cpu().numpy()
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            labels = batch["labels"].cpu().numpy() if "labels" in batch else None
            out = []
            for i, n in enumerate(lengths):
                loss, count = 0.0, 0
                if labels is not None:
                    keep = labels[i] != IGNORE
                    count = int(keep.sum())
                    if count:
                        loss = float(-log_softmax(logits[i][keep])[np.arange(count), labels[i][keep]].sum())
                out.append((logits[i, :n], loss, count))
            return out

        rows = map_batches(model, examples, self.collator(), self.cfg.train.eval_batch_size, fn,
                           device or next(model.parameters()).device)
        n_labels = len(self.labels)
        out = [np.zeros((len(s.tokens), n_labels), dtype=np.float32) for s in records]
        best = [np.full(len(s.tokens), -1) for s in records]
        for win, (logits, _, _) in zip(windows, rows, strict=True):
            for pos, w, content in win.firsts:
                # context on each side of the word inside this window; a sentence edge counts as full context
                left = content - win.start if win.start > 0 else win.length
                right = win.end - 1 - content if win.end < win.length else win.length
                if min(left, right) > best[win.sentence][w]:
                    best[win.sentence][w] = min(left, right)
                    out[win.sentence][w] = logits[pos]
        return out, sum(r[1] for r in rows), sum(r[2] for r in rows)

    def evaluate(self, model: Any, records: list[TaggedSentence] | None = None, device: Any = None) -> dict[str, Any]:
        """Entity-level precision, recall and F1 (exact span and type, seqeval's default mode), overall and per
        type, word-level tag accuracy, and the loss per labelled sub-token."""
        if records is None:
            if self._eval_cache is None:
                self._eval_cache = self._encode(self.eval_records)
            records, encoded = self.eval_records, self._eval_cache
        else:
            encoded = None
        word_logits, loss, count = self._word_logits(model, records, encoded, device)
        gold = [to_bio(s.tags, self.scheme) for s in records]
        pred = [self._tags(w) for w in word_logits]
        metrics: dict[str, Any] = {"loss": loss / count if count else 0.0}
        metrics.update(entity_metrics(gold, pred))
        return metrics

    def _tags(self, word_logits: np.ndarray) -> list[str]:
        """BIO tags of the most likely labels, repaired (an I-X that starts an entity becomes B-X)."""
        return repair_bio([self.labels[k] for k in word_logits.argmax(axis=1)]) if len(word_logits) else []

    def predict(self, model: Any, records: list[TaggedSentence]) -> list[dict[str, Any]]:
        """For each sentence: its words, their tags (in ner.output_scheme) and the entities as spans, with
        word offsets (end exclusive), character offsets in the text and the mean tag probability."""
        scheme = self.scheme if self.options.output_scheme == "same" else self.options.output_scheme
        word_logits, _, _ = self._word_logits(model, records)
        out = []
        for s, logits in zip(records, word_logits, strict=True):
            if isinstance(s, RawSentence):
                text, spans = s.text, s.spans
            else:
                text, spans, pos = " ".join(s.tokens), [], 0
                for w in s.tokens:
                    spans.append((pos, pos + len(w)))
                    pos += len(w) + 1
            probs = softmax(logits)
            bio = self._tags(logits)
            found = []
            for t, start, end in entities(bio):
                c0, c1 = spans[start][0], spans[end - 1][1]
                found.append({"text": text[c0:c1], "type": t, "start": start, "end": end, "char_start": c0,
                              "char_end": c1, "score": round(float(probs[start:end].max(axis=1).mean()), 6)})
            out.append({"text": text, "tokens": s.tokens, "tags": from_bio(bio, scheme), "entities": found})
        return out
