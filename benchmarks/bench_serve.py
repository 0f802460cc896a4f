"""`frugal serve` under load vs a naive server, on loopback, in one run on the same data.

Classification: 1, 8 and 32 concurrent clients each send SST-2 dev sentences (examples/data/sst2_dev.tsv),
one sentence per request, to a MiniLM classifier served by
  - frugal serve (micro-batched: --batch-window-ms, --max-batch), and
  - a naive FastAPI server that makes one `transformers` pipeline("text-classification") call per request
    (a plain `def` route, so FastAPI runs requests on its thread pool, as such servers usually do).
Both serve the same model folder, each in its own subprocess with the same torch thread count. Per level:
throughput (requests/s), p50/p95/p99 latency, failed requests. Each level is bounded by a request count and
a time limit, after a few warm-up requests.

Generation: completions tokens/s for SmolLM2 (the `smollm2` alias) at 1 and 8 concurrent clients, greedy,
a fixed number of new tokens per request, through frugal serve's OpenAI route.

    python benchmarks/bench_serve.py --run RUN_DIR [--requests 400] [--seconds 60] [--gen-requests 16]
        [--json out.json]

RUN_DIR is a classify run folder (e.g. `frugal train examples/sst2.yaml --max-steps 30`); its model/ folder
is what the naive server loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples/data/sst2_dev.tsv"
PROMPTS = ["The best way to learn a new language is", "Once upon a time, in a small village,",
           "The main causes of the French Revolution were", "A good breakfast should include",
           "The theory of relativity says that", "To make a cup of tea, you", "The ocean is important because",
           "In the year 2050, cities will"]


def sentences() -> list[str]:
    rows = DEV.read_text(encoding="utf-8").splitlines()[1:]
    return [r.rsplit("\t", 1)[0].strip() for r in rows if r.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the naive server (run as a subprocess: `bench_serve.py --naive-server MODEL_DIR PORT`) --------------
class NaiveBody(BaseModel):
    texts: list[str]


def naive_server(model_dir: str, port: int, threads: int) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    if threads:
        torch.set_num_threads(threads)
    clf = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device="cpu", top_k=None)
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(body: NaiveBody) -> dict:
        out = clf(body.texts, truncation=True, max_length=64)  # one pipeline call per request
        return {"results": [{"label": max(r, key=lambda x: x["score"])["label"],
                             "probabilities": {x["label"]: x["score"] for x in r}} for r in out]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- load ----------------------------------------------------------------------------------------
async def load(url: str, make_body, concurrency: int, requests: int, seconds: float,
               warmup: int = 4) -> dict:
    """`concurrency` clients send requests until `requests` are done or `seconds` pass."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for i in range(warmup):
            path, payload = make_body(i)
            await client.post(path, json=payload)
        latencies: list[float] = []
        errors, tokens, sent = 0, 0, 0
        kinds: dict[str, int] = {}
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors, tokens, sent
            while sent < requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                t0 = time.perf_counter()
                try:
                    path, payload = make_body(i)
                    r = await client.post(path, json=payload)
                    ok = r.status_code == 200
                    if ok and "usage" in r.text:
                        tokens += r.json()["usage"]["completion_tokens"]
                    elif not ok:
                        kinds[f"HTTP {r.status_code}"] = kinds.get(f"HTTP {r.status_code}", 0) + 1
                except Exception as exc:  # noqa: BLE001 - a failed request is counted, never fatal
                    ok = False
                    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"clients": concurrency, "requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "req_per_s": round(len(latencies) / wall, 2), "p50_ms": round(q[49] * 1000, 1),
            "p95_ms": round(q[94] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 2), "error_kinds": kinds}


