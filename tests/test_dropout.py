"""Dropout from random words (engine/dropout.py) and the fused AdamW kernel: what the engine trains with on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import make_config
from frugal_lm.engine.dropout import WordDropout, use_word_dropout, word_mask


def test_every_16_bit_lane_keeps_at_the_asked_rate():
    torch.manual_seed(0)
    for p in (0.1, 0.5):
        mask = word_mask((400_000, 4), p)
        # column c holds lane c of every 64-bit word: plain random_() would leave lane 3's sign bit 0 and keep
        # all of it at p <= 0.5
        rates = mask.float().mean(0)
        assert torch.allclose(rates, torch.full((4,), 1 - p), atol=0.004), rates
    assert word_mask((3, 5, 7), 0.2).shape == (3, 5, 7)


def test_word_dropout_scales_the_kept_passes_gradients_and_follows_the_seed():
    x = torch.randn(64, 48, requires_grad=True)
    drop = WordDropout(0.25)
    torch.manual_seed(3)
    y = drop(x)
    y.sum().backward()
    kept = y != 0
    assert 0.65 < kept.float().mean() < 0.85
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert torch.equal(x.grad, kept.float() / 0.75)  # the gradient of the sum: 1/(1-p) where kept, else 0
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # the same seed, the same mask (a resumed run replays it)
    assert not torch.equal(drop(x), y)
    drop.eval()
    assert torch.equal(drop(x), x)


def test_the_engine_swaps_plain_dropout_and_uses_fused_adamw_on_cpu(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.engine.run import _build
    from frugal_lm.engine.trainer import Trainer

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=1)
    task, model = _build(cfg)
    plain = [m.p for m in model.modules() if type(m) is torch.nn.Dropout]
    assert plain and any(p > 0 for p in plain)
    Path(cfg.output).mkdir(parents=True)
    trainer = Trainer(model, task, task.train_set, task.collator(), cfg.train, cfg.output)
    swapped = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert swapped == plain
    assert all(type(m) is WordDropout for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    assert trainer.optimizer.defaults["fused"] is True
    assert use_word_dropout(trainer.model) == 0  # nothing plain left to swap
