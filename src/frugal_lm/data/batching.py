"""Batches with little padding: dynamic padding, length-grouped batches, deterministic order per epoch.

The batch order is a pure function of (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted run would have seen, and skipping the first k batches costs nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any


class EpochBatchSampler:
    """Yields lists of example indices, one list per batch.

    With `group_by_length`, indices are shuffled, cut into mega-batches of `mega` batches, each
    mega-batch sorted by length and cut into batches, and the batches shuffled again: batches hold
    examples of similar length (little padding) while their order stays random. The longest batch
    comes first, so an out-of-memory error shows at step one rather than an hour in.

    Args:
        lengths: token length of each example.
        batch_size: examples per batch.
        shuffle: random order (training) or file order (evaluation).
        group_by_length: see above.
        seed: base seed; the order of epoch e depends on (seed, e) only.
        drop_last: drop a final short batch.
        max_tokens: cap each batch at this many padded tokens (rows x longest row). Evaluation order: on top
            of batch_size rows, so batches of long inputs hold fewer rows; training order (train.batch_tokens):
            instead of batch_size, so every batch holds about the same work. 0: no cap.
        labels: training order only: the class of each example, for class-balanced batches (see
            `_balanced`); length grouping is then off.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 group_by_length: bool = True, seed: int = 0, drop_last: bool = False, mega: int = 50,
                 rank: int = 0, world: int = 1, max_tokens: int = 0, labels: Sequence[int] | None = None):
        self.rank, self.world = rank, world
        self.labels = list(labels) if labels is not None else None
        self.max_tokens = max_tokens
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.drop_last = drop_last
        self.mega = mega
        self.epoch = 0
        self.skip = 0
        self._len: int | None = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch whose order to yield, skipping its first `skip` batches (for resume)."""
        self.epoch, self.skip = epoch, skip

    def batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of `epoch`, in order (every process gets the same number)."""
        every = self._all_batches(epoch)
        if self.world == 1:
            return every
        usable = len(every) - len(every) % self.world
        return every[self.rank:usable:self.world]

    def _all_batches(self, epoch: int) -> list[list[int]]:
        n = len(self.lengths)
        idx = list(range(n))
        if not self.shuffle:
            if self.group_by_length:  # evaluation: sort by length for speed; callers restore order
                idx.sort(key=lambda i: -self.lengths[i])
                if self.max_tokens:
                    return self._cut_tokens(idx)
            return self._cut(idx)
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.labels is not None:
            return self._cut(self._balanced(rng))
        rng.shuffle(idx)
        cut = self._cut_tokens if self.max_tokens else self._cut
        if not self.group_by_length:
            return cut(idx)
        size = self.batch_size * self.mega
        if self.max_tokens:  # mega-batches of about `mega` token batches of the typical length
            typical = sorted(self.lengths)[n // 2] or 1
            size = max(1, self.max_tokens // typical) * self.mega
        batches: list[list[int]] = []
        for start in range(0, n, size):
            chunk = sorted(idx[start:start + size], key=lambda i: -self.lengths[i])
            batches.extend(cut(chunk))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
        first = batches.pop(longest)
        rng.shuffle(batches)
        return [first, *batches]

    def _balanced(self, rng: random.Random) -> list[int]:
        """Every class equally often: each class's shuffled indices, smaller classes repeated (reshuffled
        each pass) up to the largest class's count, dealt in rounds of one example per class in random
        order. A batch whose size is a multiple of the class count holds each class equally."""
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels or []):
            groups.setdefault(label, []).append(i)
        most = max(len(g) for g in groups.values())
        columns = []
        for label in sorted(groups):
            column: list[int] = []
            while len(column) < most:
                chunk = groups[label][:]
                rng.shuffle(chunk)
                column.extend(chunk)
            columns.append(column[:most])
        order: list[int] = []
        for row in zip(*columns, strict=True):
            row = list(row)
            rng.shuffle(row)
            order.extend(row)
        return order

    def _cut(self, idx: list[int]) -> list[list[int]]:
        out = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def _cut_tokens(self, idx: list[int]) -> list[list[int]]:
        """Cut indices, in their order, into batches of at most max_tokens padded tokens (rows x the batch's
        longest row; an example longer than that alone). Evaluation batches also hold at most batch_size rows;
        training ones (train.batch_tokens) as many as the tokens allow."""
        out: list[list[int]] = []
        rows = self.batch_size if not self.shuffle else len(idx)
        longest = 0
        for i in idx:
            width = max(longest, self.lengths[i])
            if out and len(out[-1]) < rows and (len(out[-1]) + 1) * width <= self.max_tokens:
                out[-1].append(i)
                longest = width
            else:
                out.append([i])
                longest = self.lengths[i]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.skip:]

    def __len__(self) -> int:
        """Batches per epoch for this process (the same for every epoch), before any skip."""
        if self._len is None:
            self._len = len(self.batches(0))
        return self._len


class Collator:
    """Pads a list of encoded examples to the longest in the batch (dynamic padding).

    Args:
        pad_id: the tokenizer's pad token id.
        pad_to_multiple_of: round the padded length up (8 helps tensor cores on GPUs; 1 on CPU).
        label_pad: value for padded positions of per-token labels (ignored by the loss).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1, label_pad: int = -100):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.label_pad = label_pad

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        width = -(-width // self.multiple) * self.multiple
        batch: dict[str, Any] = {}
        for key in examples[0]:
            values = [e[key] for e in examples]
            if isinstance(values[0], (list, tuple)):
                pad = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0}.get(key, self.label_pad)
                values = [list(v) + [pad] * (width - len(v)) for v in values]
            batch[key] = torch.tensor(values)
        if "attention_mask" not in batch:
            batch["attention_mask"] = (batch["input_ids"] != self.pad_id).long()
        return batch
