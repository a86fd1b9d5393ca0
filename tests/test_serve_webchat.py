"""The web chat page in headless Chromium (Debian's, driven by Playwright): type, stream, stop."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from autarky.serve import ServeConfig, build_app
from tests.test_serve import Server, shared_model_dir

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
KEY = "sk-webchat-test-key"

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the Python package playwright is not installed"
)
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is absent (`make browser` installs Debian's chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    app, settings = build_app(shared_model_dir(tmp_path_factory), ServeConfig(slots=2, api_keys=[KEY]))
    with Server(app) as s:
        yield s


def test_web_chat_streams_an_answer_and_stops(page_server, tmp_path):
    requests = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # bypass_csp: the page's CSP forbids eval, which Playwright's wait_for_function uses
        page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_server.url + "/")
        # the server wants a key: the page says so and takes one
        page.wait_for_function("document.getElementById('model').textContent.includes('API key')")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model').textContent === 'model'")
        assert page.is_hidden("#notice")  # a bare checkpoint: the lineage cannot tell, so no claim
        page.fill("#max-tokens", "40")
        page.fill("#input", "Tell me about lists")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant .meta", timeout=20_000)
        answer = page.inner_text(".msg.assistant")
        assert page.inner_text(".msg.user") == "Tell me about lists"
        assert "length · 40 tokens" in answer and len(answer) > len("length · 40 tokens")
        if os.environ.get("AUTARKY_SCREENSHOT"):
            page.screenshot(path=os.environ["AUTARKY_SCREENSHOT"])
        # a long answer, stopped with the button: the page says so and the conversation goes on
        # The context is 256 tokens and the conversation already takes 90-140 (the first answer is
        # often broken UTF-8 that comes back as U+FFFD): the page asks for what is left, not 150.
        page.fill("#max-tokens", "150")
        # The stream arrives slowly (2 kB/s), so the answer is still coming when Stop is pressed,
        # however fast the engine makes it.
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": 2000, "uploadThroughput": -1},
        )
        page.fill("#input", "Go on")
        page.click("#send")
        page.wait_for_function(
            "(document.querySelectorAll('.msg.assistant')[1] || {}).textContent > ''"
            " || document.querySelector('.msg.error')"
        )
        assert not page.query_selector(".msg.error"), page.inner_text(".msg.error")
        page.click("#stop")
        page.wait_for_selector(".msg.assistant:nth-of-type(4) .meta", timeout=10_000)
        assert "stopped" in page.inner_text(".msg.assistant:nth-of-type(4)")
        assert not page.is_disabled("#send") and page.is_disabled("#stop")
        browser.close()
    assert requests and all(u.startswith(page_server.url) for u in requests)  # nothing fetched from elsewhere
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_web_chat_leaves_out_the_oldest_turns_when_the_context_is_full(page_server):
    """A conversation longer than the model's context goes on: the page sends the newest turns that
    fit (counted by the server's /tokenize) and says how many it left out; the screen keeps them all."""
    import httpx

    auth = {"Authorization": f"Bearer {KEY}"}
    repeat = 1
    while True:  # a message of 100-140 tokens: two such turns do not fit in 256, one does
        text = "Tell me about lists and tuples. " * repeat
        counted = httpx.post(
            page_server.url + "/tokenize",
            json={"messages": [{"role": "user", "content": text}]},
            headers=auth,
        ).json()
        if counted["count"] >= 100:
            assert counted["count"] <= 140 and counted["max_model_len"] == 256
            break
        repeat += 1
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(bypass_csp=True)
        page.goto(page_server.url + "/")
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model').textContent === 'model'")
        page.fill("#max-tokens", "40")
        for turn in (1, 2):
            page.fill("#input", text)
            page.press("#input", "Enter")
            page.wait_for_function(
                f"document.querySelectorAll('.msg.assistant .meta').length === {turn}"
                " || document.querySelector('.msg.error')"
            )
            assert not page.query_selector(".msg.error"), page.inner_text(".msg.error")
        metas = page.locator(".msg.assistant .meta").all_inner_texts()
        assert "left out" not in metas[0]
        assert "1 earlier turn left out to fit the context" in metas[1]
        assert page.locator(".msg.user").count() == 2  # the screen keeps the whole conversation
        browser.close()


def test_web_chat_says_when_the_model_was_never_chat_tuned(tmp_path_factory):
    """A model only pretrained continues text; the page said nothing of it, and users took it for broken."""
    from autarky.artifact import Builder

    model_dir = shared_model_dir(tmp_path_factory)
    with Builder(tmp_path_factory.mktemp("ws"), "model", "pretrained-only", config={}) as builder:
        for f in model_dir.iterdir():
            shutil.copy(f, builder.dir / f.name)
        model = builder.finish()
    app, settings = build_app(model.path, ServeConfig(slots=1))
    with Server(app) as server, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(bypass_csp=True)
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'pretrained-only'")
        assert page.is_visible("#notice")
        assert "never chat-tuned" in page.inner_text("#notice")
        browser.close()
    settings.audit.close()
