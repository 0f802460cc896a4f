"""Fill in masked tokens: the top predictions of a masked LM for each mask in a text.

`fill_mask(model, tokenizer, ["Paris is the [MASK] of France."])` gives, per text, the `top_k` candidates
for its mask, best first, each `{"token", "token_id", "score", "sequence"}` (score: the softmax
probability; sequence: the text with that token in place of the mask, decoded). A text with several masks
gets a list per mask, in order, each candidate scored independently with all the masks still in place
(as the transformers `fill-mask` pipeline does). The literal `[MASK]` is accepted for any tokenizer, beside
its own mask token (`<mask>` for RoBERTa-style vocabularies).

`load_masked_lm(name_or_run)` loads a bundled alias, a model folder or a frugal run folder as a masked LM;
a checkpoint without an MLM head (the bundled MiniLM) gets one initialised with seed 0, its decoder tied
to the input embeddings, and a warning says so.
"""

from __future__ import annotations

import warnings
from typing import Any

from frugal_lm.errors import FrugalError, ModelError

LITERAL_MASK = "[MASK]"


def load_masked_lm(name_or_run: str, device: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of an alias, a model folder, a run folder or a hub id, as a masked LM in eval mode.

    Raises:
        ModelError: the model cannot be resolved or loaded, or its tokenizer has no mask token.
    """
    from frugal_lm.lm.scorers import MASKED, load_transformer

    model, tokenizer, _, notes = load_transformer(name_or_run, MASKED, device or "cpu")
    if tokenizer.mask_token_id is None:
        raise ModelError(f"model '{name_or_run}': its tokenizer has no mask token, so it cannot fill masks")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return tokenizer, model


def _with_own_mask(text: str, tokenizer: Any) -> str:
    mask = tokenizer.mask_token
    return text.replace(LITERAL_MASK, mask) if mask != LITERAL_MASK else text


def fill_mask(model: Any, tokenizer: Any, texts: list[str], top_k: int = 5,
              batch_size: int = 16) -> list[list[Any]]:
    """Top-k predictions for every mask of every text.

    Args:
        model: a masked LM (`...ForMaskedLM` or `...ForPreTraining`).
        tokenizer: its tokenizer (with a mask token).
        texts: texts holding `[MASK]` or the tokenizer's own mask token.
        top_k: candidates per mask.
        batch_size: texts per forward pass.

    Returns:
        Per text: with one mask, a list of `top_k` dicts `{"token", "token_id", "score", "sequence"}`, best
        first; with several masks, a list of such lists, one per mask in order of position.

    Raises:
        FrugalError: a text without a mask, or top_k < 1.
    """
    import torch

    if top_k < 1:
        raise FrugalError(f"top_k must be at least 1, got {top_k}")
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ModelError("this tokenizer has no mask token, so the model cannot fill masks")
    prepared = [_with_own_mask(t, tokenizer) for t in texts]
    for i, t in enumerate(prepared):
        if tokenizer.mask_token not in t:
            raise FrugalError(f"text {i + 1} has no mask: put {LITERAL_MASK} (or {tokenizer.mask_token}) "
                              f"where a word should be predicted: {texts[i]!r}")
    k = min(top_k, model.config.vocab_size)
    device = next(model.parameters()).device
    out: list[list[Any]] = []
    model.eval()
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True)
        enc = {key: v.to(device) for key, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).prediction_logits if _is_pretraining(model) else model(**enc).logits
        probs = logits.float().softmax(-1)
        for row in range(len(chunk)):
            ids = enc["input_ids"][row]
            positions = (ids == mask_id).nonzero().flatten().tolist()
            if not positions:  # the mask was cut off by truncation
                raise FrugalError(f"text {start + row + 1}: the mask lies beyond the model's maximum length")
            real = ids[enc["attention_mask"][row].bool()].tolist()
            per_mask = [_candidates(probs[row, p], k, real, p, tokenizer) for p in positions]
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)
    return out


def _is_pretraining(model: Any) -> bool:
    return type(model).__name__.endswith("ForPreTraining")


def _candidates(probs: Any, k: int, ids: list[int], position: int, tokenizer: Any) -> list[dict[str, Any]]:
    top = probs.topk(k)
    rows = []
    for score, tid in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        filled = list(ids)
        filled[position] = tid
        rows.append({"token": tokenizer.convert_ids_to_tokens(tid), "token_id": int(tid), "score": float(score),
                     "sequence": tokenizer.decode(filled, skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=True)})
    return rows
