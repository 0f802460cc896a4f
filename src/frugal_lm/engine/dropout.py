"""Dropout with masks cut from 64-bit random words: the same Bernoulli masks as torch's, for less CPU time.

On a CPU `torch.nn.Dropout` draws one random number per element (`bernoulli_`), which took 16% of MiniLM's
bf16 training step on this project's 2-core machine (14 ms of 93). `random_()` on an int64 tensor fills 64
bits per draw when asked for the whole int64 range, so each word gives four uniform 16-bit numbers, and an
element is kept when its number clears the dropout threshold. The keep probability
is 1 - p rounded to 1/65536 (0.1 -> 0.100006). The masks come from torch's default generator, so they
follow `torch.manual_seed` and a checkpoint's saved RNG state like torch's own dropout.

Only `nn.Dropout` modules change; dropout a model applies by itself (attention probabilities inside
`scaled_dot_product_attention`) stays torch's. On other devices torch's dropout is already fast (Philox),
and the module falls back to it.
"""

from __future__ import annotations

from typing import Any

import torch

_LEVELS = 1 << 16


class WordDropout(torch.nn.Dropout):
    """`nn.Dropout` whose CPU masks come from 16-bit slices of 64-bit random words (see the module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.p >= 1.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        # where, not a product with the mask: no conversion of the mask to x's dtype; backward keeps the mask only
        out = torch.where(word_mask(x.shape, self.p), x, 0.0)
        return out.mul_(1.0 / (1.0 - self.p))


def word_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A boolean mask of `shape`, each element True with probability 1 - p (to 1/65536), from torch's RNG."""
    n = 1
    for d in shape:
        n *= d
    # from the int64 minimum with no upper bound: the full 64-bit range (plain random_() leaves the sign bit 0)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    numbers = words.view(torch.int16)[:n]
    return (numbers >= round(p * _LEVELS) - _LEVELS // 2).view(shape)


def use_word_dropout(model: Any) -> int:
    """Replace every plain `nn.Dropout` in `model` by a `WordDropout` of the same rate; returns how many."""
    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                module._modules[name] = WordDropout(child.p, child.inplace)
                swapped += 1
    return swapped
