"""The FastAPI app: frugal's task routes, the OpenAI routes (serve/openai.py), models, health, metrics, the
runs view and the web page; one error format everywhere; API key and request-size checks in front.

Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, so the `openai` client shows
the message: 400 malformed JSON or an unsupported option, 401 a missing or wrong API key, 404 an unknown
model or route, 413 a body over the limit, 422 a field of the wrong type or an input over a limit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from frugal_lm.errors import FrugalError
from frugal_lm.serve import schemas as S
from frugal_lm.serve.batching import MicroBatcher
from frugal_lm.serve.metrics import Metrics
from frugal_lm.serve.models import ServedModel

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health",)  # reachable without the API key; the page's own files are too (they hold no data)


@dataclass
class ServeSettings:
    """Limits and batching; each is a `frugal serve` option."""

    max_items: int = 64
    max_text_chars: int = 10_000
    max_new_tokens: int = 512
    default_chat_tokens: int = 256
    max_body_bytes: int = 2_000_000
    batch_window_ms: float = 5.0
    max_batch: int = 32
    max_batch_generate: int = 8
    workers: int = 1
    api_key: str | None = None
    runs_dir: str | None = None


class ApiError(Exception):
    """An error answered to the client with `status` and an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def error_json(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class ServeState:
    models: dict[str, ServedModel]
    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    batchers: dict[tuple[str, str], MicroBatcher] = field(default_factory=dict)
    executors: dict[str, ThreadPoolExecutor] = field(default_factory=dict)

    def pick(self, name: str | None, op: str) -> ServedModel:
        """The served model `name` (or the only one doing `op`), checked to do `op`."""
        doers = [m.name for m in self.models.values() if op in m.ops]
        if name is None:
            if len(doers) == 1:
                return self.models[doers[0]]
            raise ApiError(400, f"'model' is required: {len(doers)} served models do {op}"
                           + (f" ({', '.join(doers)})" if doers else ""), param="model")
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"model '{name}' is not served here; served models: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if op not in model.ops:
            raise ApiError(400, f"model '{name}' ({model.kind}) does not do {op}; it does "
                           f"{', '.join(model.ops)}" + (f"; models that do {op}: {', '.join(doers)}" if doers
                                                         else f"; no served model does {op}"),
                           param="model", code="unsupported_operation")
        return model

    def batcher(self, model: ServedModel, op: str) -> MicroBatcher:
        return self.batchers[(model.name, op)]

    def check_texts(self, texts: list[str], param: str = "texts", allow_blank: bool = False) -> None:
        """Counts and sizes within the limits; no empty text."""
        s = self.settings
        if not texts:
            raise ApiError(422, f"{param}: an empty list; give at least one text", param=param)
        if len(texts) > s.max_items:
            raise ApiError(422, f"{param}: {len(texts)} items, at most {s.max_items} per request "
                           "(the server's --max-items)", param=param)
        for i, t in enumerate(texts):
            if not allow_blank and not t.strip():
                raise ApiError(422, f"{param}[{i}]: an empty text", param=param)
            if len(t) > s.max_text_chars:
                raise ApiError(422, f"{param}[{i}]: {len(t)} characters, at most {s.max_text_chars} "
                               "(the server's --max-text-chars)", param=param)


async def run_batch(state: ServeState, model: ServedModel, op: str, items: list[Any], key: Any = None) -> list[Any]:
    """Submit items to the (model, op) batcher; a FrugalError from the model is the client's input (422)."""
    try:
        return await state.batcher(model, op).submit(items, key)
    except FrugalError as exc:
        raise ApiError(422, str(exc)) from None


def _make_batchers(state: ServeState) -> None:
    s = state.settings
    window = s.batch_window_ms / 1000
    for m in state.models.values():
        ex = state.executors[m.name] = ThreadPoolExecutor(s.workers, thread_name_prefix=f"frugal-{m.name}")
        slots = asyncio.Semaphore(s.workers)  # batches of this model that may run at once, all operations
        fns: dict[str, Any] = {
            "classify": m.classify, "ner": m.ner, "score": m.score,
            "fill-mask": lambda items, m=m: m.fill_mask([t for t, _ in items], items[0][1]),
            "generate": lambda items, m=m: m.generate([g for g, _ in items], items[0][1]),
        }
        ops = set(m.ops) - {"completions", "chat"} | ({"generate"} if m.generator is not None else set())
        for op in ops:
            size = s.max_batch_generate if op == "generate" else s.max_batch
            state.batchers[(m.name, op)] = MicroBatcher(fns[op], ex, m.name, op, state.metrics, window, size,
                                                        retry_alone=op != "generate", slots=slots)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (the server's --max-body-bytes)")


class Guard:
    """ASGI middleware in front of everything: API key, request size, request metrics."""

    def __init__(self, app: Any, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        path, s = scope["path"], self.state.settings

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        read = [0]

        async def receive_capped() -> dict:  # a body without Content-Length (chunked) is counted as it comes
            message = await receive()
            read[0] += len(message.get("body", b""))
            if read[0] > s.max_body_bytes:
                raise BodyTooLarge(s.max_body_bytes)
            return message

        try:
            refusal = self._refuse(scope, path, s)
            if refusal is not None:
                await refusal(scope, receive, send_status)
            else:
                await self.app(scope, receive_capped, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or ("/static" if path.startswith("/static/") else "other")
            self.state.metrics.inc("frugal_requests_total", route=label, method=scope["method"],
                                   status=str(status[0]))
            self.state.metrics.observe("frugal_request_duration_seconds", time.perf_counter() - start,
                                       route=label)

    @staticmethod
    def _refuse(scope: dict, path: str, s: ServeSettings) -> Any:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if s.api_key and path not in OPEN_PATHS and path != "/" and not path.startswith("/static/"):
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else headers.get("x-api-key", "")
            if not hmac.compare_digest(token.encode(), s.api_key.encode()):
                what = "a wrong API key" if token else "no API key"
                return error_json(401, f"{what}: send 'Authorization: Bearer KEY' (the server was started "
                                  "with --api-key)", code="invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > s.max_body_bytes):
            return error_json(413, f"request body of {length} bytes, over {s.max_body_bytes} bytes "
                              "(the server's --max-body-bytes)", code="request_too_large")
        return None


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str | None]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        why = (e.get("ctx") or {}).get("error", "not valid JSON")
        return 400, f"malformed JSON in the request body: {why}", None
    whole = [e for e in errors if tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing"]
    if whole:
        got = whole[0].get("input")
        if isinstance(got, bytes):  # not read as JSON at all
            return 400, "the request body is not JSON: send a JSON object with Content-Type: application/json", None
        kind = {str: "a string", list: "a list", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(got), type(got).__name__)
        return 400, f"the request body must be a JSON object, got {kind}", None
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        got = e.get("input")
        shown = "" if e.get("type") == "missing" or isinstance(got, dict | list) else f" (got {_short(got)})"
        parts.append(f"{where}: {e.get('msg', 'invalid')}{shown}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more, param


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_message(exc)
        return error_json(status, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        code = {404: "not_found", 413: "request_too_large"}.get(exc.status_code)
        return error_json(exc.status_code, message, code=code)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return error_json(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error")


def create_app(models: list[ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The app serving `models` (already loaded) under their names."""
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FrugalError(f"two served models are named {', '.join(dupes)}; name them with NAME=PATH")
    state = ServeState({m.name: m for m in models}, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        for b in state.batchers.values():
            await b.close()
        for ex in state.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="frugal serve", version=_version(), lifespan=lifespan,
                  description="Classification, NER, scoring, fill-mask and OpenAI-compatible generation "
                              "from frugal run folders and models, micro-batched.",
                  responses={k: {"model": S.ErrorResponse} for k in (400, 401, 404, 413, 422)})
    app.state.frugal = state
    _make_batchers(state)
    _install_errors(app)
    app.add_middleware(Guard, state=state)
    _task_routes(app, state)
    from frugal_lm.serve.openai import add_openai_routes

    add_openai_routes(app, state)
    _info_routes(app, state)
    return app


def _version() -> str:
    import frugal_lm

    return frugal_lm.__version__


def _task_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/v1/classify", response_model=S.ClassifyResponse, tags=["tasks"])
    async def classify(body: S.ClassifyRequest) -> dict[str, Any]:
        """Labels and the probability of every label, per text (or text pair)."""
        m = state.pick(body.model, "classify")
        state.check_texts(body.texts)
        pairs = body.text_pairs
        if pairs is not None:
            if len(pairs) != len(body.texts):
                raise ApiError(422, f"text_pairs: {len(pairs)} items for {len(body.texts)} texts; give one "
                               "per text", param="text_pairs")
            state.check_texts(pairs, "text_pairs")
        items = list(zip(body.texts, pairs or [None] * len(body.texts), strict=True))
        return {"model": m.name, "results": await run_batch(state, m, "classify", items, pairs is not None)}

    @app.post("/v1/ner", response_model=S.NerResponse, tags=["tasks"])
    async def ner(body: S.TextsRequest) -> dict[str, Any]:
        """Entities per text: words, tags, and spans with word and character offsets."""
        m = state.pick(body.model, "ner")
        state.check_texts(body.texts)
        try:
            records = m.task.from_texts(body.texts)
        except FrugalError as exc:
            raise ApiError(422, f"texts: {exc}", param="texts") from None
        return {"model": m.name, "results": await run_batch(state, m, "ner", records)}

    @app.post("/v1/score", response_model=S.ScoreResponse, tags=["tasks"])
    async def score(body: S.TextsRequest) -> dict[str, Any]:
        """Log10-probability and perplexity per text, and for them all (n-gram, causal or masked LMs)."""
        from frugal_lm.lm.scoring import corpus_perplexity

        m = state.pick(body.model, "score")
        state.check_texts(body.texts)
        scores = await run_batch(state, m, "score", body.texts)
        return {"model": m.name, "kind": m.scorer.kind, "results": [s.to_dict() for s in scores],
                "corpus": corpus_perplexity(scores)}

    @app.post("/v1/fill-mask", response_model=S.FillMaskResponse, tags=["tasks"])
    async def fill_mask(body: S.FillMaskRequest) -> dict[str, Any]:
        """The top_k tokens for each [MASK] of each text."""
        m = state.pick(body.model, "fill-mask")
        state.check_texts(body.texts)
        items = [(t, body.top_k) for t in body.texts]
        return {"model": m.name, "results": await run_batch(state, m, "fill-mask", items, body.top_k)}


def _info_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/v1/models", tags=["info"])
    async def list_models() -> dict[str, Any]:
        """Served models in OpenAI's format, with what each can do."""
        return {"object": "list", "data": [m.info() for m in state.models.values()]}

    @app.get("/v1/models/{model_id}", tags=["info"])
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in state.models:
            raise ApiError(404, f"model '{model_id}' is not served here; served models: "
                           f"{', '.join(state.models)}", param="model", code="model_not_found")
        return state.models[model_id].info()

    @app.get("/health", tags=["info"])
    async def health() -> dict[str, Any]:
        """Liveness; needs no API key."""
        return {"status": "ok", "models": list(state.models)}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["info"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latencies, batch sizes, tokens."""
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/runs", tags=["runs"])
    async def runs() -> dict[str, Any]:
        """Each run folder (served, or under --runs-dir): its config summary, metrics.json and plots."""
        return {"runs": list(_runs(state).values())}

    @app.get("/v1/runs/{run}/plots/{filename}", tags=["runs"])
    async def plot(run: str, filename: str) -> FileResponse:
        """A PNG plot of a run folder (loss.png, eval.png, ...)."""
        found = _runs(state).get(run)
        if found is None:
            raise ApiError(404, f"no run '{run}'", code="not_found")
        if filename not in found["plots"]:
            raise ApiError(404, f"run '{run}' has no plot '{filename}'; it has {', '.join(found['plots']) or 'none'}",
                           code="not_found")
        return FileResponse(Path(found["path"]) / filename, media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _runs(state: ServeState) -> dict[str, dict[str, Any]]:
    """Run folders by name: the served ones under their served names, then those in --runs-dir."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[Path] = set()
    folders: list[tuple[str, Path, str | None]] = [
        (m.name, m.run_dir, m.name) for m in state.models.values() if m.run_dir is not None]
    if state.settings.runs_dir and Path(state.settings.runs_dir).is_dir():
        folders += [(p.name, p, None) for p in sorted(Path(state.settings.runs_dir).iterdir())
                    if (p / "config.yaml").is_file()]
    for name, path, served in folders:
        if path.resolve() in seen or name in found:
            continue
        seen.add(path.resolve())
        found[name] = _describe_run(name, path, served)
    return found


def _describe_run(name: str, path: Path, served: str | None) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    return {"name": name, "path": str(path), "served_as": served, "task": cfg.get("task"),
            "model": model.get("name"), "metrics": metrics,
            "plots": sorted(p.name for p in path.glob("*.png"))}
