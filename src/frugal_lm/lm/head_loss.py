"""Next-token loss without the full logits tensor: the output head and the cross-entropy, fused, in chunks.

A causal LM's loss usually materialises logits for every position over the whole vocabulary (8 x 128 x 49,152
floats = 200 MB for SmolLM2 at batch 8), slices off the last position (a copy), runs log-softmax, and in the
backward pass writes a zero-filled gradient of the same size before it copies the slice's gradient in. On a
CPU that memory traffic costs as much as a third of the head's matmuls. Here the head's matmul, the softmax
and the gradient with respect to the hidden states are computed chunk by chunk in the forward pass, so the
largest temporary is one chunk of logits and the backward pass only scales what was kept. The result equals
`F.cross_entropy(lm_head(hidden), target, reduction="sum")` to float rounding (tests/test_head_loss.py).

Used by the clm task (and anything that trains a causal LM head) when the model is one whose logits are the
plain head projection of the last hidden state (`fused_head`); other models keep the generic path.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100
# Logits per chunk: 2**26 floats (256 MB), i.e. 1,365 rows of SmolLM2's 49,152-word vocabulary, so a batch of
# 8 x 128 tokens is one chunk. Smaller chunks save memory but cost speed on a CPU: the head's matmul with
# 256 rows ran 10-15% slower than with 1,024 (BENCHMARKS.md); the full-logits loss needs 3-4x this much.
LOGITS_PER_CHUNK = 2**26
# Model families whose causal-LM logits are exactly `lm_head(final hidden state)`: no logit soft-capping,
# scaling or extra bias (gemma2's softcap, granite's and cohere's logit scales are why it is a list).
PLAIN_HEADS = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo2", "smollm3"}


def _make_function() -> Any:
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum over rows of CE(hidden @ weight.T + bias, target); gradients computed in the forward pass."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, target: Any, chunk: int) -> Any:
            need_h, need_w = hidden.requires_grad, weight.requires_grad
            need_b = bias is not None and bias.requires_grad
            grad_h = torch.empty_like(hidden) if need_h else None
            acc = torch.promote_types(hidden.dtype, torch.float32)  # half precision accumulates in fp32
            grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
            total = hidden.new_zeros((), dtype=acc)
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start:start + chunk], target[start:start + chunk]
                logits = (h @ weight.t()).to(acc)  # [c, V]
                if bias is not None:
                    logits += bias.to(acc)
                keep = t != IGNORE
                safe = t.clamp(min=0)
                picked = logits.gather(1, safe[:, None])[:, 0]
                # log-sum-exp by hand, so the one exp pass also gives the softmax the gradient needs
                # (torch.logsumexp would exponentiate into a temporary, then a second pass would again)
                top = logits.amax(dim=-1, keepdim=True)
                logits.sub_(top).exp_()
                norm = logits.sum(dim=-1)
                lse = top[:, 0] + norm.log()
                total += ((lse - picked) * keep).sum()
                if not (need_h or need_w or need_b):
                    continue
                # d loss / d logits = softmax - onehot(target), zero on ignored rows; computed in place
                logits.div_(norm[:, None])
                logits.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
                logits.mul_(keep[:, None])
                g = logits.to(hidden.dtype)
                if need_h:
                    grad_h[start:start + chunk] = g @ weight
                if need_w:
                    grad_w.addmm_(g.t().to(acc), h.to(acc))
                if need_b:
                    grad_b += logits.sum(0)
            ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
            ctx.needs = (need_h, need_w, need_b)
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            saved = list(ctx.saved_tensors)
            need_h, need_w, need_b = ctx.needs
            gh = gw = gb = None
            if need_h:
                gh = saved.pop(0)
                gh = gh * grad_out.to(gh.dtype)
            if need_w:
                gw = (saved.pop(0) * grad_out).to(ctx.dtypes[0])
            if need_b:
                gb = (saved.pop(0) * grad_out).to(ctx.dtypes[1])
            return gh, gw, gb, None, None

    return LinearCrossEntropy


_FUNCTION: Any = None


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, target: Any, chunk: int | None = None) -> Any:
    """Cross-entropy of `hidden @ weight.T + bias` against `target`, summed over rows (IGNORE rows skipped).

    Args:
        hidden: [N, H] hidden states (any leading shape is flattened by the caller).
        weight: [V, H] output head; bias: [V] or None.
        target: [N] token ids, IGNORE (-100) where there is no target.
        chunk: rows of logits computed at a time (default: as many as LOGITS_PER_CHUNK allows, at least 64).
    """
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    if chunk is None:
        chunk = max(64, LOGITS_PER_CHUNK // max(1, weight.shape[0]))
    return _FUNCTION.apply(hidden, weight, bias, target, chunk)


def fused_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, head) of a causal LM whose logits are `head(decoder(...).last_hidden_state)`, else None.

    Works through a peft wrapper (LoRA layers live inside the decoder's modules). A head that peft wraps
    (LoRA on lm_head, modules_to_save) is not a plain Linear and keeps the generic path.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEADS:
        return None
    if getattr(base.config, "final_logit_softcapping", None):
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or decoder is base:
        return None
    return decoder, head
