"""Packing: documents joined into one token stream (boundary tokens between them) and cut into equal blocks,
so language-model training spends no compute on padding. Shared by causal-LM fine-tuning and pretraining.

Blocks overlap by one token: block k is stream[k*(L-1) : k*(L-1)+L]. A causal LM predicts each position from
the ones before it, so the first token of a block is context only; with the overlap, every token of the stream
after the first is a prediction target exactly once, and no token is lost at a block edge. The last block
may be shorter than L (it is the only one the collator pads).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def join_documents(documents: Iterable[Sequence[int]], bos: int | None, eos: int | None) -> list[int]:
    """One stream: each document as [bos] + ids + [eos], without repeating a boundary token.

    When BOS and EOS are the same token (GPT-2's `<|endoftext|>`), the EOS that ends a document also opens the
    next one, so documents are separated by exactly one token: `<eot> a <eot> b <eot>`. Otherwise each
    document keeps both: `<s> a </s> <s> b </s>`. A missing BOS or EOS (None) is left out.
    """
    stream: list[int] = []
    for ids in documents:
        if bos is not None and not (stream and stream[-1] == bos):
            stream.append(bos)
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    return stream


def pack(stream: Sequence[int], block: int) -> list[list[int]]:
    """Cut `stream` into blocks of `block` tokens that overlap by one (see the module docstring).

    Raises:
        ValueError: a block shorter than 2 tokens (it would hold no prediction).
    """
    if block < 2:
        raise ValueError(f"block length must be at least 2 tokens, got {block}")
    if len(stream) < 2:
        return []
    step = block - 1
    return [list(stream[start:start + block]) for start in range(0, len(stream) - 1, step)]


def unpack(blocks: Sequence[Sequence[int]]) -> list[int]:
    """The stream `pack` cut (the inverse of `pack`): for checks and tests."""
    out: list[int] = []
    for i, b in enumerate(blocks):
        out.extend(b if i == 0 else b[1:])
    return out


def packed_examples(stream: Sequence[int], block: int) -> list[dict[str, Any]]:
    """Training examples from a stream: input ids and an all-ones attention mask per block.

    The mask is explicit because the pad token may equal the boundary token (GPT-2 pads with EOS), so a
    collator could not tell padding from a real `<|endoftext|>` by the id alone.
    """
    return [{"input_ids": b, "attention_mask": [1] * len(b)} for b in pack(stream, block)]
