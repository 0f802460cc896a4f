"""Sentence log-probabilities from transformer LMs: exact chain rule for causal LMs, PLL for masked LMs.

Units: natural log inside; `SentenceScore.log10_prob` converts for output (KenLM and ARPA use log10).

Counting conventions, so that an n-gram model and a sub-word transformer are compared on the same text:

- `tokens` is what the model scored: sub-word tokens for a transformer (plus the end-of-sentence token
  when it is scored), words plus `</s>` for an n-gram model. Per-token perplexity depends on the
  tokenizer, so it is only comparable between models that share one.
- `words` is whitespace-separated words, plus one per sentence when an end-of-sentence token is scored
  (the n-gram `</s>`, or the transformer's EOS). Per-word perplexity exp(-sum logp / words) is the figure
  to compare across tokenizers: both models then pay for the same text, including where it ends.
- A causal LM scores each token given all earlier ones. A start token is prepended so that the first real
  token is scored too: the tokenizer's BOS, or its EOS when it has no BOS (GPT-style models are trained on
  documents separated by EOS, so EOS is the natural "start of text" context). Sliding windows always overlap
  by at least one token, so every token after the start token is scored, whatever the stride.
- `words` counts only what was scored: when no start token can be prepended (`add_bos=False`, or a
  tokenizer with neither BOS nor EOS) the first token is context only, and the first word is then not
  counted (the score stays conservative: the rest of that word's sub-word tokens, if any, are still paid
  for). Per-word perplexity is thus never computed over words whose tokens were not all scored.
- A masked LM's pseudo-log-likelihood (Salazar et al., 2020) sums log P(token | all other tokens), masking
  each non-special token in turn. It is not a probability of the text (it does not sum to one over texts),
  so its perplexity is not comparable with a causal LM's, and no end-of-sentence token is scored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from frugal_lm.errors import ConfigError, ModelError

LN10 = math.log(10.0)
DEFAULT_MAX_LENGTH = 1024  # window cap for models with very long contexts: logits cost batch*len*vocab floats


@dataclass
class SentenceScore:
    """The score of one text. `logprob` is natural log, summed over `tokens` scored tokens."""

    text: str
    logprob: float
    tokens: int
    words: int
    token_logprobs: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # n-gram models only: words mapped to <unk>, and the part of `logprob` they cost (natural log)
    oovs: int | None = None
    oov_logprob: float = 0.0

    @property
    def log10_prob(self) -> float:
        return self.logprob / LN10

    @property
    def ppl(self) -> float | None:
        """Per-token perplexity (None when nothing was scored)."""
        return math.exp(-self.logprob / self.tokens) if self.tokens else None

    @property
    def ppl_word(self) -> float | None:
        """Per-word perplexity (see the module docstring for what counts as a word)."""
        return math.exp(-self.logprob / self.words) if self.words else None

    def to_dict(self) -> dict[str, Any]:
        """The output row: log10 (KenLM's unit) so it is comparable with ARPA scores."""
        return {"text": self.text, "log10_prob": self.log10_prob, "tokens": self.tokens, "words": self.words,
                "ppl": self.ppl, "ppl_word": self.ppl_word}


def count_words(text: str, eos: bool) -> int:
    """Whitespace words, plus one for the end-of-sentence token when it is scored."""
    return len(text.split()) + (1 if eos else 0)


def corpus_perplexity(scores: Sequence[SentenceScore]) -> dict[str, Any]:
    """Corpus figures: total log-prob, counts, and perplexity per token and per word."""
    logprob = math.fsum(s.logprob for s in scores)
    tokens = sum(s.tokens for s in scores)
    words = sum(s.words for s in scores)
    out = {
        "sentences": len(scores),
        "tokens": tokens,
        "words": words,
        "log10_prob": logprob / LN10,
        "ppl_token": math.exp(-logprob / tokens) if tokens else None,
        "ppl_word": math.exp(-logprob / words) if words else None,
    }
    if scores and all(s.oovs is not None for s in scores):
        # As KenLM's `query`: the perplexity "excluding OOVs" drops OOV words' log-probs and counts. An OOV
        # costs p(<unk>), which can make a text with many OOVs look easy; this figure shows it.
        oovs = sum(s.oovs or 0 for s in scores)
        rest = logprob - math.fsum(s.oov_logprob for s in scores)
        out["oovs"] = oovs
        out["ppl_token_excl_oov"] = math.exp(-rest / (tokens - oovs)) if tokens > oovs else None
        out["ppl_word_excl_oov"] = math.exp(-rest / (words - oovs)) if words > oovs else None
    return out


# ----------------------------------------------------------------------------------------------- causal


def model_max_positions(model: Any) -> int | None:
    """The longest input the model's position embeddings allow, when the config says."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_window(model: Any, max_length: int | None, stride: int | None) -> tuple[int, int]:
    """Check and default the window: 2 <= max_length <= model positions, 1 <= stride <= max_length."""
    limit = model_max_positions(model)
    if max_length is None:
        max_length = min(limit or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 (context + a scored token), got {max_length}")
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length {max_length} exceeds the model's {limit} positions")
    if stride is None:
        stride = max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be between 1 and max_length ({max_length}), got {stride}")
    return max_length, stride


def plan_windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows `(begin, end, first)`: run ids[begin:end] and score positions first..end-1.

    The Hugging Face perplexity recipe: windows start every `stride` tokens and each scores only the tokens
    the previous one did not, so every position after 0 is scored exactly once with at least
    max_length - stride tokens of context. With stride == max_length the recipe would make independent
    chunks whose first token is never scored; a window therefore starts at most at the previous window's
    last token, so it has one token of context and every position after 0 is still scored.
    """
    if n <= max_length:
        return [(0, n, 1)] if n > 1 else []
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + max_length, n)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append((begin, end, first))
        prev_end = end
        if end == n:
            return windows
        begin = min(begin + stride, prev_end - 1)


