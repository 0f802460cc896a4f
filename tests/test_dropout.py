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


def _tiny_bert(attention_dropout: float = 0.5):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout,
                        attn_implementation="sdpa")
    return BertModel(config)


def _reference_attention(q, k, v, keep, p, scaling, mask=None):
    """softmax(q k^T s + mask), masked by `keep` and scaled by 1/(1-p), times v; in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1) * keep / (1 - p)
    return (probs @ v).transpose(1, 2)


def test_word_attention_drops_probabilities_with_word_masks_and_ignores_masked_keys():
    from frugal_lm.engine.dropout import word_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 4, 6, 8, generator=g) for _ in range(3))
    mask = torch.ones(3, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :, 4:] = False  # the second sequence is 4 tokens long
    torch.manual_seed(5)
    out = word_attention(q, k, v, mask, 0.3, 0.125)
    torch.manual_seed(5)
    keep = word_mask((3, 4, 6, 6), 0.3)  # the same draw: the mask comes from torch's generator
    assert out.shape == (3, 6, 4, 8) and out.is_contiguous()
    assert torch.allclose(out.double(), _reference_attention(q, k, v, keep, 0.3, 0.125, mask), atol=1e-5)
    # keys beyond a sequence's length carry no weight, whatever their values
    v2 = v.clone()
    v2[1, :, 4:] = 1e4
    torch.manual_seed(5)
    assert torch.allclose(word_attention(q, k, v2, mask, 0.3, 0.125), out)
    # an additive mask (0 / -inf) means the same as the boolean one
    torch.manual_seed(5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(word_attention(q, k, v, additive, 0.3, 0.125), out, atol=1e-6)


def test_word_attention_in_bf16_stays_near_float64():
    from frugal_lm.engine.dropout import word_attention

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(4, 12, 24, 32, generator=g) for _ in range(3))
    torch.manual_seed(0)
    out = word_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.1, 32 ** -0.5)
    torch.manual_seed(0)
    keep = word_mask((4, 12, 24, 24), 0.1)
    ref = _reference_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), keep, 0.1, 32 ** -0.5)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 on the output, as bf16 matmuls give anyway
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-2, rel


def test_marked_attention_uses_word_masks_in_training_and_is_unbiased():
    from frugal_lm.engine.dropout import use_word_dropout

    model, plain = _tiny_bert(), _tiny_bert()
    use_word_dropout(model)
    attention = [m for m in model.modules() if getattr(m, "_frugal_word_attention", False)]
    assert len(attention) == 2  # one self-attention module per layer
    assert not any(getattr(m, "_frugal_word_attention", False) for m in plain.modules())
    ids = torch.tensor([[2, 7, 9, 11, 13, 3], [2, 8, 10, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    model.eval(), plain.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        # eval mode: the patched function falls through to transformers' sdpa
        assert torch.allclose(plain(input_ids=ids, attention_mask=mask).last_hidden_state, expected, atol=1e-6)
        model.train(), plain.train()
        torch.manual_seed(4)
        first = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.manual_seed(4)
        again = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.manual_seed(4)
        theirs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(first, again)  # the seed decides the masks (a resumed run replays them)
        assert not torch.allclose(first, expected, atol=1e-3)  # dropout is on
        assert not torch.allclose(first, theirs, atol=1e-3)  # and from word masks, not torch's bernoulli_
        # dropout keeps the expectation of each layer's attention output; the mean over many draws moves towards
        # the eval output (exactly only for one linear layer: the check is loose)
        runs = torch.stack([model(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(400)])
    assert (runs.mean(0) - expected).abs().mean() < 0.5 * (first - expected).abs().mean()
    # gradients reach the attention weights through the word-masked path
    model.zero_grad()
    model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
