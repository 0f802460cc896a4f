"""The frozen-prefix cache: same numbers as the uncached model, right hit/miss counts, a hard memory cap, and a
model left exactly as it was. Tiny random BERT / DistilBERT models, built here (milliseconds each)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from frugal_lm.engine.prefix_cache import PrefixCache, prefix_cache_supported

FROZEN = 2


def tiny(kind: str = "seq") -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=100, num_labels=3, initializer_range=0.3)  # logits of order 1, not 0.01
    if kind == "distil":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=3, n_heads=2, hidden_dim=64, dropout=0.1,
                                            attention_dropout=0.1, **common)
        return transformers.DistilBertForSequenceClassification(cfg)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **common)
    cls = transformers.BertForTokenClassification if kind == "token" else transformers.BertForSequenceClassification
    return cls(cfg)


def parts(model):
    base = model.get_base_model().base_model if hasattr(model, "get_base_model") else model.base_model
    layers = base.encoder.layer if hasattr(base, "encoder") else base.transformer.layer
    return base.embeddings, layers


def frozen(model, n: int = FROZEN):
    """Freeze the prefix and zero the dropout above it, keeping the prefix's own dropout (0.1): the cache must run
    the prefix in eval mode, so a cache that forgot would not match the reference."""
    embeddings, layers = parts(model)
    prefix = [embeddings, *layers[:n]]
    inside = {id(m) for p in prefix for m in p.modules()}
    for p in prefix:
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and id(m) not in inside:
            m.p = 0.0
    return model


def reference_mode(model, n: int = FROZEN):
    """What the cache computes: train mode, with the frozen prefix in eval mode."""
    model.train()
    embeddings, layers = parts(model)
    for p in [embeddings, *layers[:n]]:
        p.eval()


def batch(examples, width, kind="seq", types=True, left=False):
    """Pad `examples` (lists of ids) to `width`, right-padded unless `left`."""
    rows = len(examples)
    ids = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for i, ex in enumerate(examples):
        where = slice(width - len(ex), width) if left else slice(0, len(ex))
        ids[i, where] = torch.tensor(ex)
        mask[i, where] = 1
    g = torch.Generator().manual_seed(sum(map(sum, examples)))
    if kind == "token":
        labels = torch.randint(0, 3, (rows, width), generator=g).masked_fill(mask == 0, -100)
    else:
        labels = torch.randint(0, 3, (rows,), generator=g)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if types and kind != "distil":
        out["token_type_ids"] = (torch.arange(width) >= 3).long().expand(rows, -1) * mask
    return out


def examples(n, seed=0, lo=3, hi=9):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 100, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def close(a, b, mask=None):
    if mask is not None and a.dim() == 3:  # token logits: padding positions legitimately differ
        a, b = a[mask.bool()], b[mask.bool()]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def trainable_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["seq", "token", "distil"])
def test_cached_forward_and_gradients_equal_the_uncached_model(kind):
    ref = frozen(tiny(kind))
    model = copy.deepcopy(ref)
    cache = PrefixCache(model, layers=FROZEN)
    exs = examples(5)
    # the same rows at two padding widths, then again (hits), then with new rows mixed in
    batches = [batch(exs[:3], 8, kind), batch(exs[:3], 13, kind), batch(exs, 10, kind), batch(exs, 10, kind)]
    for b in batches:
        model.train()
        reference_mode(ref)
        for m in (model, ref):
            m.zero_grad()
        got, want = model(**b), ref(**b)
        close(got.logits, want.logits, b["attention_mask"])
        close(got.loss, want.loss)
        got.loss.backward()
        want.loss.backward()
        want_grads = trainable_grads(ref)
        for name, grad in trainable_grads(model).items():
            close(grad, want_grads[name])
    assert cache.stats()["misses"] == 5 and cache.stats()["hits"] == 3 + 3 + 5


def test_training_with_the_cache_gives_the_same_weights():
    ref = frozen(tiny("token"))
    model = copy.deepcopy(ref)
    cache = PrefixCache(model, layers=FROZEN)
    exs = examples(9, seed=1)
    data = [batch(exs[i:i + 3], 9, "token") for i in range(0, 9, 3)]
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (model, ref)]
    for _epoch in range(2):
        for b in data:
            model.train()
            reference_mode(ref)
            for m, opt in zip((model, ref), opts, strict=True):
                opt.zero_grad()
                m(**b).loss.backward()
                opt.step()
    want = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        # a key bias adds one constant to all of a query's scores, which softmax ignores: its gradient is zero up
        # to rounding, and Adam's normalisation turns that rounding noise into full-size steps in both models
        if not name.endswith("key.bias"):
            close(p, want[name])
    assert cache.stats()["hits"] == 9 and cache.stats()["misses"] == 9
    assert not torch.equal(parts(model)[1][FROZEN].output.dense.weight,
                           parts(tiny("token"))[1][FROZEN].output.dense.weight)  # the top did train


def test_hits_and_misses_are_counted_per_example():
    model = frozen(tiny())
    cache = PrefixCache(model, layers=FROZEN)
    a, b, c, d = examples(4, seed=2)
    model(**batch([a, b, c], 9))
    assert cache.stats() | {"bytes": 0} == {"hits": 0, "misses": 3, "entries": 3, "bytes": 0, "full": False,
                                           "uncached": 0}
    model(**batch([c, a, b], 9))  # second epoch, other order
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (3, 3)
    model(**batch([a, d], 20))  # a at another padding width is a hit; d is new
    assert (cache.stats()["hits"], cache.stats()["misses"], cache.stats()["entries"]) == (4, 4, 4)
    other_types = batch([a], 9)
    other_types["token_type_ids"] = other_types["attention_mask"].clone()  # same ids, other segments
    model(**other_types)
    assert (cache.stats()["misses"], cache.stats()["entries"]) == (5, 5)


def test_a_full_cache_stops_storing_and_stays_exact():
    ref = frozen(tiny())
    model = copy.deepcopy(ref)
    exs = examples(6, seed=3, lo=4, hi=5)  # all 4 tokens: 4 x 32 floats + 2 keys of 4 int64 = 576 bytes each
    cache = PrefixCache(model, layers=FROZEN, max_bytes=1200)
    for epoch in range(3):
        model.train()
        reference_mode(ref)
        b = batch(exs, 7)
        close(model(**b).logits, ref(**b).logits)
        stats = cache.stats()
        assert stats["entries"] == 2 and stats["bytes"] == 2 * 576 and stats["full"]
        assert stats["hits"] == 2 * epoch and stats["misses"] == 6 + 4 * epoch


def test_left_padding_is_computed_live_and_stays_exact():
    ref = frozen(tiny("token"))
    model = copy.deepcopy(ref)
    cache = PrefixCache(model, layers=FROZEN)
    model.train()
    reference_mode(ref)
    b = batch(examples(3, seed=4), 10, "token", types=False, left=True)
    close(model(**b).logits, ref(**b).logits, b["attention_mask"])
    assert cache.stats()["entries"] == 0 and cache.stats()["uncached"] == 3


def test_a_lora_model_with_adapters_above_the_prefix():
    peft = pytest.importorskip("peft")
    ref = frozen(tiny())
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], layers_to_transform=[2],
                             modules_to_save=["classifier"], lora_dropout=0.0)
    ref = peft.get_peft_model(ref, config)
    for p in ref.base_model.model.classifier.parameters():
        p.requires_grad_(True)
    model = copy.deepcopy(ref)
    assert prefix_cache_supported(model, FROZEN) is None
    cache = PrefixCache(model, layers=FROZEN)
    for _ in range(2):
        model.train()
        reference_mode(ref)
        b = batch(examples(4, seed=5), 9)
        close(model(**b).loss, ref(**b).loss)
    assert cache.stats()["hits"] == 4


def test_remove_restores_the_model_and_save_pretrained_round_trips(tmp_path):
    model = frozen(tiny())
    types_before = [(n, type(m)) for n, m in model.named_modules()]
    keys_before = list(model.state_dict())
    cache = PrefixCache(model, layers=FROZEN)
    assert list(model.state_dict()) == keys_before  # nothing swapped even while installed
    model.train()
    model(**batch(examples(3), 9)).loss.backward()
    cache.remove()
    assert [(n, type(m)) for n, m in model.named_modules()] == types_before
    assert list(model.state_dict()) == keys_before
    assert not any("forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert cache.stats()["entries"] == 0
    assert prefix_cache_supported(model, FROZEN) is None  # can be installed again

    model.eval()
    b = batch(examples(4, seed=6), 9)
    b.pop("labels")
    with torch.no_grad():
        want = model(**b).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        close(loaded(**b).logits, want)


def test_reasons_when_the_cache_cannot_be_used():
    model = frozen(tiny())
    parts(model)[1][1].attention.self.query.weight.requires_grad_(True)
    reason = prefix_cache_supported(model, FROZEN)
    assert "layer 1" in reason and "requires grad" in reason
    assert prefix_cache_supported(model, 1) is None  # layer 1 is not in a 1-layer prefix
    assert "0 to 3" in prefix_cache_supported(model, 4)
    with pytest.raises(ValueError, match="requires grad"):
        PrefixCache(model, layers=FROZEN)

    unfrozen = tiny()
    assert "embeddings parameter" in prefix_cache_supported(unfrozen, 0)

    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2))
    llama.requires_grad_(False)
    assert "does not support LlamaForCausalLM" in prefix_cache_supported(llama, 1)

    installed = frozen(tiny())
    PrefixCache(installed, layers=FROZEN)
    assert "already installed" in prefix_cache_supported(installed, FROZEN)


def test_train_cache_prefix_gives_the_uncached_run_and_exports_a_plain_model(tiny_encoder_nodrop_dir,
                                                                              sentiment_files, tmp_path):
    """The engine with train.cache_prefix: the same weights as without it (no dropout anywhere, so the cached
    prefix in eval mode is the uncached prefix), a hit for every example after the first epoch, and a model/
    folder that plain transformers loads."""
    import json

    import transformers

    from conftest import make_config
    from frugal_lm.engine.run import train

    runs = {}
    for cached in (False, True):
        cfg = make_config(tiny_encoder_nodrop_dir, sentiment_files, tmp_path / f"run{cached}", epochs=3,
                          freeze_embeddings=True, freeze_layers=1, cache_prefix=cached, precision="fp32")
        runs[cached] = train(cfg, progress=False)
    stats = runs[True]["prefix_cache"]
    assert stats["entries"] >= 48 and stats["hits"] >= 2 * 48  # epochs 2 and 3 (and evaluations) all hits
    a = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "runFalse" / "model"))
    b = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "runTrue" / "model"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name
    metrics = json.loads((tmp_path / "runTrue" / "metrics.json").read_text())
    assert metrics["best"]["accuracy"] == pytest.approx(runs[False]["best"]["accuracy"])


def test_train_cache_prefix_without_frozen_layers_is_a_clear_error(tiny_encoder_dir, sentiment_files, tmp_path):
    from conftest import make_config
    from frugal_lm.engine.run import train
    from frugal_lm.errors import FrugalError

    cfg = make_config(tiny_encoder_dir, sentiment_files, tmp_path / "run", cache_prefix=True)
    with pytest.raises(FrugalError, match=r"train.cache_prefix: needs train.freeze_embeddings=true and "
                                          r"train.freeze_layers N > 0"):
        train(cfg, progress=False)
