"""The last encoder layer on position 0 only (engine/first_token.py): the same logits and gradients, less work."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from conftest import make_config
from frugal_lm.engine.first_token import first_token_only
from frugal_lm.engine.prefix_cache import PrefixCache


def _batch(vocab: int = 90) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (6, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[4, 3:] = 0  # padded rows: position 0's query must not see padding keys
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _last_lengths(model) -> list[int]:
    """Sequence length of the last encoder layer's output at each call, recorded by a forward hook."""
    seen: list[int] = []
    layer = model.base_model.encoder.layer[-1]
    layer.register_forward_hook(lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).shape[1]))
    return seen


def test_logits_equal_the_full_layer_and_only_position_0_is_computed(tiny_encoder_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=3).eval()
    seen = _last_lengths(model)
    batch = _batch()
    with torch.no_grad():
        full = model(**batch).logits
        with first_token_only(model) as applied:
            short = model(**batch).logits
        after = model(**batch).logits
    assert applied is True
    assert seen == [11, 1, 11]  # the block changes the last layer's work, and only inside it
    assert torch.allclose(full, short, atol=1e-6), (full - short).abs().max()
    assert torch.equal(full, after)


def test_gradients_equal_the_full_layer(tiny_encoder_nodrop_dir):
    grads = []
    for short in (False, True):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_nodrop_dir, num_labels=2)
        model.train()
        torch.manual_seed(0)
        model.classifier.reset_parameters()
        batch = _batch()
        if short:
            with first_token_only(model):
                logits = model(**batch).logits
        else:
            logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0, 1, 0])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    # every layer gets a gradient, the last layer's query included (it now sees one row per example)
    assert any("layer.1.attention.self.query" in n for n in grads[1])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_a_roberta_classifier_gets_it_too():
    config = RobertaConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=40, num_labels=2, pad_token_id=1)
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    seen = _last_lengths(model)
    batch = _batch()
    batch["input_ids"][batch["attention_mask"] == 0] = 1
    with torch.no_grad():
        full = model(**batch).logits
        with first_token_only(model) as applied:
            short = model(**batch).logits
    assert applied and seen == [11, 1]
    assert torch.allclose(full, short, atol=1e-6)


def test_models_that_read_every_position_are_left_alone(tiny_encoder_dir):
    model = AutoModelForTokenClassification.from_pretrained(tiny_encoder_dir, num_labels=3).eval()
    seen = _last_lengths(model)
    with torch.no_grad(), first_token_only(model) as applied:
        logits = model(**_batch()).logits
    assert applied is False
    assert seen == [11] and logits.shape == (6, 11, 3)
    assert "forward" not in model.base_model.encoder.layer[-1].__dict__


def test_state_dict_and_saved_model_are_unchanged(tiny_encoder_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2).eval()
    keys = list(model.state_dict())
    batch = _batch()
    with torch.no_grad(), first_token_only(model):
        short = model(**batch).logits
    assert list(model.state_dict()) == keys
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, short, atol=1e-6)


def test_a_prefix_cache_over_every_layer_turns_it_off(tiny_encoder_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2).eval()
    batch = _batch()
    with torch.no_grad():
        full = model(**batch).logits
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    for p in model.bert.encoder.parameters():
        p.requires_grad_(False)
    cache = PrefixCache(model, layers=2)  # the last layer is a pass-through serving cached final states
    with torch.no_grad(), first_token_only(model) as applied:
        cached = model(**batch).logits
    cache.remove()
    assert applied is False
    assert torch.allclose(full, cached, atol=1e-5)


def test_the_classify_task_trains_and_predicts_with_it(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.engine.run import _build

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=1)
    task, model = _build(cfg)
    seen = _last_lengths(model)
    batch = task.collator()(task.train_set[:4])
    logits = task.logits(model, batch)
    assert seen == [1] and logits.shape == (4, 2)
    loss, n = task.loss(model, batch)
    loss.backward()
    assert n == 4 and seen == [1, 1]
    assert model.bert.encoder.layer[-1].output.dense.weight.grad is not None


def test_classify_first_token_false_runs_the_whole_last_layer(tiny_encoder_dir, sentiment_files, tmp_path):
    from frugal_lm.config import load_config
    from frugal_lm.engine.run import _build

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", epochs=1)
    cfg = load_config(overrides={**cfg.to_dict(), "classify": {"method": "finetune", "first_token": False}})
    task, model = _build(cfg)
    seen = _last_lengths(model)
    batch = task.collator()(task.train_set[:4])
    task.logits(model, batch)
    assert seen == [batch["input_ids"].shape[1]]
