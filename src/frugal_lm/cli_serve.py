"""`frugal serve`: serve run folders and models over HTTP (FastAPI + uvicorn, the `serve` extra).

Only typer is imported at module level so that `frugal --help` stays fast."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from frugal_lm.errors import FrugalError

Opt = typer.Option


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add the `serve` command to `app`."""

    @app.command("serve")
    def serve(
        models: Annotated[list[str], typer.Argument(
            help="what to serve, each RUN_OR_MODEL or NAME=RUN_OR_MODEL: a run folder (classify, ner, clm), an "
                 "alias (smollm2, minilm), a model folder, a hub id or an .arpa file", show_default=False)],
        host: Annotated[str, Opt(help="address to listen on; the default answers this machine only")] = "127.0.0.1",
        port: Annotated[int, Opt(help="port")] = 8000,
        api_key: Annotated[str | None, Opt("--api-key", help="require 'Authorization: Bearer KEY' on every route "
                                           "but /health (default: $FRUGAL_API_KEY)")] = None,
        runs_dir: Annotated[str | None, Opt("--runs-dir", help="also list the run folders in DIR in the runs "
                                            "view")] = None,
        max_items: Annotated[int, Opt("--max-items", help="texts (or prompts x n) per request at most")] = 64,
        max_text_chars: Annotated[int, Opt("--max-text-chars", help="characters per text at most")] = 10_000,
        max_new_tokens: Annotated[int, Opt("--max-new-tokens", help="tokens a request may ask to generate at "
                                           "most")] = 512,
        chat_max_tokens: Annotated[int, Opt("--chat-max-tokens", help="chat replies without max_tokens stop "
                                            "after this many tokens")] = 256,
        max_body_bytes: Annotated[int, Opt("--max-body-bytes", help="request body size at most")] = 2_000_000,
        batch_window_ms: Annotated[float, Opt("--batch-window-ms", help="how long a request waits for others "
                                              "to share its batch")] = 5.0,
        max_batch: Annotated[int, Opt("--max-batch", help="texts per forward pass at most")] = 32,
        max_batch_generate: Annotated[int, Opt("--max-batch-generate", help="prompts generated together at "
                                               "most")] = 8,
        workers: Annotated[int, Opt("--workers", help="batches of one model that may run at once, each on "
                                    "its own thread (shared weights); more than 1 helps on many CPU cores")] = 1,
        device: Annotated[str | None, Opt("--device", help="cpu, cuda, ... (default: cuda when available)")] = None,
        threads: Annotated[int | None, Opt("--threads", help="torch CPU threads (default: torch's, one per core); "
                                           "1 is fastest on a machine other work keeps busy")] = None,
        precision: Annotated[str, Opt("--precision", help="auto, fp32, bf16 or fp16 for classifiers and taggers; "
                                      "auto: bf16 on a GPU or on a CPU with bf16 matrix instructions (AMX), "
                                      "else fp32")] = "auto",
        log_level: Annotated[str, Opt("--log-level", help="uvicorn's log level")] = "info",
    ) -> None:
        """Serve models over HTTP: task routes, OpenAI-compatible generation, /metrics, and a web page at /.

        Routes: POST /v1/classify, /v1/ner, /v1/score, /v1/fill-mask, /v1/completions, /v1/chat/completions;
        GET /v1/models, /v1/runs, /health, /metrics, /docs (the OpenAPI schema at /openapi.json).
        """
        try:
            import uvicorn

            from frugal_lm.serve.app import ServeSettings, create_app
            from frugal_lm.serve.models import load_served
        except ImportError as exc:
            raise FrugalError(f"frugal serve needs the serve extra ({exc.name} is missing): "
                              "pip install 'frugal-lm[serve]'") from None
        for name, value in (("--max-items", max_items), ("--max-text-chars", max_text_chars),
                            ("--max-new-tokens", max_new_tokens), ("--max-batch", max_batch),
                            ("--max-batch-generate", max_batch_generate), ("--max-body-bytes", max_body_bytes),
                            ("--chat-max-tokens", chat_max_tokens), ("--workers", workers)):
            if value < 1:
                raise FrugalError(f"{name}: must be at least 1, got {value}")
        if batch_window_ms < 0:
            raise FrugalError(f"--batch-window-ms: must not be negative, got {batch_window_ms}")
        if threads is not None:
            if threads < 1:
                raise FrugalError(f"--threads: must be at least 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        key = api_key or os.environ.get("FRUGAL_API_KEY") or None
        if not is_loopback(host) and not key:
            typer.echo(f"warning: listening on {host} without --api-key: anyone who can reach this machine "
                       "can use the models", err=True)
        served = []
        for spec in models:
            typer.echo(f"loading {spec} ...", err=True)
            m = load_served(spec, device, precision)
            for note in m.notes:
                typer.echo(f"warning: {m.name}: {note}", err=True)
            typer.echo(f"  {m.name}: {m.kind} ({', '.join(m.ops)}), {m.precision}", err=True)
            served.append(m)
        settings = ServeSettings(max_items=max_items, max_text_chars=max_text_chars, max_new_tokens=max_new_tokens,
                                 default_chat_tokens=chat_max_tokens, max_body_bytes=max_body_bytes,
                                 batch_window_ms=batch_window_ms, max_batch=max_batch,
                                 max_batch_generate=max_batch_generate, workers=workers, api_key=key,
                                 runs_dir=runs_dir)
        application = create_app(served, settings)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"frugal serve: http://{shown}:{port}/  (API docs at /docs)", err=True)
        uvicorn.run(application, host=host, port=port, log_level=log_level)
