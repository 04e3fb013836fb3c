"""The web chat in a real headless Chromium (Debian's ``chromium`` package, driven by Playwright):
send a message, watch the answer stream in, give each kind of feedback, find it in the store."""

from __future__ import annotations

import contextlib
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} not found: apt-get install -y chromium (Debian package)"),
]


MODELS_LOADED = "[data-testid=model] option[value='smollm2-135m']"


@contextlib.contextmanager
def chat_page(url: str, ready: str = MODELS_LOADED):
    """(page, errors): the chat page open in headless Chromium once ``ready`` (a selector) is in it (by
    default: the model list loaded); errors collects the page's uncaught JavaScript errors."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector(ready, state="attached")
            yield page, errors
        finally:
            browser.close()


def test_chat_stream_and_every_feedback_kind(live_server):
    server, app = live_server()
    store = app.state.store
    with server as url, chat_page(url) as (page, errors):
        page.fill("[data-testid=region]", "Mexico")
        assert "Mexico" in page.input_value("[data-testid=system]")
        page.fill("[data-testid=temperature]", "0")  # greedy: a deterministic answer
        page.fill("[data-testid=max_tokens]", "24")

        # Record every text the answer shows while it streams.
        page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
            const t = document.querySelector('.msg.assistant .text');
            if (t && t.textContent && window.seen[window.seen.length - 1] !== t.textContent)
                window.seen.push(t.textContent); }).observe(document.getElementById('log'),
            {subtree: true, childList: true, characterData: true}); }""")
        page.fill("[data-testid=input]", "What do people eat for breakfast?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant.done", timeout=120_000)
        seen = page.evaluate("window.seen")
        answer = page.text_content(".msg.assistant .text")
        assert answer.strip() and seen[-1] == answer
        assert len(seen) > 2 and all(answer.startswith(s) for s in seen)  # it grew piece by piece
        cid = page.get_attribute(".msg.assistant", "data-completion-id")
        stored = store.completion(cid)
        assert stored["completion"] == answer and stored["region"] == "Mexico"
        assert stored["messages"][0]["role"] == "system" and "Mexico" in stored["messages"][0]["content"]
        assert stored["sampling"]["temperature"] == 0.0 and stored["sampling"]["max_tokens"] == 24

        status = ".msg.assistant .status"
        page.click("[data-testid=thumbs-up]")
        page.wait_for_selector(f"{status}[data-kind=correct_cultural]")
        page.click("[data-testid=flag]")
        page.wait_for_selector(f"{status}[data-kind=inappropriate]")
        page.click("[data-testid=edit]")
        page.fill("[data-testid=edit-text]", "Chilaquiles with salsa verde, and a cup of café de olla.")
        page.fill("[data-testid=edit-comment]", "more typical")
        page.click("[data-testid=edit-save]")
        page.wait_for_selector(f"{status}[data-kind=adjustment]")
        assert errors == []

    # One judgement per completion per client: each click replaced the one before, the last counts.
    rows = store.feedback()
    assert [(r["kind"], r["reward"]) for r in rows] == [("adjustment", -0.5)]
    assert rows[0]["id"] == 3   # the third judgement, stored after the first two were replaced
    assert all(r["completion_id"] == cid and r["region"] == "Mexico" for r in rows)
    assert rows[0]["corrected_text"] == "Chilaquiles with salsa verde, and a cup of café de olla."
    assert rows[0]["corrected_reward"] == 0.5 and rows[0]["comment"] == "more typical"


def test_chat_answers_from_an_index_and_lists_its_sources(live_server, rag_home):
    """With an index named in the side panel the request carries ``retrieval``, and the answer shows
    the retrieved passages under it (the cited ones first)."""
    server, app = live_server(rag_home=str(rag_home))
    with server as url, chat_page(url) as (page, errors):
        page.fill("[data-testid=temperature]", "0")
        page.fill("[data-testid=max_tokens]", "24")
        page.wait_for_selector("#rag-indexes option[value='customs']", state="attached")   # offered in the field
        page.fill("[data-testid=rag-index]", "customs")
        page.fill("[data-testid=rag-k]", "2")
        page.fill("[data-testid=input]", "What do families build for the Day of the Dead?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant.done [data-testid=sources]", timeout=120_000)
        items = page.locator("[data-testid=sources] li")
        assert items.count() == 2
        texts = [items.nth(i).text_content() for i in range(2)]
        assert any("Day of the Dead" in t for t in texts) and any("Tomatina" in t for t in texts)
        cid = page.get_attribute(".msg.assistant", "data-completion-id")
        assert "[1] Customs in Mexico > Holidays" in app.state.store.completion(cid)["prompt"]

        page.fill("[data-testid=rag-index]", "no-such-index")   # a bad index: the error shows, nothing breaks
        page.fill("[data-testid=input]", "And in Spain?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant.error", timeout=60_000)
        assert "no index named" in page.text_content(".msg.assistant.error .text")
        assert errors == []


def test_chat_asks_for_the_api_key_keeps_it_in_the_tab_and_explains_429(live_server):
    """A server with keys: the page says a key is needed (401), a wrong key is named as refused, the
    right one (typed in the side panel, kept in sessionStorage, never localStorage) lists the models and
    chats; past the rate limit the answer says to wait, with the server's Retry-After."""
    key = "chat-test-key-0001"
    server, app = live_server(api_keys=[key], rate_limit_per_minute=0.5, rate_limit_burst=3)
    with server as url, chat_page(url, ready=".msg.error.setup") as (page, errors):
        assert "needs an API key (401)" in page.text_content(".msg.error.setup")
        assert page.locator("[data-testid=model] option").count() == 0

        page.fill("[data-testid=token]", "not-the-key-0001")
        page.press("[data-testid=token]", "Tab")                # leaving the field: one change event
        page.wait_for_selector(".msg.error.setup >> text=refused this API key")

        page.fill("[data-testid=token]", key)
        page.press("[data-testid=token]", "Tab")                # 2 requests: models and indexes
        page.wait_for_selector(MODELS_LOADED, state="attached")
        assert page.locator(".msg.error.setup").count() == 0
        assert page.evaluate("sessionStorage.getItem('acculturate-api-key')") == key
        assert page.evaluate("localStorage.length") == 0

        page.fill("[data-testid=temperature]", "0")
        page.fill("[data-testid=max_tokens]", "4")
        page.fill("[data-testid=input]", "Hello")
        page.click("[data-testid=send]")                       # the third request: the burst is spent
        page.wait_for_selector(".msg.assistant.done", timeout=120_000)
        cid = page.get_attribute(".msg.assistant.done", "data-completion-id")
        assert app.state.store.completion(cid)["completion"] == page.text_content(".msg.assistant.done .text")

        page.fill("[data-testid=input]", "And again")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant.error", timeout=60_000)
        text = page.text_content(".msg.assistant.error .text")
        assert "Too many requests for this key (429): wait" in text and " s and send again" in text

        page.reload()                                          # the key survives a reload of the tab
        page.wait_for_selector(".msg.error.setup")             # ... and is still rate-limited, not refused
        assert page.input_value("[data-testid=token]") == key
        assert "429" in page.text_content(".msg.error.setup")
        assert errors == []

