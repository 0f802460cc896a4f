"""Last encoder layer on the first token only, for classifiers that read nothing else.

Why: BERT-family sequence classifiers (the pooler of BertForSequenceClassification, RoBERTa's and ELECTRA's
classification heads) read the final hidden state of position 0 and nothing else. In the last layer every other
position is still needed as an attention key and value, but its query, attention output projection, feed-forward
block and layer norms are not: they are about 10/12 of that layer's matrix work, about 14% of a 6-layer
encoder's (forward and backward). HF computes them anyway.

How: the last layer's `forward` is shadowed by an instance attribute (state_dict keys, module types and
save_pretrained stay as they are). Outside `first_token_only(model)` it calls the layer's own forward; inside,
it projects keys and values from every position, the query from position 0 only, and runs the rest of the layer
on that one row, so the model's last hidden state has length 1 and its logits are those of the full layer (the
same arithmetic on the same row: equal in eval mode, and in training up to which dropout draws fall where).
Anything not matching the layout it knows (cross-attention, chunked feed-forward, an attention mask other than
None or a dense tensor) runs the layer's own forward.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn

# Sequence classifiers whose head reads the last hidden state at position 0 only, on BertLayer-shaped layers
# (attention.self.{query,key,value}, attention.output, feed_forward_chunk). MiniLM, BGE and E5 are "bert".
SUPPORTED = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
             "xlm-roberta": "XLMRobertaForSequenceClassification",
             "camembert": "CamembertForSequenceClassification",
             "electra": "ElectraForSequenceClassification"}


def _last_layer(model: Any) -> nn.Module | None:
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(hf, "config", None)
    if SUPPORTED.get(getattr(config, "model_type", None)) != type(hf).__name__:
        return None
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    layers = getattr(getattr(getattr(hf, "base_model", None), "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    cache = getattr(hf.base_model, "_frugal_prefix_cache", None)
    if cache is not None and cache.top is None:
        return None  # the whole encoder is served by the frozen-prefix cache: the last layer is a pass-through
    layer = layers[-1]
    if "forward" in layer.__dict__ and "_frugal_first_token" not in layer.__dict__:
        return None  # someone else shadows this layer's forward
    attention = getattr(layer, "attention", None)
    sa = getattr(attention, "self", None)
    if not (all(hasattr(sa, a) for a in ("query", "key", "value", "dropout", "scaling", "attention_head_size"))
            and hasattr(attention, "output") and hasattr(layer, "feed_forward_chunk")
            and getattr(layer, "chunk_size_feed_forward", 0) == 0):
        return None
    return layer


def _install(layer: nn.Module) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # imports torch: not at module load

    original = layer.forward
    sa = layer.attention.self
    eager = getattr(sys.modules[type(sa).__module__], "eager_attention_forward", None)

    def forward(hidden_states: Any, attention_mask: Any = None, encoder_hidden_states: Any = None,
                *args: Any, **kwargs: Any) -> Any:
        mask = attention_mask
        if mask is not None and (not hasattr(mask, "dim") or mask.dim() != 4):
            mask = False  # a block mask or another layout: not ours to slice
        if (not layer._frugal_first_token or encoder_hidden_states is not None or args or mask is False
                or kwargs.get("cache") is not None or kwargs.get("encoder_attention_mask") is not None
                or eager is None):
            return original(hidden_states, attention_mask, encoder_hidden_states, *args, **kwargs)
        kwargs.pop("cache", None)
        kwargs.pop("encoder_attention_mask", None)
        if mask is not None:
            mask = mask[:, :, :1]  # the query row of position 0 (or the one broadcast row)
        batch = hidden_states.shape[0]
        first = hidden_states[:, :1]
        size = sa.attention_head_size
        query = sa.query(first).view(batch, 1, -1, size).transpose(1, 2)
        key = sa.key(hidden_states).view(batch, hidden_states.shape[1], -1, size).transpose(1, 2)
        value = sa.value(hidden_states).view(batch, hidden_states.shape[1], -1, size).transpose(1, 2)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager)
        out, _ = attend(sa, query, key, value, mask, dropout=sa.dropout.p if sa.training else 0.0,
                        scaling=sa.scaling, **kwargs)
        out = layer.attention.output(out.reshape(batch, 1, -1).contiguous(), first)
        return layer.feed_forward_chunk(out)

    layer.forward = forward
    layer._frugal_first_token = False


@contextlib.contextmanager
def first_token_only(model: Any) -> Iterator[bool]:
    """Within the block, the model's last layer computes position 0 only (see the module doc); yields whether
    the model is one this applies to. Nested and repeated use is fine; the model is unchanged outside."""
    layer = _last_layer(model)
    if layer is None:
        yield False
        return
    if "_frugal_first_token" not in layer.__dict__:
        _install(layer)
    before = layer._frugal_first_token
    layer._frugal_first_token = True
    try:
        yield True
    finally:
        layer._frugal_first_token = before
