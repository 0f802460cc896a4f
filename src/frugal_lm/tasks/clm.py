"""Causal language modelling: fine-tune a generative model on plain text or on instruction / chat data.

Plain text (`.txt`): the file is split into documents (`clm.documents`: paragraphs separated by blank lines,
the default; one per line; or the whole file). Each document is framed by the start and end tokens that
`frugal perplexity` uses (BOS / EOS, or the alias's own boundary token: `<|endoftext|>` for `smollm2`), all
documents are joined into one stream and cut into blocks of model.max_length tokens (data/packing.py): no
padding, every token a prediction target once.

Instruction JSONL: one object per line, `{"prompt": ..., "completion": ...}` or `{"messages": [{"role",
"content"}, ...]}`, rendered with the tokenizer's chat template (prompt/completion become a user and an
assistant turn). The loss covers the assistant turns only (with their end-of-turn marker, so the model
learns to stop); every other token is labelled -100. Without a chat template, prompt and completion are
joined as they are, between the document start and end tokens. Each example is one row, cut at
model.max_length (with a warning).

Evaluation reports the loss per predicted token and its perplexity, computed by `frugal perplexity`'s code
(lm/scoring.py): plain text is scored document by document with the chain rule (sliding windows of
model.max_length); instruction data by the log-probability of its response tokens.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from frugal_lm.config import option
from frugal_lm.errors import DataError
from frugal_lm.tasks.base import Task
from frugal_lm.tasks.labels import IGNORE

TEXT_SUFFIXES = ("", ".txt", ".text", ".md")


@dataclass
class ClmOptions:
    documents: str = option("paragraphs", "plain text: what one document is (an end token closes each): "
                            "paragraphs (separated by blank lines; line breaks inside are kept), lines (one per "
                            "line), file (the whole file)", ("paragraphs", "lines", "file"))
    bos_token: str = option("", "token that starts each plain-text document (empty: the tokenizer's BOS; "
                            "<|endoftext|> for the smollm2 alias, as `frugal perplexity`)")
    eos_token: str = option("", "token that ends each plain-text document (empty: the tokenizer's EOS; "
                            "<|endoftext|> for the smollm2 alias)")
    chat_template: bool = option(True, "render instruction JSONL with the tokenizer's chat template when it has "
                                 "one (off: prompt and completion are joined as they are)")
    stride: int = option(0, "evaluation of plain text: step of the sliding window over documents longer than "
                         "model.max_length (0: half a window, as `frugal perplexity`)")
    max_new_tokens: int = option(64, "predict: tokens generated (greedy) per prompt")
    fused_loss: bool = option(True, "compute the LM head and the cross-entropy fused, in chunks, over predicted "
                              "positions only (exact; less memory traffic; used where the model's logits are the "
                              "plain head projection)")


@dataclass
class Document:
    """A plain-text document; `line` is where it starts in the file."""

    text: str
    line: int


@dataclass
class Dialogue:
    """An instruction example: chat messages (prompt/completion become a user and an assistant turn)."""

    messages: list[dict[str, str]]
    line: int
    plain: bool = False  # from prompt/completion: joined as they are when there is no chat template
    source: str = ""  # the file, for error messages


def _format(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "txt"
    raise DataError(path, f"unknown file format '{suffix}'; the clm task reads plain text (.txt) and "
                    "instruction JSONL (.jsonl), or set data.format")


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "file not found" if not p.exists() else "not a file")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, "not UTF-8 text", line=raw[:exc.start].count(b"\n") + 1) from None


def read_documents(path: str, documents: str) -> list[Document]:
    """Documents of a plain-text file: paragraphs, lines or the whole file (see ClmOptions.documents).

    Raises:
        DataError: missing file, not UTF-8 (the line is named), no text.
    """
    lines = _read_text(path).split("\n")
    out: list[Document] = []
    if documents == "lines":
        out = [Document(x.strip(), i) for i, x in enumerate(lines, 1) if x.strip()]
    else:
        current: list[str] = []
        start = 0
        for i, x in enumerate([*lines, ""], 1):
            if x.strip():
                if not current:
                    start = i
                current.append(x.rstrip())
            elif current and documents == "paragraphs":
                out.append(Document("\n".join(current), start))
                current = []
            elif current:  # documents == "file": blank lines stay inside
                current.append("")
        if current:
            out.append(Document("\n".join(current).strip("\n"), start))
    if not out:
        raise DataError(path, "no text found")
    return out


def _check_messages(value: Any, path: str, line: int) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(path, "expected a non-empty list of {\"role\", \"content\"} objects", line=line,
                        field="messages")
    for k, m in enumerate(value):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise DataError(path, f"expected an object, got {type(m).__name__}", line=line, field=where)
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise DataError(path, f"expected a string, got {m.get(key)!r}", line=line, field=f"{where}.{key}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_dialogues(path: str, labelled: bool = True) -> list[Dialogue]:
    """Instruction JSONL: `{"prompt", "completion"}` or `{"messages": [...]}` per line.

    Unlabelled input (prompts for prediction) needs no completion; a trailing assistant turn is dropped.

    Raises:
        DataError: malformed JSON, missing or empty fields, no assistant turn to learn from; file:line:field.
    """
    out = []
    for lineno, raw in enumerate(_read_text(path).split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON ({exc.msg} at column {exc.colno}); expected one JSON object "
                            "per line", line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        if "messages" in obj:
            messages = _check_messages(obj["messages"], path, lineno)
            if labelled and not any(m["role"] == "assistant" for m in messages):
                raise DataError(path, "no assistant turn: nothing to learn from", line=lineno, field="messages")
            if not labelled and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            out.append(Dialogue(messages, lineno, source=path))
            continue
        keys = ("prompt", "completion") if labelled else ("prompt",)
        for key in keys:
            if key not in obj:
                raise DataError(path, "missing field; expected {\"prompt\", \"completion\"} or {\"messages\"}, "
                                f"the object has: {', '.join(obj) or 'nothing'}", line=lineno, field=key)
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise DataError(path, "expected a non-empty string", line=lineno, field=key)
        messages = [{"role": "user", "content": obj["prompt"]}]
        if labelled:
            messages.append({"role": "assistant", "content": obj["completion"]})
        out.append(Dialogue(messages, lineno, plain=True, source=path))
    if not out:
        raise DataError(path, "no examples found; expected one JSON object per line")
    return out


class CausalLMTask(Task):
    """Causal LM fine-tuning (LoRA by default) on plain text or instruction data; perplexity to evaluate."""

    name = "clm"
    help = "causal LM fine-tuning: plain text (packed) or instruction JSONL (loss on responses); perplexity"
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    formats = ("txt", "jsonl")
    metrics: ClassVar[dict[str, str]] = {"perplexity": "min", "loss": "min", "ppl_word": "min"}
    # LoRA and a small batch: what fits a CPU with a 100M+ model; lr 2e-4 is the usual LoRA rate. The
    # eval batch is small because each row's logits span the whole vocabulary (49k for SmolLM2).
    defaults: ClassVar[dict[str, Any]] = {"train.metric": "perplexity", "peft.method": "lora", "train.lr": 2e-4,
                                          "train.batch_size": 8, "train.eval_batch_size": 8}
    Options = ClmOptions

    def __init__(self, cfg: Any, saved: dict[str, Any] | None = None):
        self._truncated = 0
        super().__init__(cfg, saved)

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[Document] | list[Dialogue]:
        fmt = _format(path, self.cfg.data.format)
        if fmt == "jsonl":
            return read_dialogues(path, labelled)
        if not labelled:  # prompts for prediction: one per line
            return read_documents(path, "lines")
        return read_documents(path, self.options.documents)

    def from_texts(self, texts: list[str]) -> list[Document]:
        return [Document(t, i + 1) for i, t in enumerate(texts)]

    def boundaries(self) -> tuple[int | None, int | None]:
        """Token ids that start and end a plain-text document."""
        from frugal_lm.lm.generate import document_boundaries

        o = self.options
        return document_boundaries(self.tokenizer, self.cfg.model.name, o.bos_token, o.eos_token)

    def prepare(self, tokenizer: Any) -> None:
        if tokenizer.pad_token_id is None:  # GPT-2 has none; padding is masked out, so EOS serves
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        super().prepare(tokenizer)
        if self._truncated:
            print(f"warning: {self._truncated} instruction examples are longer than model.max_length "
                  f"({self.cfg.model.max_length}) and were cut", file=sys.stderr)

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, records: list[Any]) -> list[dict[str, Any]]:
        """Plain text: packed blocks of model.max_length; instruction data: one row each, with labels."""
        if not records:
            return []
        if isinstance(records[0], Document):
            return self._encode_text(records)
        return [self._encode_dialogue(d) for d in records]

    def _encode_text(self, docs: list[Document]) -> list[dict[str, Any]]:
        from frugal_lm.data.packing import join_documents, packed_examples

        bos, eos = self.boundaries()
        ids = self.tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
        return packed_examples(join_documents(ids, bos, eos), self.cfg.model.max_length)

    def segments(self, d: Dialogue) -> list[tuple[str, bool]]:
        """The rendered example as (text, is_response) pieces, in order."""
        tok = self.tokenizer
        if self.options.chat_template and getattr(tok, "chat_template", None):
            def render(messages: list[dict[str, str]], prompt: bool) -> str:
                return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

            full = render(d.messages, False)
            out, pos = [], 0
            for i, m in enumerate(d.messages):
                if m["role"] != "assistant":
                    continue
                before, upto = render(d.messages[:i], True), render(d.messages[:i + 1], False)
                if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
                    raise DataError(d.source, "the chat template renders this conversation "
                                    "differently turn by turn, so its responses cannot be located; set "
                                    "clm.chat_template=false", line=d.line, field="messages")
                out += [(full[pos:len(before)], False), (full[len(before):len(upto)], True)]
                pos = len(upto)
            return [*out, (full[pos:], False)]
        if not d.plain:
            raise DataError(d.source, "chat messages need a chat template, and this "
                            "tokenizer has none; use {\"prompt\", \"completion\"}", line=d.line, field="messages")
        return [(d.messages[0]["content"], False), (d.messages[1]["content"], True)]

    def _encode_dialogue(self, d: Dialogue) -> dict[str, Any]:
        """Each piece tokenized on its own, as generation sees it: the prompt encoded alone, then new tokens."""
        ids: list[int] = []
        labels: list[int] = []
        templated = self.options.chat_template and getattr(self.tokenizer, "chat_template", None)
        bos, eos = (None, None) if templated else self.boundaries()
        if bos is not None:
            ids, labels = [bos], [IGNORE]
        for text, response in self.segments(d):
            if not text:
                continue
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if response else [IGNORE] * len(piece)
        if eos is not None:  # plain prompt/completion: the end token closes the response (and is learned)
            ids.append(eos)
            labels.append(eos)
        n = self.cfg.model.max_length
        if len(ids) > n:
            self._truncated += 1
            ids, labels = ids[:n], labels[:n]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    # -- model and loss ----------------------------------------------------------------------
    def build_model(self, path: str, trust_remote_code: bool = False) -> Any:
        import torch
        import transformers

        from frugal_lm.models.loading import from_pretrained

        model = from_pretrained(transformers.AutoModelForCausalLM, path, trust_remote_code=trust_remote_code,
                                dtype=torch.float32)
        if model.config.pad_token_id is None and self.tokenizer is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        return model

    @staticmethod
    def targets(batch: dict[str, Any]) -> Any:
        """Next-token targets of each position but the last: the labels, or the real input tokens."""
        if "labels" in batch:
            return batch["labels"][:, 1:]
        return batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, IGNORE)

    def count(self, batch: dict[str, Any]) -> int:
        return int((self.targets(batch) != IGNORE).sum())

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """Cross-entropy summed over predicted tokens (position t predicts token t+1), and their number.

        Two exact shortcuts: a batch without padding (packed blocks) goes without an attention mask, so
        attention can take its causal path instead of a materialised mask; and for models whose logits are
        the plain head projection, the head and the cross-entropy run fused over the predicted positions only
        (lm/head_loss.py), never building the full logits tensor. Measured (BENCHMARKS.md): 14% less peak
        memory on SmolLM2; the speed gain seen on a loaded machine did not show on a quiet one.
        """
        import torch.nn.functional as F

        from frugal_lm.lm.head_loss import fused_head, linear_cross_entropy

        mask = batch["attention_mask"]
        if bool(mask.all()):
            mask = None
        target = self.targets(batch)
        parts = fused_head(model) if self.options.fused_loss else None
        if parts is not None:
            decoder, head = parts
            hidden = decoder(input_ids=batch["input_ids"], attention_mask=mask,
                             use_cache=False).last_hidden_state[:, :-1]
            keep = target != IGNORE
            loss = linear_cross_entropy(hidden[keep], head.weight, head.bias, target[keep])
            return loss, int(keep.sum())
        logits = model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        return loss, self.count(batch)

    # -- evaluation and use ------------------------------------------------------------------
    def evaluate(self, model: Any, records: list[Any] | None = None, device: Any = None) -> dict[str, Any]:
        """Loss per predicted token and perplexity (exp of it), as `frugal perplexity` computes them; plain
        text adds per-word perplexity (whitespace words plus one per document end)."""
        from frugal_lm.lm.scoring import corpus_perplexity, score_causal

        records = self.eval_records if records is None else records
        if records and isinstance(records[0], Document):
            bos, eos = self.boundaries()
            scores = score_causal(model, self.tokenizer, [d.text for d in records],
                                  # add_bos=True: without a BOS the EOS starts the text (as `frugal perplexity`)
                                  batch_size=self.cfg.train.eval_batch_size, add_bos=True,
                                  add_eos=eos is not None, max_length=self.cfg.model.max_length,
                                  stride=self.options.stride or None, bos_id=bos, eos_id=eos)
        else:
            scores = self._response_scores(model, records, device)
        c = corpus_perplexity(scores)
        logprob = math.fsum(s.logprob for s in scores)
        metrics = {"loss": -logprob / c["tokens"] if c["tokens"] else 0.0, "perplexity": c["ppl_token"]}
        if c["words"]:
            metrics["ppl_word"] = c["ppl_word"]
        return metrics

    def _response_scores(self, model: Any, records: list[Dialogue], device: Any) -> list[Any]:
        """A SentenceScore per example over its response tokens (prompt tokens are context only)."""
        from frugal_lm.engine.inference import map_batches
        from frugal_lm.lm.scoring import SentenceScore

        def fn(m: Any, batch: dict[str, Any]) -> list[Any]:
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits[:, :-1].float()
            target = self.targets(batch)
            keep = target != IGNORE
            lp = logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
            return [(float(lp[i][keep[i]].sum()), int(keep[i].sum())) for i in range(len(lp))]

        examples = self.encode(records)
        rows = map_batches(model, examples, self.collator(), self.cfg.train.eval_batch_size, fn,
                           device or next(model.parameters()).device)
        return [SentenceScore("", lp, n, 0) for lp, n in rows]

    def predict(self, model: Any, records: list[Any]) -> list[dict[str, Any]]:
        """A greedy continuation of each text (Document) or a reply to each conversation (Dialogue)."""
        from frugal_lm.lm.generate import GenerationOptions, Generator

        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        bos, eos = self.boundaries()
        gen = Generator(model, self.tokenizer, bos, [eos] if eos is not None else [], self.cfg.model.name)
        prompts = [r.text if isinstance(r, Document) else r.messages for r in records]
        opts = GenerationOptions(max_new_tokens=self.options.max_new_tokens)
        return [g.to_dict() for g in gen.generate(prompts, opts, batch_size=self.cfg.train.eval_batch_size)]

    def card_lines(self) -> list[str]:
        return [f"- plain-text documents: {self.options.documents}; loss and perplexity per predicted token"]