def start(cmd: list[str], url: str, log: Path, timeout: float = 300) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def batch_stats(url: str, model: str, op: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text
    found = {}
    for part in ("sum", "count"):
        for line in text.splitlines():
            if line.startswith(f'frugal_batch_size_{part}{{model="{model}",op="{op}"}}'):
                found[part] = float(line.split()[-1])
    return {"batches": int(found.get("count", 0)),
            "mean_batch": round(found["sum"] / found["count"], 2) if found.get("count") else None}


def labels_of(url: str, texts: list[str]) -> list[str]:
    """Each text's label from a server, 25 texts a request (to compare the servers' answers)."""
    import httpx

    out: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(0, len(texts), 25):
            body = {"texts": texts[i:i + 25]}
            out += [r["label"] for r in c.post("/v1/classify", json=body).json()["results"]]
    return out


def classify_bench(args: argparse.Namespace, texts: list[str], out_dir: Path) -> dict:
    import httpx

    levels = [int(x) for x in args.clients.split(",")]
    results: dict[str, Any] = {"frugal": [], "naive": []}
    answers: dict[str, list[str]] = {}
    model_dir = str(Path(args.run) / "model")
    for server in ("frugal", "naive"):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if server == "frugal":
            cmd = [sys.executable, "-m", "frugal_lm", "serve", f"sst2={args.run}", "--port", str(port),
                   "--log-level", "warning", "--max-batch", str(args.max_batch),
                   "--batch-window-ms", str(args.window_ms), "--workers", str(args.workers),
                   "--precision", args.precision, *threads(args)]
        else:
            cmd = [sys.executable, __file__, "--naive-server", model_dir, str(port), str(args.threads)]
        proc = start(cmd, url, out_dir / f"{server}.log")
        try:
            for c in levels:
                before = batch_stats(url, "sst2", "classify") if server == "frugal" else {}
                row = asyncio.run(load(url, lambda i: _post(i, texts), c, args.requests, args.seconds))
                if server == "frugal":
                    after = batch_stats(url, "sst2", "classify")
                    n = after["batches"] - before["batches"]
                    row["mean_batch"] = round((row["requests"] + 4) / n, 2) if n else None
                results[server].append(row)
                print(server, json.dumps(row), flush=True)
            answers[server] = labels_of(url, texts[:AGREEMENT_TEXTS])
            if server == "frugal":
                results["frugal_precision"] = httpx.get(url + "/v1/models").json()["data"][0].get("precision")
        finally:
            stop(proc)
    same = sum(a == b for a, b in zip(answers["frugal"], answers["naive"], strict=True))
    results["label_agreement"] = {"texts": len(answers["frugal"]), "same": same}
    return results


AGREEMENT_TEXTS = 400  # SST-2 dev sentences both servers label after the load test, to compare answers


def threads(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads)] if args.threads else []


def _post(i: int, texts: list[str]) -> tuple:
    return ("/v1/classify", {"texts": [texts[i % len(texts)]]})


def gen_bench(args: argparse.Namespace, out_dir: Path) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "frugal_lm", "serve", "smollm2", "--port", str(port), "--log-level", "warning",
           "--max-batch-generate", "8", *threads(args)]
    proc = start(cmd, url, out_dir / "frugal_gen.log", timeout=600)
    rows = []
    try:
        for c in (1, 8):
            before = batch_stats(url, "smollm2", "generate")

            def body(i: int) -> tuple:
                return ("/v1/completions", {"model": "smollm2", "prompt": PROMPTS[i % len(PROMPTS)],
                                            "max_tokens": args.gen_tokens, "temperature": 0})
            row = asyncio.run(load(url, body, c, max(args.gen_requests, c), args.seconds, warmup=1))
            after = batch_stats(url, "smollm2", "generate")
            n = after["batches"] - before["batches"]
            row["mean_batch"] = round((row["requests"] + 1) / n, 2) if n else None
            rows.append(row)
            print("generate", json.dumps(row), flush=True)
    finally:
        stop(proc)
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--naive-server":
        naive_server(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a classify run folder (MiniLM on SST-2)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=400, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=60, help="seconds per level at most")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--window-ms", type=float, default=5)
    ap.add_argument("--gen-requests", type=int, default=16, help="completions per generation level at least")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server, the same for both "
                    "(0: torch's default, one per core)")
    ap.add_argument("--workers", type=int, default=2, help="frugal serve --workers")
    ap.add_argument("--precision", default="auto", help="frugal serve --precision (the naive server: fp32, as "
                    "the pipeline loads it)")
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_serve"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = sentences()
    report: dict = {"classify": classify_bench(args, texts, out_dir)}
    if not args.skip_gen:
        report["generate"] = gen_bench(args, out_dir)
    print_tables(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def print_tables(report: dict) -> None:
    print("\n| server | clients | requests | failed | req/s | p50 ms | p95 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for server in ("frugal", "naive"):
        for r in report["classify"][server]:
            print(f"| {server} | {r['clients']} | {r['requests']} | {r['errors']} | {r['req_per_s']} | "
                  f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r.get('mean_batch') or '-'} |")
    naive = {r["clients"]: r["req_per_s"] for r in report["classify"]["naive"]}
    for r in report["classify"]["frugal"]:
        if naive.get(r["clients"]):
            print(f"frugal / naive throughput at {r['clients']} clients: {r['req_per_s'] / naive[r['clients']]:.2f}x")
    agree = report["classify"]["label_agreement"]
    print(f"frugal served in {report['classify']['frugal_precision']}; labels equal to the naive server's on "
          f"{agree['same']} of {agree['texts']} dev sentences")
    if "generate" in report:
        print("\n| clients | completions | failed | new tokens | tokens/s | p50 ms | mean batch |")
        print("|---|---|---|---|---|---|---|")
        for r in report["generate"]:
            print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens']} | {r['tokens_per_s']} | "
                  f"{r['p50_ms']} | {r.get('mean_batch') or '-'} |")


if __name__ == "__main__":
    main()
