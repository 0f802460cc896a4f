"""The fused LM head + cross-entropy (lm/head_loss.py) equals the plain computation, in loss and gradients;
the clm task's fast path equals its generic path on a real tiny GPT-2 (tied head, LoRA, padding); LoRA on the
top layers only (`peft.top_layers`) adapts those layers and no others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from frugal_lm.lm.head_loss import IGNORE, fused_head, linear_cross_entropy


@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cross_entropy_equals_cross_entropy_of_the_head(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(101, 12, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 12, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(37, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    t = torch.randint(0, 37, (101,), generator=g)
    t[::5] = IGNORE
    params = [x for x in (h, w, b) if x is not None]

    fused = linear_cross_entropy(h, w, b, t, chunk=chunk)
    (fused * 3.0).backward()  # a scaled upstream gradient, as gradient accumulation gives
    got = [x.grad.clone() for x in params]
    for x in params:
        x.grad = None
    logits = h @ w.t() + (b if b is not None else 0)
    plain = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum")
    (plain * 3.0).backward()

    assert float(fused.detach()) == pytest.approx(float(plain.detach()), rel=1e-9)
    for mine, ref in zip(got, [x.grad for x in params], strict=True):
        assert torch.allclose(mine, ref, rtol=1e-9, atol=1e-10)


def test_no_gradient_work_without_grad():
    h, w = torch.randn(9, 4), torch.randn(5, 4)
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, IGNORE])
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, None, t, chunk=4)
    assert float(loss) == pytest.approx(float(F.cross_entropy(h @ w.t(), t, reduction="sum")), rel=1e-5)


def _task_and_batch(model_dir: Path, tmp_path: Path, padded: bool):
    from frugal_lm.config import load_config
    from frugal_lm.models.loading import load_tokenizer
    from frugal_lm.tasks import get_task

    cfg = load_config(overrides={"task": "clm", "output": str(tmp_path / "run"),
                                 "model": {"name": str(model_dir), "max_length": 16}})
    task = get_task("clm")(cfg)
    task.tokenizer = tok = load_tokenizer(str(model_dir))
    texts = ["the movie was good and the plot was lovely", "a dull film"]
    rows = [tok(x, add_special_tokens=False)["input_ids"][:10] for x in texts]
    if not padded:
        rows = [r[:3] for r in rows]
    examples = [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows]
    return task, task.collator()(examples)


def _grads(task, model, batch, fused: bool):
    task.options.fused_loss = fused
    model.zero_grad(set_to_none=True)
    loss, count = task.loss(model, batch)
    loss.backward()
    return float(loss.detach()), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("lora", [False, True])
def test_clm_fused_loss_equals_generic_loss(tiny_gpt2_dir, tmp_path, padded, lora):
    from frugal_lm.engine.savers import apply_lora

    task, batch = _task_and_batch(tiny_gpt2_dir, tmp_path, padded)
    assert bool((batch["attention_mask"] == 0).any()) == padded
    torch.manual_seed(0)
    model = task.build_model(str(tiny_gpt2_dir))
    assert model.config.tie_word_embeddings  # the head's gradient also reaches the input embeddings
    if lora:
        model = apply_lora(model, 4, 8, 0.0, ["c_attn"], "CAUSAL_LM")
    model.train()
    for m in model.modules():  # dropout off, so the two paths see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert fused_head(model) is not None
    loss_f, count_f, grads_f = _grads(task, model, batch, fused=True)
    loss_g, count_g, grads_g = _grads(task, model, batch, fused=False)
    assert count_f == count_g == int((batch["attention_mask"][:, 1:] == 1).sum())
    assert loss_f == pytest.approx(loss_g, rel=1e-5)
    assert grads_f.keys() == grads_g.keys() and grads_f
    for name in grads_f:
        assert torch.allclose(grads_f[name], grads_g[name], rtol=1e-4, atol=1e-6), name


def test_top_layers_adapts_only_the_last_layers(tiny_gpt2_dir):
    import transformers

    from frugal_lm.engine.savers import apply_lora
    from frugal_lm.errors import ConfigError

    def build():
        return transformers.AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))

    model = apply_lora(build(), 4, 8, 0.0, ["c_attn", "c_fc"], "CAUSAL_LM", top_layers=1)
    adapted = {n.split(".h.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted == {str(build().config.n_layer - 1)}
    with pytest.raises(ConfigError, match="peft.top_layers: the model has 2 layers, got 3"):
        apply_lora(build(), 4, 8, 0.0, ["c_attn"], "CAUSAL_LM", top_layers=3)
