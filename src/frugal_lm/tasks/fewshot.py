"""Few-shot classification (`classify.method=fewshot`): the SetFit recipe, made cheaper and on our engine.

Stage 1, on the engine: contrastive training of the encoder body. SetFit feeds the encoder two sentences per
pair; here every batch is class-balanced (train.balanced_sampler) and the cosine-similarity loss covers
*all* pairs inside it: a batch of B sentences yields B(B-1)/2 pairs for B forward passes instead of B/2,
and positive and negative pairs weigh half each, so pair classes stay balanced whatever the label count.
Sentence embeddings are mean-pooled and L2-normalised, as sentence-transformers does for
all-MiniLM-L6-v2, so the body starts from the embedding space it was trained for. A contrastive batch is
encoded packed (`packed_pool`): no padding and one pass, the same hidden states as separate passes.

Between the two, the body's weights are moved classify.fewshot_extrapolate (1.3) times as far from where the
stage started as training took them: the same direction, a longer step, at no cost (see EXTRAPOLATE below).

Stage 2 (`finish`): a multinomial logistic-regression head fitted on the frozen embeddings of the training
examples (L-BFGS, L2 penalty as scikit-learn's C), started from the class centroids, and written into the
sequence classifier's own `classifier` layer: model/ stays an ordinary
`AutoModelForSequenceClassification` folder. Its head reads the normalised mean-pooled embedding, not the
[CLS] pooler, which is what labels.json's `"pooling": "mean"` tells `frugal predict` / `eval` / `serve`.

Everything here imports torch lazily; ClassifyTask (tasks/classify.py) calls in when the method is fewshot.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from frugal_lm.config import option

# The body after the contrastive stage is start + EXTRAPOLATE x (trained - start): weight-space extrapolation
# along the training direction (WiSE-FT interpolates towards the start, Wortsman et al. 2022; ExPO extrapolates
# away from it, Zheng et al. 2024). Screened on MiniLM, 5 seeds (benchmarks/screen_fewshot_wiseft.py,
# BENCHMARKS.md): picked on the 4-class CoNLL entity-type set, where 1.3 gains +0.5 / +0.7 / +1.9 points at
# 8 / 16 / 64 per class (the trained body is still short of where the task wants it); confirmed harmless on
# SST-2 (-0.2 / +0.3 / -0.1). At 64 per class, interpolating (0.3-0.9) loses on CoNLL at every value and 2 loses
# on both.
EXTRAPOLATE = 1.3


@dataclass
class ClassifyOptions:
    """Keys of the classify task: `classify.method`, `classify.fewshot_*`."""

    method: str = option("auto", "training recipe: finetune (cross-entropy on the whole model), fewshot "
                         "(contrastive pairs + a head on frozen embeddings), or auto (fewshot below "
                         "classify.fewshot_below examples per class)", ("auto", "finetune", "fewshot"))
    first_token: bool = option(True, "finetune, BERT-family classifiers: the last layer computes position 0 only, "
                               "the one the head reads (the same logits; engine/first_token.py)")
    large_batch: bool = option(True, "finetune with train.batch_size and train.lr at their defaults (32, 1e-4): "
                               "train at 64 rows and lr 2e-4 where the run still takes at least 150 optimizer "
                               "steps (epochs x rows / global batch), and say so")
    fewshot_below: int = option(100, "auto picks fewshot when the training set has fewer examples per "
                                "class than this (on average)")
    fewshot_steps: int = option(0, "optimizer steps of the contrastive stage (0: ~32 passes over the "
                                "examples, at least 32, at most 400)")
    fewshot_lr: float = option(5e-5, "learning rate of the contrastive stage")
    fewshot_batch_size: int = option(32, "sentences per contrastive batch (rounded to a multiple of the "
                                     "label count, so every class is equally present); all pairs in it train")
    fewshot_loss: str = option("cosine", "loss of the contrastive stage: cosine (SetFit's (cos - same)^2 over "
                               "all in-batch pairs, balanced) or supcon (supervised contrastive, Khosla et al. "
                               "2020, at classify.fewshot_temperature; measured against cosine in BENCHMARKS.md: not better)",
                               ("cosine", "supcon"))
    fewshot_temperature: float = option(0.1, "temperature of the supcon loss (cosine similarity / temperature)")
    fewshot_c: float = option(1.0, "inverse L2 strength of the logistic-regression head (scikit-learn's C)")
    fewshot_extrapolate: float = option(EXTRAPOLATE, "after the contrastive stage, the body's trained weights "
                                        "are moved this many times as far from where the stage started "
                                        "(1: as trained; above 1: further along the same direction)")


def resolve_method(method: str, n_examples: int, n_labels: int, below: int, log: bool = True) -> str:
    """`auto` -> fewshot when examples per class < `below`, else finetune; says what it chose and why."""
    if method != "auto":
        return method
    per_class = n_examples / max(1, n_labels)
    chosen = "fewshot" if per_class < below else "finetune"
    if log:
        why = "<" if chosen == "fewshot" else ">="
        other = "finetune" if chosen == "fewshot" else "fewshot"
        print(f"classify.method=auto: {per_class:.1f} examples per class ({why} {below}) -> {chosen}"
              f"{' (contrastive pairs + a head on frozen embeddings)' if chosen == 'fewshot' else ''}; "
              f"set classify.method={other} to override", file=sys.stderr)
    return chosen


def stage_settings(opts: ClassifyOptions, n_examples: int, n_labels: int, largest_class: int,
                   train: Any) -> dict[str, Any]:
    """The train.* values of the contrastive stage (passed to the engine through Task.train_overrides).

    A user's own train.max_steps / eval_every / save_every still count; a short stage checkpoints once, at
    its end (a checkpoint holds the optimizer state: three times the model)."""
    batch = max(n_labels, n_labels * round(opts.fewshot_batch_size / n_labels))
    batch = min(batch, n_labels * max(1, largest_class))
    steps = opts.fewshot_steps or train.max_steps or default_steps(n_examples, batch)
    return {"balanced_sampler": True, "group_by_length": False, "batch_size": batch, "lr": opts.fewshot_lr,
            "max_steps": steps, "epochs": 0.0, "grad_accum": 1,
            "eval_every": train.eval_every or max(1, math.ceil(steps / 4)),
            "save_every": train.save_every or steps, "warmup_ratio": 0.1}


# The contrastive stage's length: ~32 passes over the examples, at least 32 steps and at most 400. Measured
# (benchmarks/bench_fewshot.py, 5 seeds, MiniLM, BENCHMARKS.md): on the 4-class CoNLL entity-type set at 16 per
# class accuracy was 0.603 / 0.657 / 0.663 with 20 / 60 / 120 steps (3 seeds; SetFit 0.651), 0.664 with 64 (32
# passes) and 0.668 with 100; at 8 per class 32 steps kept frugal 2.6 (SST-2) and 3.7 (CoNLL-type) points above
# SetFit, where the earlier floor of 100 steps (100 passes over 16 examples) made frugal 1.55x slower than SetFit,
# which does only ~256 sentence encodings there.
PASSES, MIN_STEPS, MAX_STEPS = 32, 32, 400


def default_steps(n_examples: int, batch: int) -> int:
    """Enough steps for every example to appear ~PASSES times, at least MIN_STEPS and at most MAX_STEPS."""
    return int(min(MAX_STEPS, max(MIN_STEPS, math.ceil(PASSES * n_examples / batch))))


# -- the model parts ---------------------------------------------------------------------------
def _inner(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def body(model: Any) -> Any:
    """The encoder under a sequence classifier (BertModel under BertForSequenceClassification)."""
    return _inner(model).base_model


def embed(model: Any, batch: dict[str, Any], split: bool = False) -> Any:
    """L2-normalised mean of the last hidden states over real tokens: (B, H).

    With `split`, a right-padded batch is encoded without most of its padding: packed (`packed_pool`: the
    rows laid end to end in rows of PACK_WIDTH tokens, each attending only to itself) where the body is one
    of POSITIONS_FROM (BERT, RoBERTa, ELECTRA, DistilBERT, ...) under SDPA attention, else in chunks of similar
    length (`chunked_pool`). A contrastive batch is all of a few-shot set at once, so it holds the shortest and
    the longest sentence. Both give the embeddings and gradients of one padded pass (tests/test_fewshot.py)."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if split and right_padded(inputs["attention_mask"]):
        pooled = packed_pool(model, inputs) if packable(model) else chunked_pool(model, inputs)
    else:
        pooled = _mean_pool(model, inputs)
    return F.normalize(pooled.float(), dim=-1)


