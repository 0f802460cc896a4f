"""POST /v1/completions and /v1/chat/completions in the OpenAI format, streaming as server-sent events, so
the official `openai` client (and anything built on it) works unchanged.

Prompts from concurrent requests that share decoding options (temperature, top_p, top_k, stop strings,
seed, repetition penalty) are generated together in one batch, streaming or not; each row stops at its own
EOS, stop string or token limit. What we cannot honour (logprobs, penalties other than 0, tools, best_of,
suffix) is refused with a 400 naming the field, never silently ignored. Defaults follow OpenAI's API:
temperature 1 (sampling), completions max_tokens 16; a chat reply defaults to the server's
--chat-max-tokens, cut to what is left of the model's context.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from frugal_lm.errors import FrugalError
from frugal_lm.serve import schemas as S
from frugal_lm.serve.app import ApiError, ServeState, run_batch
from frugal_lm.serve.models import GenItem, ServedModel


def _refuse_unsupported(body: Any) -> None:
    checks = [("presence_penalty", body.presence_penalty not in (0, 0.0)),
              ("frequency_penalty", body.frequency_penalty not in (0, 0.0)),
              ("logit_bias", bool(body.logit_bias))]
    if isinstance(body, S.CompletionRequest):
        checks += [("logprobs", body.logprobs is not None), ("best_of", body.best_of not in (None, 1)),
                   ("suffix", body.suffix is not None)]
    else:
        checks += [("logprobs", bool(body.logprobs)), ("top_logprobs", body.top_logprobs is not None),
                   ("tools", bool(body.tools)), ("tool_choice", body.tool_choice not in (None, "none")),
                   ("response_format", body.response_format not in (None, {"type": "text"}))]
    for name, bad in checks:
        if bad:
            raise ApiError(400, f"{name}: not supported by frugal serve; leave it out", param=name)


def _options(body: Any, max_new: int) -> Any:
    from frugal_lm.lm.generate import GenerationOptions

    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise ApiError(422, f"stop: {len(stop)} strings, at most 4", param="stop")
    if any(not s for s in stop):
        raise ApiError(422, "stop: empty stop strings are not allowed", param="stop")
    sample = body.temperature > 0
    # greedy decoding ignores top_p / top_k, as OpenAI's API does, instead of refusing them
    opts = GenerationOptions(max_new, body.temperature, body.top_k if sample else 0, body.top_p if sample else 1.0,
                             1, body.repetition_penalty, stop, body.seed)
    try:
        opts.validate()
    except FrugalError as exc:
        raise ApiError(422, str(exc)) from None
    return opts


def _key(opts: Any) -> tuple:
    return (opts.temperature, opts.top_k, opts.top_p, opts.repetition_penalty, tuple(opts.stop), opts.seed)


def _limit(state: ServeState, m: ServedModel, ids: list[int], asked: int | None, param: str) -> int:
    """Tokens to generate for a prompt: as asked (checked against the server's limit and the context)."""
    s = state.settings
    if asked is not None and asked > s.max_new_tokens:
        raise ApiError(422, f"{param}: {asked}, at most {s.max_new_tokens} (the server's --max-new-tokens)",
                       param=param)
    want = asked if asked is not None else min(s.default_chat_tokens, s.max_new_tokens)
    if m.context:
        room = m.context - len(ids)
        if room < 1 or (asked is not None and asked > room):
            raise ApiError(400, f"the prompt has {len(ids)} tokens and {want} more were asked for, but "
                           f"model '{m.name}' attends to {m.context} tokens at most; shorten the prompt or "
                           f"lower {param}", param=param, code="context_length_exceeded")
        want = min(want, room)
    return want


def _encode(m: ServedModel, prompt: Any, chat: bool) -> list[int]:
    try:
        return m.encoder.encode(prompt, chat=chat)
    except FrugalError as exc:
        raise ApiError(422, str(exc), param="messages" if chat else "prompt") from None


def _messages(body: S.ChatRequest) -> list[dict[str, str]]:
    out = []
    for i, msg in enumerate(body.messages):
        content = msg.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported, got "
                                   f"{part.get('type')!r}", param="messages")
                texts.append(part["text"])
            content = "".join(texts)
        out.append({"role": "system" if msg.role == "developer" else msg.role, "content": content or ""})
    return out


