"""Request and response bodies (pydantic): the types FastAPI validates and the OpenAPI schema shows.

Limits that the server's options set (items per request, characters per text, tokens to generate) are
checked in the routes, since they are configurable; everything here is the shape of the data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored

    model: str | None = Field(None, description="a served model's name (GET /v1/models); may be left out "
                                                "when exactly one served model does this operation")


class TextsRequest(_Request):
    texts: list[str] = Field(..., description="the texts, one result per text, in order",
                             examples=[["a charming and moving film", "dull and far too long"]])


class ClassifyRequest(TextsRequest):
    text_pairs: list[str] | None = Field(None, description="second texts of sentence-pair tasks, one per text")


class FillMaskRequest(TextsRequest):
    texts: list[str] = Field(..., description="texts holding [MASK] (or the tokenizer's own mask token)",
                             examples=[["the movie was [MASK] ."]])
    top_k: int = Field(5, ge=1, le=100, description="candidates per mask")


class ClassifyResult(BaseModel):
    text: str
    text_pair: str | None = None
    label: str
    probabilities: dict[str, float]


class Entity(BaseModel):
    text: str
    type: str
    start: int = Field(..., description="first word (0-based)")
    end: int = Field(..., description="word after the last (exclusive)")
    char_start: int
    char_end: int
    score: float


class NerResult(BaseModel):
    text: str
    tokens: list[str]
    tags: list[str]
    entities: list[Entity]


class ScoreResult(BaseModel):
    text: str
    log10_prob: float
    tokens: int
    words: int
    ppl: float | None
    ppl_word: float | None


class CorpusScore(BaseModel):
    sentences: int
    tokens: int
    words: int
    log10_prob: float
    ppl_token: float | None
    ppl_word: float | None


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class NerResponse(BaseModel):
    model: str
    results: list[NerResult]


class ScoreResponse(BaseModel):
    model: str
    kind: str = Field(..., description="ngram, causal or masked (pseudo-log-likelihood)")
    results: list[ScoreResult]
    corpus: CorpusScore


class FillMaskResponse(BaseModel):
    model: str
    results: list[Any] = Field(..., description="per text: the top_k candidates {token, token_id, score, "
                                                "sequence}; a text with several masks gets a list per mask")


# -- OpenAI ----------------------------------------------------------------------------------------
class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy; as in OpenAI's API, 1 by default")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16, description="choices per prompt")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description="{\"include_usage\": true} adds a last "
                                                                    "chunk with token counts")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings, cut from the text")
    seed: int | None = None
    presence_penalty: float = Field(0.0, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, description="only 0 is supported")
    user: str | None = None
    logit_bias: dict[str, float] | None = Field(None, description="not supported (only null or {})")
    top_k: int = Field(0, ge=0, description="frugal extension: sample from the k most likely tokens (0: all)")
    repetition_penalty: float = Field(1.0, gt=0, description="frugal extension: above 1 discourages repeats")


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] = Field(..., description="a prompt, or several (batched together)")
    max_tokens: int | None = Field(16, ge=1, description="tokens to generate at most (OpenAI's default 16)")
    echo: bool = Field(False, description="put the prompt before the completion")
    logprobs: int | None = Field(None, description="not supported (only null)")
    best_of: int | None = Field(None, description="not supported (only null or 1)")
    suffix: str | None = Field(None, description="not supported (only null)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... pass through unused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most (default: the server's "
                                                           "--max-new-tokens)")
    max_completion_tokens: int | None = Field(None, ge=1, description="newer name of max_tokens")
    logprobs: bool | None = Field(None, description="not supported (only false or null)")
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = Field(None, description="only {\"type\": \"text\"}")
    tools: list[Any] | None = Field(None, description="not supported")
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
