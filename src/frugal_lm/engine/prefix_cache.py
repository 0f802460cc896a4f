"""Frozen-prefix cache: run the frozen embeddings and first N encoder layers once per example, not once per epoch.

Why: with train.freeze_embeddings and train.freeze_layers=N, the hidden states that enter layer N depend only on
an example's tokens, so recomputing them every epoch is wasted work (forward only: the frozen part has no backward).

How: nothing in the module tree is replaced, so state_dict keys, module types and save_pretrained stay as they
are while the cache is installed, and `remove()` leaves the model exactly as it was.
- A forward pre-hook on the base encoder (BertModel, DistilBertModel, ...) sees each call's input_ids,
  attention_mask and token_type_ids, looks every row up by its unpadded tokens, computes the missing rows with the
  original prefix (eval mode, no_grad, stopped once layer N-1 has run) and assembles the padded batch of layer-N
  inputs (zeros at padding: masked out as attention keys, ignored by the losses).
- The embeddings module's `forward` is shadowed by an instance attribute that returns that batch, and each frozen
  layer's by a pass-through, so the model's own code (the attention mask built from attention_mask, the trainable
  layers, the pooler and head) runs unchanged on top.
The prefix is always run in eval mode (no dropout): that is what makes it cacheable, and rows that cannot be
cached (left padding, explicit position_ids, no room left) are computed the same way, so results never depend on
whether a row was a hit.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

# Model types whose base model is exactly `embeddings -> encoder layer list` (nothing in between, such as
# ELECTRA's embeddings_project), with absolute positions inside the embeddings. MiniLM, BGE, E5 are "bert".
SUPPORTED = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert")


class _Stop(Exception):
    """Raised by the last prefix module while computing misses: the rest of the model is not needed."""


def _parts(model: Any) -> tuple[nn.Module, nn.Module, nn.ModuleList] | str:
    """(base encoder, embeddings, layer list) of a transformers model or a peft PeftModel, or why not."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        return (f"the prefix cache does not support {type(hf).__name__} (model type {model_type!r}); "
                f"it supports BERT-family encoders: {', '.join(SUPPORTED)}")
    if getattr(config, "is_decoder", False):
        return f"the prefix cache does not support {model_type} configured as a decoder (is_decoder=True)"
    base = getattr(hf, "base_model", hf)
    embeddings = getattr(base, "embeddings", None)
    for stack in ("encoder", "transformer"):  # BERT/RoBERTa, DistilBERT
        layers = getattr(getattr(base, stack, None), "layer", None)
        if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList):
            return base, embeddings, layers
    return f"{type(hf).__name__}: no embeddings module and encoder layer list found for the prefix cache"


def model_supported(model: Any) -> str | None:
    """None when the cache can serve this kind of model once its prefix is frozen, else one line saying why not."""
    parts = _parts(model)
    return parts if isinstance(parts, str) else None


def prefix_cache_supported(model: Any, layers: int) -> str | None:
    """None when `PrefixCache(model, layers)` can be installed, else one line saying why not."""
    parts = _parts(model)
    if isinstance(parts, str):
        return parts
    base, embeddings, stack = parts
    if getattr(base, "_frugal_prefix_cache", None) is not None:
        return "a prefix cache is already installed on this model"
    if not isinstance(layers, int) or not 0 <= layers <= len(stack):
        return f"the prefix cache needs 0 to {len(stack)} frozen layers, got {layers!r}"
    for where, module in [("embeddings", embeddings)] + [(f"layer {i}", stack[i]) for i in range(layers)]:
        for name, p in module.named_parameters():
            if p.requires_grad:
                return (f"{where} parameter '{name}' requires grad, so the prefix it belongs to changes during "
                        f"training and cannot be cached (freeze the embeddings and the first {layers} layers)")
    return None