class _Call:
    """One generation request: its items, options and the pieces of the OpenAI answer."""

    def __init__(self, state: ServeState, m: ServedModel, chat: bool, body: Any):
        self.state, self.m, self.chat, self.body = state, m, chat, body
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.items: list[GenItem] = []
        self.prompt_tokens = 0
        self.opts: Any = None

    def add(self, prompt: Any, asked: int | None, param: str) -> None:
        ids = _encode(self.m, prompt, self.chat)
        limit = _limit(self.state, self.m, ids, asked, param)
        self.prompt_tokens += len(ids)
        self.items += [GenItem(prompt, ids, limit) for _ in range(self.body.n)]
        if len(self.items) > self.state.settings.max_items:
            raise ApiError(422, f"{len(self.items)} choices (prompts x n), at most {self.state.settings.max_items} "
                           "per request (the server's --max-items)", param="n")

    async def run(self) -> list[Any]:
        results = await run_batch(self.state, self.m, "generate", [(i, self.opts) for i in self.items],
                                  _key(self.opts))
        self.count(results)
        return results

    def count(self, results: list[Any]) -> None:
        metrics = self.state.metrics
        metrics.inc("frugal_generated_tokens_total", sum(r.tokens for r in results), model=self.m.name)
        metrics.inc("frugal_prompt_tokens_total", self.prompt_tokens, model=self.m.name)

    def usage(self, results: list[Any]) -> dict[str, int]:
        done = sum(r.tokens for r in results)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.m.name,
                "system_fingerprint": None}

    def answer(self, results: list[Any]) -> dict[str, Any]:
        choices = []
        for k, r in enumerate(results):
            if self.chat:
                choices.append({"index": k, "message": {"role": "assistant", "content": r.text, "refusal": None},
                                "logprobs": None, "finish_reason": r.finish_reason})
            else:
                text = (self.items[k].prompt + r.text) if self.body.echo else r.text
                choices.append({"index": k, "text": text, "logprobs": None, "finish_reason": r.finish_reason})
        return {**self.head(self.object), "choices": choices, "usage": self.usage(results)}

    def chunk(self, k: int, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": k, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {**self.head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": k, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = {**self.head("text_completion"), "choices": [choice]}
        return _sse(body)

    async def stream(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for k, item in enumerate(self.items):
            item.on_text = lambda piece, k=k: loop.call_soon_threadsafe(queue.put_nowait, (k, piece))
        task = asyncio.ensure_future(run_batch(self.state, self.m, "generate",
                                               [(i, self.opts) for i in self.items], _key(self.opts)))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            for k, item in enumerate(self.items):
                if self.chat:
                    yield self.chunk(k, role=True)
                elif self.body.echo:
                    yield self.chunk(k, item.prompt)
            while (event := await queue.get()) is not None:
                yield self.chunk(*event)
            if task.exception() is not None:
                exc = task.exception()
                message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
                yield _sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
            else:
                results = task.result()
                self.count(results)
                for k, r in enumerate(results):
                    yield self.chunk(k, None if self.chat else "", r.finish_reason)
                if (self.body.stream_options or {}).get("include_usage"):
                    yield _sse({**self.head("chat.completion.chunk" if self.chat else "text_completion"),
                                "choices": [], "usage": self.usage(results)})
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away: its rows are dropped if not yet started
                task.cancel()

    def respond(self) -> Any:
        if self.body.stream:
            return StreamingResponse(self.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return None


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def add_openai_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/v1/completions", tags=["openai"])
    async def completions(body: S.CompletionRequest) -> Any:
        """OpenAI text completions; `stream: true` answers with server-sent events."""
        m = state.pick(body.model, "completions")
        _refuse_unsupported(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        state.check_texts(prompts, "prompt", allow_blank=True)
        call = _Call(state, m, False, body)
        call.opts = _options(body, body.max_tokens or 16)
        for p in prompts:
            call.add(p, body.max_tokens or 16, "max_tokens")
        return call.respond() or call.answer(await call.run())

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: S.ChatRequest) -> Any:
        """OpenAI chat completions through the model's chat template; `stream: true` streams."""
        m = state.pick(body.model, "chat")
        _refuse_unsupported(body)
        messages = _messages(body)
        state.check_texts([x["content"] for x in messages], "messages", allow_blank=True)
        asked = body.max_completion_tokens or body.max_tokens
        call = _Call(state, m, True, body)
        call.opts = _options(body, asked or state.settings.default_chat_tokens)
        call.add(messages, asked, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        return call.respond() or call.answer(await call.run())
