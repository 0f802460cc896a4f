"""One scoring interface over n-gram (ARPA) models and transformer LMs.

`load_scorer(name)` accepts an `.arpa` file, a bundled alias (`smollm2` causal, `minilm` masked), a local
model folder, or a frugal run folder, and returns a scorer whose `score_sentences(texts)` gives, per text,
`log10_prob` (log10, KenLM's unit, so ARPA and transformer figures line up), `tokens`, `words`, `ppl`
(per token) and `ppl_word`. Counting conventions are in `frugal_lm.lm.scoring`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frugal_lm.errors import ConfigError, ModelError
from frugal_lm.lm.scoring import (
    LN10,
    SentenceScore,
    corpus_perplexity,
    count_words,
    score_causal,
    score_masked,
)
from frugal_lm.models.loading import quiet_transformers

CAUSAL, MASKED, NGRAM = "causal", "masked", "ngram"


class Scorer:
    """Base: subclasses implement `score` (natural-log `SentenceScore`s)."""

    kind: str = ""
    name: str = ""
    progress: bool = False  # a progress bar on stderr while scoring (transformers only)

    def score(self, texts: Sequence[str]) -> list[SentenceScore]:
        raise NotImplementedError

    def score_sentences(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: text, log10_prob, tokens, words, ppl (per token), ppl_word."""
        return [s.to_dict() for s in self.score(texts)]

    def perplexity(self, texts: Sequence[str]) -> dict[str, Any]:
        """Corpus figures (see `corpus_perplexity`) plus the model's name and kind."""
        return {"model": self.name, "kind": self.kind, **corpus_perplexity(self.score(texts))}


class NgramScorer(Scorer):
    """An ARPA model via `frugal_lm.lm.ngram.NgramModel`; tokens are words plus `</s>`."""

    kind = NGRAM

    def __init__(self, path: str | Path, eos: bool = True):
        from frugal_lm.lm.ngram import NgramModel

        self.name, self.eos = str(path), eos
        self.model = NgramModel(path)

    def score(self, texts: Sequence[str]) -> list[SentenceScore]:
        out = []
        for text in texts:
            rows = list(self.model.full_scores(text, bos=True, eos=self.eos))
            lps = [lp * LN10 for lp, _, _ in rows]
            oov_lps = [lp for lp, (_, _, oov) in zip(lps, rows, strict=True) if oov]
            out.append(SentenceScore(text, math.fsum(lps), len(lps), count_words(text, self.eos), lps,
                                     oovs=len(oov_lps), oov_logprob=math.fsum(oov_lps)))
        return out


class TransformerScorer(Scorer):
    """A causal LM (exact chain rule) or a masked LM (pseudo-log-likelihood).

    `bos_token`/`eos_token` (causal only) replace the tokenizer's BOS/EOS as the sentence boundaries.
    """

    def __init__(self, model: Any, tokenizer: Any, kind: str, name: str = "", batch_size: int | None = None,
                 max_length: int | None = None, stride: int | None = None, eos: bool = True,
                 bos_token: str | None = None, eos_token: str | None = None):
        if kind not in (CAUSAL, MASKED):
            raise ValueError(f"kind must be '{CAUSAL}' or '{MASKED}', got {kind!r}")
        self.model, self.tokenizer, self.kind, self.name = model, tokenizer, kind, name
        self.batch_size = batch_size or (8 if kind == CAUSAL else 32)
        self.max_length, self.stride, self.eos = max_length, stride, eos
        self.bos_id, self.eos_id = _token_id(tokenizer, bos_token), _token_id(tokenizer, eos_token)
        self.notes: list[str] = []

    def score(self, texts: Sequence[str]) -> list[SentenceScore]:
        if self.kind == CAUSAL:
            return score_causal(self.model, self.tokenizer, texts, batch_size=self.batch_size,
                                add_eos=self.eos, max_length=self.max_length, stride=self.stride,
                                bos_id=self.bos_id, eos_id=self.eos_id, progress=self.progress)
        return score_masked(self.model, self.tokenizer, texts, batch_size=self.batch_size,
                            max_length=self.max_length, progress=self.progress)


def _token_id(tokenizer: Any, token: str | None) -> int | None:
    if token is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ConfigError(f"token {token!r} is not in the model's vocabulary")
    return int(tid)


# SmolLM2-Instruct's tokenizer names its chat-turn markers <|im_start|>/<|im_end|> as BOS/EOS, but plain
# text was pretrained as documents delimited by <|endoftext|>; scoring with that boundary instead lowers
# per-word perplexity on a PTB slice by 28% (benchmarks/results_smollm2.md), so the alias uses it by default.
ALIAS_BOUNDARIES: dict[str, tuple[str, str]] = {"smollm2": ("<|endoftext|>", "<|endoftext|>")}