def _mean_pool(model: Any, inputs: dict[str, Any]) -> Any:
    """One padded pass: the masked mean of the last hidden states, (B, H), not normalised."""
    hidden = body(model)(**inputs).last_hidden_state  # b, t, H
    m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # b, t, 1
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def right_padded(mask: Any) -> bool:
    """Whether every row's real tokens come first (what packing and chunking take apart)."""
    import torch

    lengths = mask.sum(1)
    return bool((mask.bool() == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all())


def chunked_pool(model: Any, inputs: dict[str, Any]) -> Any:
    """`_mean_pool` of a right-padded batch in chunks of similar length (`length_chunks`), each cut to its
    longest row rounded up to CHUNK_WIDTH, the rows put back in order."""
    import torch

    mask = inputs["attention_mask"]
    lengths = mask.sum(1)
    chunks = length_chunks(lengths.tolist())
    if len(chunks) <= 1:
        return _mean_pool(model, inputs)
    parts, order = [], []
    for rows in chunks:
        idx = torch.tensor(rows, device=mask.device)
        width = aligned_width(int(lengths[idx].max()), mask.shape[1])
        parts.append(_mean_pool(model, {k: v[idx, :width] for k, v in inputs.items()}))
        order.extend(rows)
    return torch.cat(parts)[torch.argsort(torch.tensor(order, device=mask.device))]  # the batch's row order


# Packing: the rows of a contrastive batch laid end to end, PACK_WIDTH tokens to a packed row (a longer
# sentence gets a row of its own), each sentence with its own positions (0, 1, ...) and a block-diagonal
# attention mask, so it sees only itself: the hidden states of separate passes, with no padding inside and
# one pass of matrix products at M = packed rows x width instead of one per chunk. Measured on MiniLM, one
# thread, fp32, a contrastive batch's forward and backward (benchmarks/bench_fewshot_pack.py, BENCHMARKS.md):
# against length chunks 1.61x / 1.39x faster on SST-2 at 8 / 64 per class, 1.31x / 1.25x on CoNLL entity types;
# a width of 48 was 11-24% slower than 64 except on SST-2 at 8 per class (3% faster), one of 96 from 1% faster
# to 12% slower: narrower rows pack worse, wider ones pay attention's width^2, computed whole under the mask.
PACK_WIDTH = 64


# Where a packed sentence's position ids start, by the body's model_type: absolute positions counted from 0
# (BERT, ELECTRA, DistilBERT), or from padding_idx + 1, as RoBERTa-style embeddings number the real tokens of a
# padded row. Each checked against a padded pass (tests/test_fewshot.py); other bodies (MPNet's relative
# positions, DeBERTa, ModernBERT's local attention) keep the length chunks.
POSITIONS_FROM = {"bert": "zero", "electra": "zero", "distilbert": "zero",
                  "roberta": "padding", "xlm-roberta": "padding", "camembert": "padding"}


def packable(model: Any) -> bool:
    """Whether `packed_pool` gives this body's own hidden states: an encoder of POSITIONS_FROM (absolute
    positions, which position_ids set per sentence) whose attention takes a 4-D boolean mask (SDPA)."""
    config = getattr(body(model), "config", None)
    return (getattr(config, "model_type", None) in POSITIONS_FROM
            and getattr(config, "_attn_implementation", None) == "sdpa")


def first_position(model: Any) -> int:
    """The position id of a sentence's first token in this body (see POSITIONS_FROM)."""
    encoder = body(model)
    if POSITIONS_FROM[encoder.config.model_type] == "zero":
        return 0
    return int(encoder.embeddings.padding_idx) + 1


def pack_rows(lengths: list[int], width: int = PACK_WIDTH) -> list[list[int]]:
    """First-fit decreasing: row indices into packed rows of at most max(width, longest) tokens.

    Returns:
        Lists of row indices (into `lengths`), each packed row's sentences in the order laid out."""
    cap = max(width, max(lengths, default=0))
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b in range(len(bins)):
            if fill[b] + lengths[i] <= cap:
                bins[b].append(i)
                fill[b] += lengths[i]
                break
        else:
            bins.append([i])
            fill.append(lengths[i])
    return bins


def packed_pool(model: Any, inputs: dict[str, Any], width: int = PACK_WIDTH) -> Any:
    """`_mean_pool` of a right-padded batch, packed (`pack_rows`): (B, H), rows in the batch's order."""
    import torch

    mask = inputs["attention_mask"]
    device = mask.device
    lengths = mask.sum(1).tolist()
    bins = pack_rows(lengths, width)
    fullest = max(sum(lengths[i] for i in b) for b in bins)
    packed_width = -(-fullest // CHUNK_WIDTH) * CHUNK_WIDTH  # aligned: few distinct shapes
    rows, cols, src, pos = [], [], [], []  # each real token: packed row and column, sentence, position in it
    for r, members in enumerate(bins):
        offset = 0
        for i in members:
            rows.extend([r] * lengths[i])
            cols.extend(range(offset, offset + lengths[i]))
            src.extend([i] * lengths[i])
            pos.extend(range(lengths[i]))
            offset += lengths[i]
    rows_t, cols_t, src_t, positions = (torch.tensor(v, device=device) for v in (rows, cols, src, pos))
    shape = (len(bins), packed_width)
    packed = {}
    for key in ("input_ids", "token_type_ids"):
        if key in inputs:
            values = torch.zeros(shape, dtype=inputs[key].dtype, device=device)
            values[rows_t, cols_t] = inputs[key][src_t, positions]
            packed[key] = values
    position_ids = torch.zeros(shape, dtype=torch.long, device=device)
    position_ids[rows_t, cols_t] = positions + first_position(model)
    segment = torch.full(shape, -1, dtype=torch.long, device=device)
    segment[rows_t, cols_t] = src_t
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    # a padding position attends to itself only: no row of the mask is empty (SDPA would give NaN there)
    pad_self = torch.eye(packed_width, dtype=torch.bool, device=device)[None] & (segment[:, :, None] < 0)
    hidden = body(model)(**packed, position_ids=position_ids,
                         attention_mask=(same | pad_self)[:, None]).last_hidden_state  # r, w, H
    tokens = hidden[rows_t, cols_t].float()  # real tokens, (sum of lengths, H); summed in fp32 under autocast
    sums = torch.zeros(len(lengths), hidden.shape[-1], device=device).index_add(0, src_t, tokens)
    return sums / torch.tensor(lengths, dtype=sums.dtype, device=device).clamp(min=1)[:, None]


# A chunk's fixed cost, in padded tokens: what one more pass through the encoder costs beyond its tokens'
# compute (kernel launches, small-matrix inefficiency). On MiniLM a token costs ~64 MFLOP forward and backward,
# about 1 ms on one core, so a pass's few ms of overhead are a handful of tokens; 32 keeps chunks few.
CHUNK_OVERHEAD_TOKENS = 32
# Chunks hold a multiple of CHUNK_ROWS rows and are CHUNK_WIDTH-aligned wide: on a CPU every new (rows, width)
# a product meets costs a oneDNN primitive, built once and cached (1,024 of them). With free shapes the 256-step
# stage on CoNLL entity types (64 per class) took 165-186 s, aligned 125-157 s, same session (one padded pass:
# 1.7x the aligned time); aligned, a run meets at most (32 / 4) x (64 / 8) chunk shapes.
CHUNK_ROWS, CHUNK_WIDTH = 4, 8


def aligned_width(length: int, widest: int, align: int = CHUNK_WIDTH) -> int:
    """`length` rounded up to a multiple of `align`, at most `widest` (the batch's own width)."""
    return min(widest, -(-length // align) * align)


def length_chunks(lengths: list[int], overhead: int = CHUNK_OVERHEAD_TOKENS, rows: int = CHUNK_ROWS,
                  align: int = CHUNK_WIDTH) -> list[list[int]]:
    """Rows grouped into chunks of similar length, minimising padded tokens + `overhead` per chunk.

    Rows sorted longest first; a chunk is a run of them, a multiple of `rows` long (the last one may hold the
    remainder), padded to its first (longest) row rounded up to a multiple of `align` (at most the batch's
    width); the cut points come from an exact dynamic programme over the sorted rows (O(B^2), B ~ 32).

    Returns:
        Lists of row indices (into `lengths`), longest chunk first.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    if n == 0:
        return []
    widest = max(lengths)
    width = [aligned_width(lengths[i], widest, align) for i in order]
    cuts = [*range(0, n, rows), n]  # where a chunk may begin or end
    best = {0: 0.0}
    back = {}
    for j in cuts[1:]:
        best[j] = float("inf")
        for i in cuts:
            if i >= j:
                break
            cost = best[i] + (j - i) * width[i] + overhead  # rows i..j-1, padded to row i's width
            if cost < best[j]:
                best[j], back[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[back[j]:j])
        j = back[j]
    return chunks[::-1]


def head_logits(model: Any, batch: dict[str, Any]) -> Any:
    """The classifier layer applied to the normalised mean-pooled embedding (no dropout: the head is
    fitted, not trained through)."""
    return _inner(model).classifier(embed(model, batch))


def pair_weights(labels: Any) -> tuple[Any, Any]:
    """Targets (1: same class, 0: different) and weights of every unordered pair i < j in a batch.

    Positive and negative pairs each weigh 1/2 in total, spread evenly, so the loss is balanced over pair
    classes (a batch of one class only has its negatives weigh nothing, and vice versa).

    Returns:
        (target, weight): float tensors of shape (B, B); weight is 0 on and below the diagonal.
    """
    import torch

    same = (labels[:, None] == labels[None, :]).float()
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos, neg = same * upper, (1 - same) * upper
    n_pos, n_neg = pos.sum(), neg.sum()
    weight = torch.zeros_like(same)
    if n_pos > 0:
        weight = weight + pos * (0.5 if n_neg > 0 else 1.0) / n_pos
    if n_neg > 0:
        weight = weight + neg * (0.5 if n_pos > 0 else 1.0) / n_neg
    return same, weight


def pair_loss(model: Any, batch: dict[str, Any], loss: str = "cosine", temperature: float = 0.1) -> Any:
    """The contrastive stage's loss on one batch, a scalar: SetFit's cosine-similarity loss,
    (cos(u, v) - same)^2 over all in-batch pairs, balanced; or `supcon_loss`."""
    emb = embed(model, batch, split=True)
    cos = emb @ emb.T  # B, B (already normalised)
    if loss == "supcon":
        return supcon_loss(cos, batch["labels"], temperature)
    target, weight = pair_weights(batch["labels"])
    return (weight * (cos - target) ** 2).sum()


def supcon_loss(cos: Any, labels: Any, temperature: float) -> Any:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) from a batch's cosine matrix: for each anchor
    with at least one same-class row, minus the mean over its positives of log softmax(cos / t) over every
    other row; averaged over those anchors."""
    import torch

    n = cos.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=cos.device)
    logits = (cos / temperature).masked_fill(eye, float("-inf"))  # an anchor is not its own candidate
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    has = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1))[has] / n_pos[has]
    return per_anchor.mean() if bool(has.any()) else cos.sum() * 0.0


# -- extrapolation in weight space --------------------------------------------------------------
def trainable_start(model: Any) -> dict[str, Any]:
    """Copies of the body's trainable weights: the point the contrastive stage starts from."""
    return {name: p.detach().clone() for name, p in body(model).named_parameters() if p.requires_grad}


def extrapolate(model: Any, start: dict[str, Any], scale: float) -> dict[str, Any]:
    """Set each of the body's weights in `start` to start + scale x (current - start), in place.

    Returns:
        The weights as they were, for `restore`.
    """
    import torch

    params = dict(body(model).named_parameters())
    before = {}
    with torch.no_grad():
        for name, p0 in start.items():
            p = params[name]
            before[name] = p.detach().clone()
            p.copy_(p0.to(p.device, p.dtype) + scale * (p - p0.to(p.device, p.dtype)))
    return before


def restore(model: Any, weights: dict[str, Any]) -> None:
    """Put back weights that `extrapolate` returned."""
    import torch

    params = dict(body(model).named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


# -- the head ----------------------------------------------------------------------------------
def fit_head(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 1.0,
             max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: minimise sum(cross-entropy) * C + ||W||^2 / 2 (scikit-learn's
    objective; the bias is not penalised), by L-BFGS, from the class centroids.

    Args:
        features: (N, H) embeddings. labels: (N,) class ids. c: inverse regularisation strength.

    Returns:
        (W, b) of shapes (K, H) and (K,).
    """
    import torch

    x = torch.tensor(features, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    centroids = torch.zeros(n_classes, x.shape[1], dtype=torch.float64)
    for k in range(n_classes):
        if (y == k).any():
            centroids[k] = x[y == k].mean(0)
    w = (centroids - centroids.mean(0)).clone().requires_grad_(True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-8, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = c * torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="sum") + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def set_head(model: Any, w: np.ndarray, b: np.ndarray) -> None:
    """Write (W, b) into the sequence classifier's `classifier` layer (shape checked)."""
    import torch

    layer = _inner(model).classifier
    if tuple(layer.weight.shape) != w.shape:
        raise ValueError(f"classifier layer is {tuple(layer.weight.shape)}, head is {w.shape}: the model's "
                         "head must be one linear layer over the hidden size")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.tensor(b, dtype=layer.bias.dtype))


def embeddings(model: Any, examples: list[dict[str, Any]], collator: Any, batch_size: int,
               device: Any = None) -> np.ndarray:
    """(N, H) normalised embeddings of encoded examples, in input order, in evaluation mode."""
    from frugal_lm.engine.inference import map_batches

    rows = map_batches(model, examples, collator, batch_size,
                       lambda m, batch: list(embed(m, batch).cpu().numpy()),
                       device or next(model.parameters()).device)
    return np.stack(rows)


def fit_model_head(model: Any, examples: list[dict[str, Any]], collator: Any, n_classes: int, c: float,
                   batch_size: int = 128, device: Any = None) -> None:
    """Embed the training examples with the current body and fit the head on them."""
    feats = embeddings(model, examples, collator, batch_size, device)
    w, b = fit_head(feats, np.array([e["labels"] for e in examples]), n_classes, c)
    set_head(model, w, b)
