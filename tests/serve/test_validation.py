"""Every request field is checked before generation: the inputs that once reached a 500 (or a stream
that just stopped) now get an OpenAI-style 400, alike on a SQLite and a PostgreSQL store."""

from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")

CHAT = {"model": "none", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}


def raw(http, path: str, text: str):
    """POST a body written by hand (JSON escapes such as \\ud800 that httpx would not produce)."""
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


def bad_requests(cid: str) -> list[tuple[str, str, str | None]]:
    """(path, raw JSON body, the param the 400 must name) for each input that once gave a 500."""
    chat = '{"model": "none", "max_tokens": 2, "messages": [{"role": "user", "content": %s}]%s}'
    return [
        ("/v1/chat/completions", chat % ('"hi \\ud800"', ""), "messages[0].content"),
        ("/v1/chat/completions", chat % ('"nul \\u0000 here"', ""), "messages[0].content"),
        ("/v1/completions", '{"model": "none", "prompt": "x\\udfff", "max_tokens": 2}', "prompt"),
        ("/v1/chat/completions", chat % ('"hi"', ', "metadata": {"region": "%s"}' % ("R" * 129)), "metadata.region"),
        ("/v1/chat/completions", chat % ('"hi"', ', "stop": "%s"' % ("s" * 100_000)), "stop"),
        ("/v1/chat/completions", chat % ('"hi"', ', "seed": %d' % 2 ** 70), "seed"),
        ("/v1/completions", json.dumps({"model": "none", "prompt": ["p"] * 16, "n": 8, "max_tokens": 2}), "n"),
        ("/v1/chat/completions", json.dumps({**CHAT, "model": "m" * 300}), "model"),
        ("/v1/chat/completions", json.dumps({"model": "none", "max_tokens": 2, "retrieval": {"index": "customs"},
                                             "messages": [{"role": "system", "content": "Be brief."}]}), "messages"),
        ("/v1/chat/completions", '{"model": "none", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", None),
        ("/v1/feedback", '{"completion_id": "%s", "kind": "inappropriate", "comment": "\\ud800"}' % cid, "comment"),
        ("/v1/feedback", '{"completion_id": "chatcmpl-\\ud800", "kind": "inappropriate"}', "completion_id"),
        ("/v1/feedback", json.dumps({"completion_id": cid, "kind": "inappropriate", "choice_index": 2 ** 70}),
         "choice_index"),
        ("/v1/feedback", json.dumps({"completion_id": cid, "kind": "inappropriate", "choice_index": 2 ** 40}),
         "choice_index"),
        ("/v1/feedback", json.dumps({"completion_id": cid, "kind": "inappropriate", "region": "R" * 129}), "region"),
        ("/v1/feedback", json.dumps({"completion_id": cid, "kind": "adjustment", "corrected_text": "a\x00b"}),
         "corrected_text"),
        ("/v1/feedback", json.dumps({"completion_id": "c" * 65, "kind": "inappropriate"}), "completion_id"),
        ("/v1/feedback", json.dumps({"completion_id": cid, "kind": ["inappropriate"]}), "kind"),
    ]


def check_every_bad_request_is_a_400(url: str, app) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        answer = http.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200, answer.text
        cid = answer.json()["id"]
        stored = app.state.store.count("completions")
        for path, body, param in bad_requests(cid):
            r = raw(http, path, body)
            assert r.status_code == 400, (path, body[:120], r.status_code, r.text[:300])
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
            assert error["param"] == param, (body[:120], error)
        # Nothing was generated for them, and the connection stayed usable.
        assert app.state.store.count("completions") == stored and app.state.store.count() == 0
        assert http.get("/health").status_code == 200
        # Within the bounds still works: region of 128 characters, a feedback on choice 0.
        ok = http.post("/v1/chat/completions", json={**CHAT, "metadata": {"region": "R" * 128}})
        assert ok.status_code == 200 and app.state.store.completion(ok.json()["id"])["region"] == "R" * 128
        r = http.post("/v1/feedback", json={"completion_id": cid, "kind": "inappropriate", "region": "R" * 128})
        assert r.status_code == 200, r.text


@pytest.mark.slow
def test_bad_fields_get_400_before_generation_on_sqlite(live_server):
    server, app = live_server(max_batch_size=16)
    with server as url:
        check_every_bad_request_is_a_400(url, app)


@pytest.mark.slow
def test_bad_fields_get_400_before_generation_on_postgres(live_server, postgres_url):
    server, app = live_server(db=postgres_url)
    assert app.state.store.engine.dialect.name == "postgresql"
    with server as url:
        check_every_bad_request_is_a_400(url, app)


@pytest.mark.slow
def test_a_stream_that_fails_after_it_started_ends_with_an_error_and_done(live_server):
    server, app = live_server()

    def broken(records):
        raise OSError("disk full")

    app.state.store.record_completions = broken
    with server as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                          json={**CHAT, "stream": True, "max_tokens": 4}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][6:])["error"]
        assert error["type"] == "server_error" and "nothing was stored" in error["message"]
        # A request that fails the same way without streaming is a clean JSON error, not a dropped connection.
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=120)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


@pytest.mark.slow
def test_rendering_and_tokenizing_run_off_the_event_loop(live_server, monkeypatch):
    """A long prompt is tokenized in a worker thread, so /health and other clients are not held up."""
    import threading

    import acculturate.serve.state as app_module

    seen = []
    real = app_module.encode_prompts

    def recording(tokenizer, prompts):
        seen.append(threading.current_thread().name)
        return real(tokenizer, prompts)

    monkeypatch.setattr(app_module, "encode_prompts", recording)
    server, _ = live_server()
    with server as url:
        r = httpx.post(f"{url}/v1/completions", timeout=120,
                       json={"model": "none", "prompt": "word " * 20_000, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert seen and all("AnyIO worker thread" in name for name in seen), seen


@pytest.mark.slow
def test_health_stays_fast_while_eight_1mb_prompts_are_tokenized_and_refused(live_server):
    """The issue's scenario: eight ~1 MB prompts at once (each refused for its length) once pushed
    /health from 72 ms to 2.8 s; now each is refused on its length before tokenizing, and /health
    answers within 0.5 s throughout."""
    import threading
    import time

    prompt = "word " * 190_000   # 950 kB of JSON: under max_body_bytes
    server, _ = live_server()
    with server as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.get("/health").status_code == 200
        statuses = []

        def post():
            with httpx.Client(base_url=url, timeout=120) as own:
                r = own.post("/v1/completions", json={"model": "none", "prompt": prompt, "max_tokens": 2})
                statuses.append((r.status_code, r.json()["error"]["code"]))

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        latencies = []
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            assert http.get("/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
        for t in threads:
            t.join()
    # Refused before any generation: over max_message_chars, checked before tokenizing.
    assert statuses == [(400, "string_above_max_length")] * 8
    assert len(latencies) >= 3 and max(latencies) < 0.5, latencies
