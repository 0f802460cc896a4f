"""Text generation from causal LMs: greedy, sampling, beam search, stop strings, seeds, batches and streaming,
on top of `transformers`' `generate` (KV cache included).

Prompts are encoded the way frugal trains: a plain prompt starts with the document-start token (BOS, or the
boundary token a model was trained with, such as `<|endoftext|>` for the `smollm2` alias), so a fine-tuned
model sees the context it learned; a chat prompt is rendered with the tokenizer's chat template. Generation
ends at EOS, at the document boundary token, at a stop string (cut from the text, as OpenAI's API does) or
after `max_new_tokens`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frugal_lm.errors import ConfigError, FrugalError, ModelError

Prompt = str | list[dict[str, str]]  # text, or chat messages ({"role", "content"})


@dataclass
class GenerationOptions:
    """How to decode. `temperature` 0 is greedy; above 0 samples (with `top_k` / `top_p` when set)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def sample(self) -> bool:
        return self.temperature > 0

    def validate(self) -> None:
        """Raise ConfigError on a value `generate` would reject or silently ignore."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must not be negative, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_k must be >= 0 and top_p in (0, 1], got {self.top_k} and {self.top_p}")
        if not self.sample and (self.top_k or self.top_p < 1):
            raise ConfigError("top_k / top_p apply to sampling only; set a temperature above 0 to sample")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams: must be at least 1, got {self.num_beams}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty: must be positive, got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise ConfigError("stop: empty stop strings are not allowed")


@dataclass
class Generation:
    """One result: the generated text (stop string cut), new tokens produced, and why it ended."""

    prompt: Prompt
    text: str
    tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens)

    def to_dict(self) -> dict[str, Any]:
        key = "messages" if isinstance(self.prompt, list) else "prompt"
        return {key: self.prompt, "completion": self.text, "tokens": self.tokens,
                "finish_reason": self.finish_reason}


def document_boundaries(tokenizer: Any, model_name: str = "", bos_token: str = "",
                        eos_token: str = "") -> tuple[int | None, int | None]:
    """(start, end) token ids of a plain-text document: the given tokens, else the alias's own boundary
    tokens (see `lm.scorers.ALIAS_BOUNDARIES`: `frugal perplexity` uses the same), else BOS / EOS."""
    from frugal_lm.lm.scorers import ALIAS_BOUNDARIES, _token_id
    from frugal_lm.models.registry import base_model_name

    alias_bos, alias_eos = ALIAS_BOUNDARIES.get(base_model_name(model_name) if model_name else "", ("", ""))
    bos, eos = bos_token or alias_bos, eos_token or alias_eos
    return (_token_id(tokenizer, bos) if bos else tokenizer.bos_token_id,
            _token_id(tokenizer, eos) if eos else tokenizer.eos_token_id)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class Generator:
    """A causal LM with its tokenizer and the token ids that start and end a document.

    Args:
        model: an `AutoModelForCausalLM` (or a peft model around one), on its device.
        tokenizer: its tokenizer (a missing pad token is taken from EOS).
        bos_id: prepended to plain prompts (None: nothing).
        eos_ids: tokens that end generation besides the model's own EOS.
    """

    def __init__(self, model: Any, tokenizer: Any, bos_id: int | None = None, eos_ids: Sequence[int] = (),
                 name: str = ""):
        self.model, self.tokenizer, self.bos_id, self.name = model, tokenizer, bos_id, name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        ids = set(eos_ids)
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            ids.update(source if isinstance(source, list) else [] if source is None else [source])
        self.eos_ids = sorted(ids)
        if not self.eos_ids:
            raise ModelError(f"model '{name}' defines no end-of-sequence token, so generation could not stop")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, prompt: Prompt, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids of a prompt: chat messages (or a text, with `chat`) through the chat template, else
        the document-start token and the text."""
        from frugal_lm.lm.scoring import encode_causal

        if isinstance(prompt, list) or chat:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if system and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": system}, *messages]
            if not getattr(self.tokenizer, "chat_template", None):
                raise FrugalError(f"model '{self.name}' has no chat template, so it cannot take chat input; "
                                  "give plain prompts (without --chat)")
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = encode_causal(self.tokenizer, prompt, add_bos=self.bos_id is not None, add_eos=False,
                            bos_id=self.bos_id)
        if not ids:
            raise FrugalError("empty prompt, and the model has no start token to generate from")
        return ids

    def config(self, opts: GenerationOptions) -> Any:
        """A GenerationConfig with every decoding choice set from `opts`, so the checkpoint's own sampling
        defaults (`generate` fills unset fields from them) never apply."""
        from transformers import GenerationConfig

        opts.validate()
        kw: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens, "do_sample": opts.sample,
                              "num_beams": opts.num_beams, "repetition_penalty": opts.repetition_penalty,
                              "eos_token_id": self.eos_ids, "pad_token_id": self.pad_id}
        if opts.sample:
            kw.update(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)  # top_k 0: off, not 50
        if opts.stop:
            kw["stop_strings"] = list(opts.stop)
        return GenerationConfig(**kw)

    def _run(self, rows: list[list[int]], opts: GenerationOptions, streamer: Any = None) -> list[list[int]]:
        """Generate for left-padded rows; returns the new token ids of each row."""
        import torch

        width = max(len(r) for r in rows)
        device = next(self.model.parameters()).device
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token goes in the same column
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        if opts.seed is not None:
            from transformers import set_seed

            set_seed(opts.seed)
        from frugal_lm.models.loading import quiet_transformers

        self.model.eval()
        # quiet: GPT-2 warns about a missing attention mask on cached decoding steps, where none is needed
        with torch.inference_mode(), quiet_transformers():
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      generation_config=self.config(opts), streamer=streamer,
                                      tokenizer=self.tokenizer if opts.stop else None)
        return [row[width:].tolist() for row in out]

    def _finish(self, prompt: Prompt, new: list[int], opts: GenerationOptions) -> Generation:
        ended = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
        kept = new if ended is None else new[:ended]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = find_stop(text, opts.stop)
        if cut is not None:
            text = text[:cut]
        reason = "stop" if ended is not None or cut is not None else "length"
        count = len(new) if ended is None else ended + 1
        if cut is not None:
            # a row that ends on a stop string inside a batch is padded until the others finish: count the
            # tokens up to the one that completed the stop string, not the padding after it
            count = next(k for k in range(1, len(kept) + 1)
                         if find_stop(self.tokenizer.decode(kept[:k], skip_special_tokens=True), opts.stop)
                         is not None)
        return Generation(prompt, text, count, reason)

    # -- generation --------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], opts: GenerationOptions, chat: bool = False,
                 system: str | None = None, batch_size: int = 8) -> list[Generation]:
        """Generate for each prompt, `batch_size` prompts of similar length at a time; results in input order.

        With sampling, a seed makes a run reproducible for the same prompts and batch size.
        """
        encoded = [self.encode(p, chat, system) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            for i, new in zip(idx, self._run([encoded[i] for i in idx], opts), strict=True):
                out[i] = self._finish(prompts[i], new, opts)
        return [g for g in out if g is not None]

    def stream(self, prompt: Prompt, opts: GenerationOptions, on_text: Callable[[str], None],
               chat: bool = False, system: str | None = None) -> Generation:
        """Generate for one prompt, passing text to `on_text` as it comes (not with beam search, whose best
        sequence is only known at the end). Text that may begin a stop string is held back until it is
        known not to, so a stop string is never shown."""
        from transformers import TextIteratorStreamer

        if opts.num_beams > 1:
            raise ConfigError("streaming does not work with beam search (num_beams > 1)")
        ids = self.encode(prompt, chat, system)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["new"] = self._run([ids], opts, streamer)[0]
            except BaseException as exc:  # re-raised in the caller's thread
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        hold = max((len(s) for s in opts.stop), default=1) - 1
        text, shown, stopped = "", 0, False
        for piece in streamer:
            if stopped:
                continue  # drain: generation ends by itself on the stop string
            text += piece
            cut = find_stop(text, opts.stop)
            upto = cut if cut is not None else len(text) - hold
            if upto > shown:
                on_text(text[shown:upto])
                shown = upto
            stopped = cut is not None
        thread.join()
        if "error" in result:
            raise result["error"]
        gen = self._finish(prompt, result["new"], opts)
        if len(gen.text) > shown:
            on_text(gen.text[shown:])
        return gen


def load_generator(name: str, device: str | None = None) -> tuple[Generator, list[str]]:
    """A Generator for a frugal run folder, a bundled alias, a model folder or a hub id, and notes for the
    user (weights the checkpoint lacks, ...).

    Raises:
        ModelError: not a causal LM (a classifier run, a masked LM).
    """
    from frugal_lm.models.registry import is_run_dir

    path = Path(name)
    if path.is_dir() and is_run_dir(path):
        from frugal_lm.engine.run import load_run

        cfg, task, model = load_run(path)
        if task.auto_class != "AutoModelForCausalLM":
            raise ModelError(f"{name}: a {cfg.task} run, not a causal LM; generation needs a clm run or a "
                             "causal LM")
        if device:
            model.to(device)
        bos, eos = task.boundaries()
        return Generator(model, task.tokenizer, bos, [eos] if eos is not None else [], name), []
    from frugal_lm.lm.scorers import CAUSAL, load_transformer

    model, tokenizer, kind, notes = load_transformer(name, device=device)
    if kind != CAUSAL:
        raise ModelError(f"model '{name}' is a masked LM; generation needs a causal LM")
    bos, eos = document_boundaries(tokenizer, name)
    return Generator(model, tokenizer, bos, [eos] if eos is not None else [], name), notes