def encode_causal(tokenizer: Any, text: str, add_bos: bool = True, add_eos: bool = True,
                  bos_id: int | None = None, eos_id: int | None = None) -> list[int]:
    """Token ids with BOS/EOS added by hand (tokenizers disagree on adding them; GPT-2's never does).

    `bos_id`/`eos_id` replace the tokenizer's BOS/EOS (e.g. a document separator instead of a chat marker).
    Without a BOS the EOS is the start token (see `start_id`).
    """
    bos = start_id(tokenizer, bos_id, eos_id)
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_bos and bos is not None:
        ids = [bos] + ids
    if add_eos and eos is not None:
        ids = ids + [eos]
    return ids


def start_id(tokenizer: Any, bos_id: int | None = None, eos_id: int | None = None) -> int | None:
    """The token that gives the first real token its context: BOS, else EOS (the document separator of
    GPT-style training), else None (then the first token cannot be scored)."""
    for tid in (bos_id, tokenizer.bos_token_id, eos_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return None


def _pad_batch(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-pad: real tokens keep positions 0..len-1, so the default position ids are already right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0


def score_causal(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                 add_bos: bool = True, add_eos: bool = True, max_length: int | None = None,
                 stride: int | None = None, bos_id: int | None = None, eos_id: int | None = None,
                 progress: bool = False) -> list[SentenceScore]:
    """Exact log P(text) by the chain rule, for each text, batched across texts and windows.

    Args:
        model: a causal LM (`AutoModelForCausalLM`), on the device it should run on.
        tokenizer: its tokenizer.
        texts: the sentences.
        batch_size: windows per forward pass.
        add_bos: prepend a start token (BOS, else EOS) so the first token is scored.
        add_eos: append EOS and score it, like the n-gram `</s>`.
        bos_id, eos_id: use these ids instead of the tokenizer's BOS/EOS.
        max_length, stride: sliding window for long texts (see `plan_windows`); max_length defaults to the
            model's positions capped at 1024, stride to max_length // 2.
        progress: show a progress bar on stderr.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    max_length, stride = resolve_window(model, max_length, stride)
    encoded = [encode_causal(tokenizer, t, add_bos, add_eos, bos_id, eos_id) for t in texts]
    # The end of the sentence counts as a word only when an EOS token is really scored.
    eos_scored = add_eos and (eos_id if eos_id is not None else tokenizer.eos_token_id) is not None
    # Without a start token the first token is context only: its word is then not counted either.
    first_unscored = not (add_bos and start_id(tokenizer, bos_id, eos_id) is not None)
    # One row per window; longest first so that each batch pads little.
    rows = [(i, b, ids[b:e], f - b) for i, ids in enumerate(encoded)
            for b, e, f in plan_windows(len(ids), max_length, stride)]
    rows.sort(key=lambda r: -len(r[2]))
    pieces: dict[int, list[tuple[int, list[float]]]] = {i: [] for i in range(len(texts))}
    device, pad_id = model.device, _pad_id(tokenizer)
    # Under a process group (evaluation during a multi-process training run) each process runs every
    # world-th batch and the pieces are gathered below: each window is computed once, all processes get all.
    # (0, 1) outside a process group, or inside `engine.inference.local_only()` (main-process-only work)
    from frugal_lm.engine.inference import _shard

    rank, world = _shard()
    mine: list[tuple[int, int, list[float]]] = []
    model.eval()
    with torch.inference_mode():
        for b, start in enumerate(_batches(len(rows), batch_size, progress)):
            if b % world != rank:
                continue
            batch = rows[start: start + batch_size]
            ids, mask = _pad_batch([r[2] for r in batch], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for j, (i, begin, seg, first) in enumerate(batch):
                # logits at position p predict token p+1; one row at a time keeps the float32 copy small.
                lp = logits[j, first - 1: len(seg) - 1].float().log_softmax(-1)
                target = torch.tensor(seg[first:], device=lp.device)
                mine.append((i, begin, lp.gather(-1, target[:, None])[:, 0].tolist()))
    if world > 1:
        shares: list[Any] = [None] * world
        torch.distributed.all_gather_object(shares, mine)
        mine = [piece for share in shares for piece in share]
    for i, begin, lps in mine:
        pieces[i].append((begin, lps))
    out = []
    for i, text in enumerate(texts):
        token_lps = [x for _, lps in sorted(pieces[i]) for x in lps]
        scored_ids = _scored_ids(len(encoded[i]), encoded[i], max_length, stride)
        words = count_words(text, eos_scored)
        if first_unscored and encoded[i] and words:
            words -= 1  # the first word's first token (or, for an empty text, the EOS) was not scored
        out.append(SentenceScore(text, math.fsum(token_lps), len(token_lps), words, token_lps, scored_ids))
    return out


def _scored_ids(n: int, ids: list[int], max_length: int, stride: int) -> list[int]:
    return [ids[p] for _, e, f in plan_windows(n, max_length, stride) for p in range(f, e)]


# ----------------------------------------------------------------------------------------------- masked


def _pll_rows(ids: list[int], special: list[int], max_length: int,
              mask_id: int) -> list[tuple[list[int], int, int]]:
    """One row per maskable position: (input ids with that position masked, masked index, original id).

    A text longer than max_length keeps its leading/trailing special tokens and a window of the body
    centred on the masked position.
    """
    n = len(ids)
    lead = 0
    while lead < n and special[lead]:
        lead += 1
    trail = 0
    while trail < n - lead and special[n - 1 - trail]:
        trail += 1
    body = ids[lead: n - trail]
    width = max_length - lead - trail
    if width < 1:
        raise ConfigError(f"max_length {max_length} leaves no room besides the special tokens")
    rows = []
    for p in range(lead, n - trail):
        if special[p]:
            continue
        if n <= max_length:
            row, at = list(ids), p
        else:
            b = min(max(p - lead - width // 2, 0), len(body) - width)
            row = ids[:lead] + body[b: b + width] + ids[n - trail:]
            at = lead + (p - lead - b)
        row[at] = mask_id
        rows.append((row, at, ids[p]))
    return rows


def _batches(n: int, batch_size: int, progress: bool) -> Any:
    starts = range(0, n, batch_size)
    if not progress:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc="scoring", unit="batch", leave=False)


class _Gather:
    positions: Any = None
    fired: bool = False


@contextlib.contextmanager
def _masked_positions_only(model: Any) -> Iterator[_Gather]:
    """Make the MLM head project only the masked position of each row to the vocabulary.

    PLL reads one position per row, but the model computes (batch, length, vocab) logits: 2 GB for 32 rows
    of 512 tokens on MiniLM (30,522 words), 205 MB on 20 short PTB sentences against 3.7 MB with the cut. A forward pre-hook on the output projection (`get_output_embeddings()`, the vocab-sized
    matrix that is nearly all of that cost) keeps only each row's masked hidden state, so the logits are
    (batch, 1, vocab). The head's small hidden-to-hidden transform still runs at every position, which keeps
    this generic across BERT, RoBERTa, DistilBERT, ModernBERT...; a model whose head does not call that
    module (or feeds it something other than (batch, length, hidden)) is left alone and its full logits are
    indexed instead (`fired` stays False).
    """
    import torch

    gather = _Gather()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def pre_hook(_module: Any, args: tuple) -> tuple | None:
        hidden = args[0] if args else None
        if gather.positions is None or hidden is None or hidden.dim() != 3 \
                or hidden.shape[0] != gather.positions.shape[0]:
            return None
        gather.fired = True
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, gather.positions.to(hidden.device)][:, None, :], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook) if head is not None else None
    try:
        yield gather
    finally:
        if handle is not None:
            handle.remove()


def score_masked(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                 max_length: int | None = None, progress: bool = False) -> list[SentenceScore]:
    """Pseudo-log-likelihood of each text: sum over non-special tokens of log P(token | all the others).

    Masked copies of all texts are batched together (`batch_size` copies per forward pass).
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if tokenizer.mask_token_id is None:
        raise ModelError("this tokenizer has no mask token, so the model cannot be scored as a masked LM")
    limit = model_max_positions(model)
    max_length = max_length or min(limit or 512, 512)
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length {max_length} exceeds the model's {limit} positions")
    rows: list[tuple[int, list[int], int, int]] = []  # (text index, masked ids, masked position, target)
    for i, text in enumerate(texts):
        enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
        for row, at, target in _pll_rows(enc["input_ids"], enc["special_tokens_mask"], max_length,
                                         tokenizer.mask_token_id):
            rows.append((i, row, at, target))
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][1]))
    lps = [0.0] * len(rows)
    device, pad_id = model.device, _pad_id(tokenizer)
    model.eval()
    with torch.inference_mode(), _masked_positions_only(model) as gather:
        for start in _batches(len(order), batch_size, progress):
            idx = order[start: start + batch_size]
            ids, mask = _pad_batch([rows[r][1] for r in idx], pad_id)
            at = torch.tensor([rows[r][2] for r in idx], device=device)
            gather.positions, gather.fired = at, False
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            rows_j = torch.arange(len(idx), device=logits.device)
            # (batch, 1, vocab) when the hook cut the projection down; else the full (batch, len, vocab)
            picked = logits[:, 0] if gather.fired else logits[rows_j, at.to(logits.device)]
            targets = torch.tensor([rows[r][3] for r in idx], device=logits.device)
            out = picked.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0].tolist()
            for r, lp in zip(idx, out, strict=True):
                lps[r] = lp
    per_text: list[list[int]] = [[] for _ in texts]
    for r, row in enumerate(rows):
        per_text[row[0]].append(r)
    return [SentenceScore(text, math.fsum(lps[r] for r in rs), len(rs), count_words(text, False),
                          [lps[r] for r in rs], [rows[r][3] for r in rs])
            for text, rs in zip(texts, per_text, strict=True)]
