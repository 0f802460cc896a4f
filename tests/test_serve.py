"""`frugal serve`: the real server (uvicorn in a thread, on a free loopback port) called over HTTP, with tiny
real models: every route, streaming and not, the openai client, bad input, the API key, batching."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import CORPUS, make_config  # noqa: E402
from test_clm import tiny_chat_dir  # noqa: E402, F401  (fixture: tiny GPT-2 with a chat template)
from test_ner import ner_config, ner_files, ner_model_dir  # noqa: E402, F401  (fixtures)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def classify_run(tiny_encoder_dir, sentiment_files, tmp_path_factory) -> Path:
    from frugal_lm.engine.run import train

    run = tmp_path_factory.mktemp("serve_cls") / "sentiment"
    train(make_config(tiny_encoder_dir, sentiment_files, run, max_steps=3, eval_every=3), progress=False)
    return run


@pytest.fixture(scope="module")
def ner_run(ner_model_dir, ner_files, tmp_path_factory) -> Path:  # noqa: F811
    from frugal_lm.engine.run import train

    run = tmp_path_factory.mktemp("serve_ner") / "entities"
    train(ner_config(ner_model_dir, ner_files, run, max_steps=2, eval_every=0), progress=False)
    return run


@pytest.fixture(scope="module")
def arpa_file(tmp_path_factory) -> Path:
    from frugal_lm.lm.ngram import train

    folder = tmp_path_factory.mktemp("serve_arpa")
    (folder / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    train([folder / "corpus.txt"], 2).save(folder / "toy.arpa")
    return folder / "toy.arpa"


@pytest.fixture(scope="module")
def served(classify_run, ner_run, arpa_file, tiny_chat_dir, tiny_bert_dir):  # noqa: F811
    from frugal_lm.serve.models import load_served

    return {m.name: m for m in (load_served(str(classify_run)), load_served(str(ner_run)),
                                load_served(str(arpa_file)), load_served(f"gpt={tiny_chat_dir}"),
                                load_served(f"bert={tiny_bert_dir}"))}


LIMITS = dict(max_items=8, max_text_chars=300, max_new_tokens=40, max_body_bytes=20_000, batch_window_ms=30)


@pytest.fixture(scope="module")
def url(served) -> Iterator[str]:
    from frugal_lm.serve.app import ServeSettings, create_app

    with serve_app(create_app(list(served.values()), ServeSettings(**LIMITS))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def openai_client(url: str, key: str = "unused"):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


# -- models, health, page, schema ----------------------------------------------------------------
def test_models_health_and_page(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    ops = {m["id"]: m["operations"] for m in models["data"]}
    assert ops == {"sentiment": ["classify"], "entities": ["ner"], "toy": ["score"],
                   "gpt": ["completions", "chat", "score"], "bert": ["score", "fill-mask"]}
    sentiment = next(m for m in models["data"] if m["id"] == "sentiment")
    assert sentiment["labels"] == ["neg", "pos"] and sentiment["run"] == "sentiment"
    assert client.get("/v1/models/gpt").json()["context_length"] == 128
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok", "models": list(ops)}
    page = client.get("/")
    assert page.status_code == 200 and "<title>frugal serve</title>" in page.text
    assert "function stream(" in client.get("/static/app.js").text


def test_openapi_schema_describes_every_route(client):
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "frugal serve"
    posts = {p for p, ops in schema["paths"].items() if "post" in ops}
    assert posts == {"/v1/classify", "/v1/ner", "/v1/score", "/v1/fill-mask", "/v1/completions",
                     "/v1/chat/completions"}
    gets = {p for p, ops in schema["paths"].items() if "get" in ops}
    assert {"/v1/models", "/health", "/metrics", "/v1/runs"} <= gets
    comps = schema["components"]["schemas"]
    assert comps["ClassifyRequest"]["required"] == ["texts"]
    assert comps["ClassifyRequest"]["properties"]["texts"] == {
        **comps["ClassifyRequest"]["properties"]["texts"], "type": "array", "items": {"type": "string"}}
    assert {"messages", "max_tokens", "stream", "temperature"} <= set(comps["ChatRequest"]["properties"])
    assert "ErrorResponse" in comps
    responses = schema["paths"]["/v1/classify"]["post"]["responses"]
    assert {"200", "404", "422"} <= set(responses)


# -- task routes -------------------------------------------------------------------------------------
def test_classify_equals_predict(client, classify_run):
    from frugal_lm.engine.run import load_run

    texts = ["a wonderful and charming film", "boring , dull plot"]
    got = client.post("/v1/classify", json={"model": "sentiment", "texts": texts})
    assert got.status_code == 200
    _, task, model = load_run(classify_run)
    want = task.predict(model, task.from_texts(texts))
    body = got.json()
    assert body["model"] == "sentiment"
    for g, w in zip(body["results"], want, strict=True):
        assert g["label"] == w["label"] and g["text"] == w["text"]
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
        assert sum(g["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # the model may be left out when one served model classifies
    assert client.post("/v1/classify", json={"texts": texts}).json()["results"][0]["label"] == want[0]["label"]


def test_ner_spans_point_into_the_text(client, ner_run):
    from frugal_lm.engine.run import load_run

    texts = ["john smith flew to paris", "zanzibar and berlin"]
    body = client.post("/v1/ner", json={"model": "entities", "texts": texts}).json()
    _, task, model = load_run(ner_run)
    want = task.predict(model, task.from_texts(texts))
    assert [r["tags"] for r in body["results"]] == [w["tags"] for w in want]
    assert [r["entities"] for r in body["results"]] == [
        [{**e, "score": pytest.approx(e["score"], abs=1e-5)} for e in w["entities"]] for w in want]
    for r in body["results"]:
        assert r["tokens"] == r["text"].split()
        for e in r["entities"]:
            assert r["text"][e["char_start"]:e["char_end"]] == e["text"]


def test_score_ngram_causal_and_masked(client, arpa_file, tiny_chat_dir):  # noqa: F811
    from frugal_lm.lm.ngram import NgramModel
    from frugal_lm.lm.scorers import load_scorer

    texts = ["the cat sat on the mat", "a dog ran"]
    body = client.post("/v1/score", json={"model": "toy", "texts": texts}).json()
    lm = NgramModel(arpa_file)
    assert body["kind"] == "ngram"
    assert [r["log10_prob"] for r in body["results"]] == pytest.approx([lm.score(t) for t in texts], abs=1e-9)
    assert body["corpus"]["log10_prob"] == pytest.approx(sum(lm.score(t) for t in texts), abs=1e-9)
    assert body["corpus"]["sentences"] == 2

    causal = client.post("/v1/score", json={"model": "gpt", "texts": texts}).json()
    want = load_scorer(str(tiny_chat_dir)).score_sentences(texts)
    assert causal["kind"] == "causal"
    assert [r["log10_prob"] for r in causal["results"]] == pytest.approx([w["log10_prob"] for w in want], abs=1e-4)
    assert [r["tokens"] for r in causal["results"]] == [w["tokens"] for w in want]

    masked = client.post("/v1/score", json={"model": "bert", "texts": texts}).json()
    assert masked["kind"] == "masked" and all(r["log10_prob"] < 0 for r in masked["results"])


def test_fill_mask_equals_the_library(client, tiny_bert_dir):
    from frugal_lm.lm.fill_mask import fill_mask, load_masked_lm

    texts = ["the [MASK] sat on the mat", "a [MASK] ran in the [MASK]"]
    body = client.post("/v1/fill-mask", json={"model": "bert", "texts": texts, "top_k": 3}).json()
    tok, model = load_masked_lm(str(tiny_bert_dir))
    want = fill_mask(model, tok, texts, top_k=3)
    assert [c["token"] for c in body["results"][0]] == [c["token"] for c in want[0]]
    assert len(body["results"][1]) == 2 and len(body["results"][1][0]) == 3  # two masks, three candidates
    assert body["results"][0][0]["score"] == pytest.approx(want[0][0]["score"], abs=1e-5)
    bad = client.post("/v1/fill-mask", json={"model": "bert", "texts": ["no mask here"]})
    assert bad.status_code == 422 and "has no mask" in bad.json()["error"]["message"]


# -- OpenAI routes -----------------------------------------------------------------------------------
def test_completions_with_the_openai_client(url, tiny_chat_dir):  # noqa: F811
    from frugal_lm.lm.generate import GenerationOptions, load_generator

    oc = openai_client(url)
    got = oc.completions.create(model="gpt", prompt="the cat", max_tokens=6, temperature=0)
    gen, _ = load_generator(str(tiny_chat_dir))
    want = gen.generate(["the cat"], GenerationOptions(max_new_tokens=6))[0]
    assert got.object == "text_completion" and got.model == "gpt"
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len(gen.encode("the cat"))
    assert got.usage.completion_tokens == want.tokens
    # streamed: several chunks that add up to the same text, then the finish reason, then [DONE]
    chunks = list(oc.completions.create(model="gpt", prompt="the cat", max_tokens=6, temperature=0, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(pieces) > 1 and "".join(pieces) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason
    # several prompts and n, one batch; echo puts the prompt first
    many = oc.completions.create(model="gpt", prompt=["the cat", "a dog"], max_tokens=4, temperature=0, n=2,
                                 echo=True)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text and many.choices[0].text.startswith("the cat")
    assert many.choices[2].text.startswith("a dog")


def test_chat_with_the_openai_client(url, tiny_chat_dir):  # noqa: F811
    from frugal_lm.lm.generate import GenerationOptions, load_generator

    oc = openai_client(url)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    got = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=0)
    gen, _ = load_generator(str(tiny_chat_dir))
    want = gen.generate([messages], GenerationOptions(max_new_tokens=8))[0]
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want.text
    assert got.usage.completion_tokens == want.tokens
    stream = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[-1].usage.completion_tokens == want.tokens and chunks[-1].choices == []
    # a stop string is cut from the text, streamed or not
    if len(want.text) > 3:
        stop = want.text[2:4]
        cut = want.text[:want.text.find(stop)]
        plain = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=0, stop=[stop])
        assert plain.choices[0].message.content == cut and plain.choices[0].finish_reason == "stop"
        streamed = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=0,
                                              stop=[stop], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut
    # sampling with a seed repeats itself
    a = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=1.0, seed=7)
    b = oc.chat.completions.create(model="gpt", messages=messages, max_tokens=8, temperature=1.0, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_openai_client_sees_clear_errors(url):
    openai = pytest.importorskip("openai")
    oc = openai_client(url)
    with pytest.raises(openai.NotFoundError, match="model 'nope' is not served"):
        oc.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="does not do chat"):
        oc.chat.completions.create(model="toy", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="logprobs: not supported"):
        oc.completions.create(model="gpt", prompt="x", max_tokens=2, logprobs=2)
    with pytest.raises(openai.UnprocessableEntityError, match="at most 40"):
        oc.completions.create(model="gpt", prompt="x", max_tokens=41)
    with pytest.raises(openai.BadRequestError, match="attends to 128 tokens"):
        oc.completions.create(model="gpt", prompt="!" * 200, max_tokens=5)


# -- bad input ---------------------------------------------------------------------------------------
BAD = [
    ("/v1/classify", b"{not json", 400, "malformed JSON"),
    ("/v1/classify", b'"just a string"', 400, "the request body must be a JSON object, got a string"),
    ("/v1/classify", {"texts": "one text"}, 422, "texts: Input should be a valid list"),
    ("/v1/classify", {"texts": ["ok", 3]}, 422, "texts.1: Input should be a valid string (got 3)"),
    ("/v1/classify", {"texts": []}, 422, "texts: an empty list"),
    ("/v1/classify", {"texts": ["fine", "   "]}, 422, "texts[1]: an empty text"),
    ("/v1/classify", {"texts": ["x" * 301]}, 422, "texts[0]: 301 characters, at most 300"),
    ("/v1/classify", {"texts": ["a"] * 9}, 422, "9 items, at most 8"),
    ("/v1/classify", {"text": ["a"]}, 422, "text: Extra inputs are not permitted"),
    ("/v1/classify", {"texts": ["a"], "text_pairs": ["b", "c"]}, 422, "text_pairs: 2 items for 1 texts"),
    ("/v1/classify", {"model": "nope", "texts": ["a"]}, 404, "model 'nope' is not served here"),
    ("/v1/ner", {"model": "sentiment", "texts": ["a"]}, 400, "model 'sentiment' (classifier) does not do ner"),
    ("/v1/score", {"texts": ["a"]}, 400, "'model' is required: 3 served models do score"),
    ("/v1/fill-mask", {"model": "bert", "texts": ["[MASK]"], "top_k": 0}, 422, "top_k: Input should be greater"),
    ("/v1/completions", {"model": "gpt"}, 422, "prompt: Field required"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "temperature": "hot"}, 422, "temperature"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 422, "at most 4"),
    ("/v1/chat/completions", {"model": "gpt", "messages": []}, 422, "messages: List should have at least 1"),
    ("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "robot", "content": "x"}]}, 422,
     "messages.0.role"),
    ("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": "x"}],
                              "frequency_penalty": 0.5}, 400, "frequency_penalty: not supported"),
    ("/v1/nothing", {"texts": ["a"]}, 404, "no route /v1/nothing"),
]


@pytest.mark.parametrize("path,body,status,message", BAD)
def test_bad_input_gets_a_clear_4xx(client, path, body, status, message):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_oversized_bodies_and_wrong_methods(client):
    big = json.dumps({"texts": ["x" * 100] * 300}).encode()
    r = client.post("/v1/classify", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 20000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
    assert client.get("/v1/classify").status_code == 405
    # the server is still fine
    assert client.post("/v1/classify", json={"texts": ["good film"]}).status_code == 200


# -- batching ----------------------------------------------------------------------------------------
def _histogram(metrics: str, name: str, **labels: str) -> dict[str, float]:
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    out = {}
    for line in metrics.splitlines():
        m = re.match(rf'{name}_bucket\{{{sel},le="([^"]+)"\}} (\S+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_concurrent_requests_are_batched(client, url):
    texts = [f"the film was {w} and {v}" for w in ("good", "dull", "lovely", "awful") for v in ("long", "short",
                                                                                               "odd", "fine")]
    alone = [client.post("/v1/classify", json={"texts": [t]}).json()["results"][0] for t in texts]
    before = _histogram(client.get("/metrics").text, "frugal_batch_requests", model="sentiment", op="classify")

    def one(t: str):
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/v1/classify", json={"texts": [t]})

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, texts))
    assert all(r.status_code == 200 for r in together)
    for r, a in zip(together, alone, strict=True):
        got = r.json()["results"][0]
        assert got["label"] == a["label"]
        assert got["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)
    after = _histogram(client.get("/metrics").text, "frugal_batch_requests", model="sentiment", op="classify")
    batches = after["+Inf"] - before.get("+Inf", 0)
    single = after["1"] - before.get("1", 0)
    assert batches < len(texts) and single < batches  # some batches merged several requests

    # generation batches too: concurrent greedy completions equal the ones made alone
    prompts = ["the cat", "a dog ran", "the movie", "i loved"]
    oc = openai_client(url)
    solo = [oc.completions.create(model="gpt", prompt=p, max_tokens=5, temperature=0).choices[0].text for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        joint = list(pool.map(lambda p: oc.completions.create(model="gpt", prompt=p, max_tokens=5, temperature=0),
                              prompts))
    assert [j.choices[0].text for j in joint] == solo
    metrics = client.get("/metrics").text
    gen = _histogram(metrics, "frugal_batch_size", model="gpt", op="generate")
    assert gen["1"] < gen["+Inf"]  # at least one generate call held several prompts
    assert re.search(r'frugal_requests_total\{method="POST",route="/v1/classify",status="200"\} \d+', metrics)
    assert re.search(r'frugal_generated_tokens_total\{model="gpt"\} \d+', metrics)


# -- API key, runs view ------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health(served):
    from frugal_lm.serve.app import ServeSettings, create_app

    openai = pytest.importorskip("openai")
    app = create_app([served["toy"], served["gpt"]], ServeSettings(api_key="s3cret"))
    with serve_app(app) as base, httpx.Client(base_url=base) as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/models", "/metrics", "/openapi.json", "/v1/runs"):
            r = c.get(path)
            assert r.status_code == 401 and "no API key" in r.json()["error"]["message"]
        r = c.post("/v1/score", json={"texts": ["a"]}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "a wrong API key" in r.json()["error"]["message"]
        ok = c.post("/v1/score", json={"model": "toy", "texts": ["the cat"]},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["results"][0]["tokens"] == 3
        assert c.get("/").status_code == 200  # the page itself holds no data; it asks for the key
        with pytest.raises(openai.AuthenticationError):
            openai_client(base, "wrong").completions.create(model="gpt", prompt="x", max_tokens=2)
        assert openai_client(base, "s3cret").completions.create(model="gpt", prompt="x", max_tokens=2,
                                                                 temperature=0).choices[0].text is not None


def test_runs_view_lists_metrics_and_plots(client, classify_run):
    runs = {r["name"]: r for r in client.get("/v1/runs").json()["runs"]}
    assert set(runs) == {"sentiment", "entities"}
    r = runs["sentiment"]
    assert r["task"] == "classify" and r["served_as"] == "sentiment"
    assert r["metrics"] == json.loads((classify_run / "metrics.json").read_text())
    assert "loss.png" in r["plots"]
    png = client.get("/v1/runs/sentiment/plots/loss.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/v1/runs/sentiment/plots/config.yaml").status_code == 404
    assert client.get("/v1/runs/sentiment/plots/..%2Fconfig.yaml").status_code == 404
    assert client.get("/v1/runs/nope/plots/loss.png").status_code == 404


def test_cli_serve_rejects_bad_setups(tmp_path, tiny_bert_dir):
    import typer
    from typer.testing import CliRunner

    from frugal_lm.cli_serve import register
    from frugal_lm.errors import FrugalError
    from frugal_lm.serve.app import create_app
    from frugal_lm.serve.models import load_served, parse_spec

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so that `serve` is a command name
    register(app)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing"), "--max-items", "0"])
    assert isinstance(result.exception, FrugalError) and "--max-items: must be at least 1" in str(result.exception)
    with pytest.raises(FrugalError, match="not a model folder|no such file"):
        load_served(str(tmp_path / "missing"))
    assert parse_spec(f"m1={tiny_bert_dir}") == ("m1", str(tiny_bert_dir))
    assert parse_spec(str(tiny_bert_dir))[0] == Path(tiny_bert_dir).name
    with pytest.raises(FrugalError, match="model name 'a b'"):
        parse_spec(f"a b={tiny_bert_dir}")
    m = load_served(f"x={tiny_bert_dir}")
    with pytest.raises(FrugalError, match="two served models are named x"):
        create_app([m, m])


def test_batcher_merges_by_key_caps_size_and_isolates_a_bad_request():
    import asyncio

    from frugal_lm.serve.batching import MicroBatcher
    from frugal_lm.serve.metrics import Metrics

    calls: list[list[str]] = []

    def upper(items: list[str]) -> list[str]:
        calls.append(list(items))
        if "!" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    async def main() -> list:
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(upper, ex, "m", "op", Metrics(), window_s=0.2, max_batch=4)
            out = await asyncio.gather(*(b.submit([x], key=len(x)) for x in
                                         ["a", "b", "!", "c", "d", "e", "f", "gg"]), return_exceptions=True)
            await b.close()
            return out

    out = asyncio.run(main())
    assert out[:2] == [["A"], ["B"]] and out[3:] == [["C"], ["D"], ["E"], ["F"], ["GG"]]
    assert isinstance(out[2], ValueError) and str(out[2]) == "bad item"
    # batches of at most 4 items of one key; the failed batch is rerun request by request
    assert calls == [["a", "b", "!", "c"], ["a"], ["b"], ["!"], ["c"], ["d", "e", "f"], ["gg"]]


def test_the_serve_command_serves(arpa_file, tmp_path):
    import os
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FRUGAL_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "frugal_lm", "serve", f"lm={arpa_file}", "--port", str(port),
                             "--max-items", "2", "--log-level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "slow"
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        auth = {"Authorization": "Bearer k"}  # the key came from $FRUGAL_API_KEY
        r = httpx.post(base + "/v1/score", json={"texts": ["the cat sat"]}, headers=auth)
        assert r.status_code == 200 and r.json()["model"] == "lm" and r.json()["results"][0]["words"] == 4
        r = httpx.post(base + "/v1/score", json={"texts": ["a", "b", "c"]}, headers=auth)
        assert r.status_code == 422 and "at most 2" in r.json()["error"]["message"]
        assert httpx.post(base + "/v1/score", json={"texts": ["a"]}).status_code == 401
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "lm: ngram (score)" in out and f"http://127.0.0.1:{port}/" in out


def test_served_precision_is_applied_and_reported(classify_run):
    import torch

    from frugal_lm.engine.run import load_run
    from frugal_lm.errors import FrugalError
    from frugal_lm.serve.models import load_served

    texts = ["a wonderful and charming film", "boring , dull plot", "it is a film"]
    _, task, model = load_run(classify_run)
    want = task.predict(model, task.from_texts(texts))
    half = load_served(f"half={classify_run}", "cpu", "bf16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.info()["precision"] == "bf16 (--precision=bf16)"
    got = half.classify([(t, None) for t in texts])
    for g, w in zip(got, want, strict=True):  # bf16 keeps ~3 significant digits; the logits come back as fp32
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=2e-2)
    # auto: the tiny model stays fp32 whatever the processor (bf16 pays only for big ones)
    auto = load_served(str(classify_run), "cpu")
    assert {p.dtype for p in auto.model.parameters()} == {torch.float32}
    assert auto.info()["precision"].startswith("fp32 (auto")
    with pytest.raises(FrugalError, match="--precision: expected auto, fp32, bf16 or fp16, got 'int8'"):
        load_served(str(classify_run), "cpu", "int8")