# Architecture suffixes that mean "not a plain LM we can score".
_NOT_LM = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
           "ForMultipleChoice", "ForConditionalGeneration", "ForImageClassification")


def detect_kind(config: Any) -> str:
    """`causal` or `masked`, from `config.architectures`, else from the model type.

    A bare encoder (`BertModel`, as the bundled MiniLM) counts as masked when its model type has an MLM head.

    Raises:
        ModelError: a task head (classifier, seq2seq) or a model type with no LM head.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return CAUSAL
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            return MASKED
        if arch.endswith(_NOT_LM):
            raise ModelError(f"the model is a {arch}, not a language model, so it cannot score text")
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_decoder", False) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return MASKED
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL
    raise ModelError(f"model type '{model_type}' has neither a causal nor a masked LM head in transformers")


def _pick_device(device: str | None) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_transformer(name: str, kind: str | None = None, device: str | None = None,
                     trust_remote_code: bool = False) -> tuple[Any, Any, str, list[str]]:
    """Load (model, tokenizer, kind, notes) for an alias, model folder, run folder or hub id.

    `notes` lists problems the user should know about, e.g. weights of the LM head that the checkpoint
    lacks (they are then randomly initialised, with a fixed seed so scores are at least reproducible).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    from frugal_lm.models.loading import from_pretrained, load_tokenizer
    from frugal_lm.models.registry import resolve_model

    resolved = resolve_model(name)
    with quiet_transformers():
        config = from_pretrained(AutoConfig, resolved, trust_remote_code=trust_remote_code)
        kind = kind or detect_kind(config)
        cls = AutoModelForCausalLM if kind == CAUSAL else AutoModelForMaskedLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, info = from_pretrained(cls, resolved, trust_remote_code=trust_remote_code,
                                          dtype=torch.float32, output_loading_info=True)
        if resolved.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, resolved.adapter).merge_and_unload()
        # A LoRA run may save its tokenizer beside the adapter; otherwise the base model's applies.
        own_tok = resolved.adapter and (Path(resolved.adapter) / "tokenizer_config.json").exists()
        tokenizer = load_tokenizer(resolved.adapter if own_tok else resolved,
                                   trust_remote_code=trust_remote_code)
    notes = []
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        notes.append(
            f"model '{name}' lacks {len(missing)} of the {kind}-LM's weights ({shown}); they were "
            "randomly initialised (seed 0), so its scores are not meaningful language-model probabilities"
            + (" (the bundled MiniLM is a sentence-embedding model shipped without its MLM head)"
               if name == "minilm" else "")
        )
    model.to(_pick_device(device)).eval()
    return model, tokenizer, kind, notes


def load_scorer(model_or_run: str, *, kind: str | None = None, batch_size: int | None = None,
                max_length: int | None = None, stride: int | None = None, eos: bool = True,
                bos_token: str | None = None, eos_token: str | None = None, device: str | None = None,
                trust_remote_code: bool = False) -> Scorer:
    """A scorer for an `.arpa` file, a bundled alias, a local model folder, a run folder or a hub id.

    Args:
        kind: force "causal" or "masked" instead of deciding from the config.
        batch_size: rows per forward pass (default 8 windows causal, 32 masked copies).
        max_length, stride: sliding window for long texts (causal) / window around each mask (masked).
        eos: score an end-of-sentence token (n-gram `</s>`, transformer EOS); masked LMs never do.
        bos_token, eos_token: causal LMs: the boundary tokens to use instead of the tokenizer's BOS/EOS
            (default: the tokenizer's, except for aliases listed in ALIAS_BOUNDARIES).
        device: "cpu", "cuda", ... (default: cuda when available).

    Problems such as a randomly initialised LM head are issued as a `UserWarning` and kept in `.notes`.
    """
    if model_or_run.endswith(".arpa"):
        if not Path(model_or_run).is_file():
            raise ModelError(f"{model_or_run}: no such ARPA file")
        return NgramScorer(model_or_run, eos=eos)
    model, tokenizer, kind, notes = load_transformer(model_or_run, kind, device, trust_remote_code)
    from frugal_lm.models.registry import base_model_name

    default_bos, default_eos = ALIAS_BOUNDARIES.get(base_model_name(model_or_run), (None, None))
    scorer = TransformerScorer(model, tokenizer, kind, model_or_run, batch_size, max_length, stride,
                               eos=eos and kind == CAUSAL, bos_token=bos_token or default_bos,
                               eos_token=eos_token or default_eos)
    scorer.notes = notes
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return scorer