class PrefixCache:
    """Serves the hidden states entering layer `layers` from a per-example CPU cache; see the module docstring."""

    def __init__(self, model: Any, layers: int, max_bytes: int = 2**30) -> None:
        reason = prefix_cache_supported(model, layers)
        if reason is not None:
            raise ValueError(f"prefix cache: {reason}")
        self.base, self.embeddings, stack = _parts(model)  # type: ignore[misc]
        self.prefix: list[nn.Module] = [self.embeddings, *stack[:layers]]
        self.top = stack[layers] if layers < len(stack) else None
        self.max_bytes = max_bytes
        self.store: dict[tuple[bytes, bytes | None], torch.Tensor] = {}
        self.hits = self.misses = self.uncached = self.bytes = 0
        self.full = False
        self._tuple = False  # whether a real layer returns a tuple (older transformers) rather than a tensor
        self._pending: torch.Tensor | None = None  # layer-N inputs for the current call
        self._live = False  # run the real prefix modules: computing misses, or a call with inputs_embeds
        self._computing = False
        self._captured: torch.Tensor | None = None
        # the transformers decorators keep the signature (functools.wraps), so positional calls bind too
        self._signature = inspect.signature(type(self.base).forward)
        self._handles = [self.base.register_forward_pre_hook(self._before, with_kwargs=True),
                         self.base.register_forward_hook(self._after, always_call=True)]
        self._shadowed: list[tuple[nn.Module, Any]] = []
        for i, module in enumerate(self.prefix):
            self._shadow(module, last=i == len(self.prefix) - 1)
        self.base._frugal_prefix_cache = self

    def stats(self) -> dict[str, Any]:
        """Rows served from the cache (hits), computed for it (misses), stored rows and their bytes, whether the
        cap was reached, and rows that could not be keyed (uncached: left padding, explicit position_ids)."""
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.store), "bytes": self.bytes,
                "full": self.full, "uncached": self.uncached}

    def remove(self) -> None:
        """Restore the model exactly: drop the hooks and the shadowing `forward` attributes; free the cache."""
        for handle in self._handles:
            handle.remove()
        for module, own in reversed(self._shadowed):
            del module.forward
            if own is not None:  # someone else had shadowed forward before us
                module.forward = own
        self._handles, self._shadowed = [], []
        self.store.clear()
        self.bytes = 0
        if getattr(self.base, "_frugal_prefix_cache", None) is self:
            del self.base._frugal_prefix_cache

    def _shadow(self, module: nn.Module, last: bool) -> None:
        original = module.forward
        own = module.__dict__.get("forward")
        is_embeddings = module is self.embeddings

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._live:
                out = original(*args, **kwargs)
                if last and self._computing:
                    self._tuple = isinstance(out, tuple)
                    self._captured = out[0] if self._tuple else out
                    raise _Stop
                return out
            if is_embeddings:
                return self._pending
            hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            return (hidden,) if self._tuple else hidden

        module.forward = forward
        self._shadowed.append((module, own))

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._computing:
            return
        try:
            bound = self._signature.bind(module, *args, **kwargs).arguments
        except TypeError:
            bound = {}  # the real forward will report the bad call
        ids = bound.get("input_ids")
        if ids is None or bound.get("inputs_embeds") is not None:
            self._live = True  # embeddings given from outside: nothing to key on, so the real prefix runs
            return
        self._pending = self._batch(ids, bound.get("attention_mask"), bound.get("token_type_ids"),
                                    bound.get("position_ids"))
        if self.top is not None and getattr(self.top, "gradient_checkpointing", False) and torch.is_grad_enabled():
            # reentrant checkpointing gives no parameter gradients when no input requires grad
            self._pending.requires_grad_(True)

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._computing:
            self._pending, self._live = None, False

    def _batch(self, ids: torch.Tensor, mask: torch.Tensor | None, types: torch.Tensor | None,
               position_ids: torch.Tensor | None) -> torch.Tensor:
        """Layer-N inputs for a padded batch: cached rows, plus the missing rows computed together."""
        rows, width = ids.shape
        if mask is None:
            mask = torch.ones_like(ids)
        if mask.dim() == 2:
            lengths = (mask != 0).sum(1)
            right = (mask != 0) == (torch.arange(width, device=mask.device) < lengths[:, None])
        if position_ids is not None or mask.dim() != 2 or not bool(right.all()):
            # a row's states depend on more than its tokens (left padding shifts BERT's positions): not keyable
            self.uncached += rows
            return self._compute(ids, mask, types, position_ids)
        lengths = lengths.tolist()
        ids_cpu = ids.cpu()
        types_cpu = types.cpu() if types is not None else None
        keys = [(ids_cpu[i, :n].numpy().tobytes(),
                 types_cpu[i, :n].numpy().tobytes() if types_cpu is not None else None)
                for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.hits += rows - len(missing)
        self.misses += len(missing)
        fresh: dict[tuple[bytes, bytes | None], torch.Tensor] = {}
        if missing:
            n = max(lengths[i] for i in missing)  # the missing rows padded among themselves only
            index = torch.tensor(missing, device=ids.device)
            states = self._compute(ids[index, :n], mask[index, :n], types[index, :n] if types is not None else None)
            for j, i in enumerate(missing):
                row = states[j, : lengths[i]].to("cpu", copy=True)
                fresh[keys[i]] = row
                self._keep(keys[i], row)
        found = [fresh[key] if key in fresh else self.store[key] for key in keys]
        dtype = functools.reduce(torch.promote_types, (row.dtype for row in found))
        out = torch.zeros(rows, width, found[0].shape[-1], dtype=dtype)
        for i, row in enumerate(found):
            out[i, : row.shape[0]] = row
        return out.to(ids.device)

    def _keep(self, key: tuple[bytes, bytes | None], row: torch.Tensor) -> None:
        if key in self.store or self.full:
            return
        size = row.numel() * row.element_size() + len(key[0]) + len(key[1] or b"")
        if self.bytes + size > self.max_bytes:
            self.full = True  # keep what is stored; later misses are computed each time
            return
        self.store[key] = row
        self.bytes += size

    def _compute(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run the original prefix on a padded batch (eval mode, no_grad) and return what enters layer N."""
        kwargs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "position_ids": position_ids}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        modes = [(m, m.training) for p in self.prefix for m in p.modules()]
        self._live = self._computing = True
        self._captured = None
        try:
            for p in self.prefix:
                p.eval()
            with torch.no_grad():
                try:
                    self.base(**kwargs)
                except _Stop:
                    pass
        finally:
            for m, mode in modes:
                m.training = mode
            self._live = self._computing = False
        captured, self._captured = self._captured, None
        if captured is None:
            raise RuntimeError("prefix cache: the model did not run its frozen layers as expected")
        return captured
