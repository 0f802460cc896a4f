"""The web page of `frugal serve` in a real headless browser: Debian's Chromium driven by Playwright (its own
browser download is not used). The page loads, a classification round trip shows a label, a generation
streams in, and the runs view shows a run's metrics and plot."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from test_clm import tiny_chat_dir  # noqa: E402, F401  (fixtures)
from test_serve import classify_run, serve_app  # noqa: E402, F401

CHROMIUM = os.environ.get("FRUGAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page_url(classify_run, tiny_chat_dir):  # noqa: F811
    from frugal_lm.serve.app import ServeSettings, create_app
    from frugal_lm.serve.models import load_served

    models = [load_served(str(classify_run)), load_served(f"gpt={tiny_chat_dir}")]
    with serve_app(create_app(models, ServeSettings(api_key="k3y"))) as base:
        yield base


def test_page_classifies_streams_and_shows_runs(page_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(page_url + "/")
            assert page.title() == "frugal serve"
            sync_api.expect(page.locator("#status")).to_have_text("enter the API key above")
            page.fill("#api-key", "k3y")
            page.dispatch_event("#api-key", "change")
            sync_api.expect(page.locator("#model option")).to_have_count(2)

            # classification round trip: a label and a probability per label
            page.select_option("#model", "sentiment")
            sync_api.expect(page.locator("#op")).to_have_value("classify")
            page.fill("#input", "a wonderful film\na dull film")
            page.click("#run")
            labels = page.locator(".card .label")
            sync_api.expect(labels).to_have_count(2)
            assert set(labels.all_inner_texts()) <= {"neg", "pos"}
            assert page.locator(".card .bar").count() == 4

            # generation streams in: several pieces arrive, and the text equals the API's non-streamed answer
            page.select_option("#model", "gpt")
            page.select_option("#op", "completions")
            page.fill("#input", "the cat")
            page.fill("#max-tokens", "8")
            page.click("#run")
            sync_api.expect(page.locator("#status")).to_contain_text("done:", timeout=30_000)
            status = page.inner_text("#status")
            pieces = int(status.split("done: ")[1].split(" pieces")[0])
            assert pieces > 1
            generated = page.inner_text("#generated")
            want = page.evaluate("""async () => {
                const r = await fetch('/v1/completions', {method: 'POST', headers: {'Content-Type':
                  'application/json', Authorization: 'Bearer k3y'}, body: JSON.stringify({model: 'gpt',
                  prompt: 'the cat', max_tokens: 8, temperature: 0})});
                return (await r.json()).choices[0].text; }""")
            assert generated == want and generated

            # the runs view: the served run with its metrics table and loss plot (loaded with the key)
            page.click("#tab-runs")
            run = page.locator(".run")
            sync_api.expect(run).to_have_count(1)
            sync_api.expect(run.locator(".label")).to_have_text("sentiment (served)")
            assert "best accuracy" in run.inner_text()
            page.wait_for_function("() => [...document.querySelectorAll('.plots img')].some("
                                   "i => i.complete && i.naturalWidth > 0)")
        finally:
            browser.close()
