"""Batching: every example once per epoch, far less padding, deterministic order, exact skip."""

from __future__ import annotations

import random

from frugal_lm.data.batching import Collator, EpochBatchSampler


def lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 64) for _ in range(n)]


def padded_tokens(sampler, lens, epoch=0):
    return sum(len(b) * max(lens[i] for i in b) for b in sampler.batches(epoch))


def test_each_example_once_per_epoch():
    lens = lengths()
    for group in (True, False):
        batches = EpochBatchSampler(lens, 32, group_by_length=group).batches(3)
        assert sorted(i for b in batches for i in b) == list(range(len(lens)))
        assert all(len(b) == 32 for b in batches[:-1] if len(b) != len(lens) % 32)


def test_grouping_cuts_padding():
    lens = lengths()
    grouped = padded_tokens(EpochBatchSampler(lens, 32, group_by_length=True), lens)
    random_ = padded_tokens(EpochBatchSampler(lens, 32, group_by_length=False), lens)
    assert grouped < 0.6 * random_
    assert grouped < 1.05 * sum(lens)


def test_order_is_a_function_of_seed_and_epoch():
    lens = lengths()
    a, b = EpochBatchSampler(lens, 16, seed=1), EpochBatchSampler(lens, 16, seed=1)
    assert a.batches(2) == b.batches(2)
    assert a.batches(2) != a.batches(3)
    assert a.batches(2) != EpochBatchSampler(lens, 16, seed=2).batches(2)


def test_longest_batch_first_and_skip():
    lens = lengths()
    s = EpochBatchSampler(lens, 16)
    batches = s.batches(0)
    assert max(lens[i] for i in batches[0]) == max(lens)
    s.set_epoch(0, skip=5)
    assert list(s) == batches[5:]


def test_processes_get_disjoint_equal_shares():
    lens = lengths(101)
    parts = [EpochBatchSampler(lens, 8, rank=r, world=3).batches(0) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    seen = [i for p in parts for b in p for i in b]
    assert len(seen) == len(set(seen))


def test_collator_pads_to_longest():
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [5], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    tokens = Collator(pad_id=0, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3], "labels": [0, 1, -100]}])
    assert tokens["input_ids"].shape == (1, 8) and tokens["labels"].tolist()[0][3:] == [-100] * 5


def test_evaluation_batches_respect_a_token_budget():
    import random

    rng = random.Random(0)
    lens = [rng.randint(3, 200) for _ in range(400)] + [5] * 100 + [2000]  # one row longer than the budget
    batches = EpochBatchSampler(lens, 64, shuffle=False, max_tokens=1024).batches(0)
    assert sorted(i for b in batches for i in b) == list(range(501))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * max(lens[i] for i in b) <= 1024
    assert [lens[i] for i in batches[0]] == [2000]  # longest first, alone
    assert max(len(b) for b in batches) == 64  # short rows still fill whole batches


def test_sorted_prediction_batches_return_results_in_input_order():
    """map_batches runs length-sorted, token-capped batches and gives each result back at its input's place."""
    import torch

    from frugal_lm.engine.inference import map_batches

    rng = random.Random(1)
    # each example's ids encode its position, so a result tells which input it came from
    examples = [{"input_ids": [i + 1] * rng.randint(1, 40)} for i in range(300)]
    seen: list[list[int]] = []

    def first_id(model, batch):
        rows = batch["attention_mask"].sum(dim=1).tolist()
        seen.append(rows)
        return [int(ids[0]) - 1 for ids in batch["input_ids"]]

    out = map_batches(torch.nn.Linear(1, 1), examples, Collator(pad_id=0), 32, first_id, max_tokens=256)
    assert out == list(range(300))
    # the batches really ran sorted (longest first) under the token cap, not in input order
    flat = [n for rows in seen for n in rows]
    assert flat == sorted(flat, reverse=True) and flat != [len(e["input_ids"]) for e in examples]
    assert all(len(rows) * max(rows) <= 256 for rows in seen)
