"""API keys, the bind check, per-client rate limits and one judgement per completion per client."""

from __future__ import annotations

import pytest

from acculturate.config_loading import ConfigError
from acculturate.serve.auth import (
    ANONYMOUS, AuthConfigError, RateLimiter, check_bind, client_id, match_key, resolve_api_keys,
)

httpx = pytest.importorskip("httpx")

KEY_A, KEY_B = "key-alpha-0001", "key-bravo-0002"
QUESTION = [{"role": "user", "content": "Say hi."}]


def test_keys_come_from_config_file_and_environment(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{KEY_B}\n\n")
    env = {"ACCULTURATE_API_KEYS": "env-key-0003, env-key-0004", "ACCULTURATE_API_TOKEN": "token-0005"}
    keys = resolve_api_keys([KEY_A], str(keys_file), "token-0005", environ=env)
    assert keys == [KEY_A, "token-0005", KEY_B, "env-key-0003", "env-key-0004"]
    assert resolve_api_keys(environ={}) == []
    with pytest.raises(AuthConfigError, match="8-256 printable"):
        resolve_api_keys(["short"], environ={})
    with pytest.raises(AuthConfigError, match="not found"):
        resolve_api_keys(keys_file=str(tmp_path / "missing"), environ={})
    assert match_key(f"Bearer {KEY_B}", keys) == KEY_B and match_key(f"bearer  {KEY_A} ", keys) == KEY_A
    assert match_key("Bearer nope-nope-nope", keys) is None and match_key(KEY_A, keys) is None
    assert match_key("Bearer \ud800", keys) is None   # a lone surrogate is no key, not a crash
    assert client_id(KEY_A).startswith("key:") and KEY_A not in client_id(KEY_A) and client_id(None) == ANONYMOUS


def test_an_open_api_is_refused_beyond_loopback():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, [], insecure=False)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ConfigError, match="--insecure"):
            check_bind(host, [], insecure=False)
        check_bind(host, [KEY_A], insecure=False)
        check_bind(host, [], insecure=True)


def test_serve_cli_refuses_a_public_open_server_before_loading_the_model(monkeypatch, capsys):
    import acculturate.serve.app as app_module
    from acculturate.cli import main

    def no_model(config):   # reached only once the bind check passed
        raise RuntimeError(f"would load the model; keys {config.resolved_api_keys()}")

    monkeypatch.delenv("ACCULTURATE_API_KEYS", raising=False)
    monkeypatch.delenv("ACCULTURATE_API_TOKEN", raising=False)
    monkeypatch.setattr(app_module, "create_app", no_model)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match=f"keys \\['{KEY_A}', '{KEY_B}'\\]"):
        main(["serve", "--host", "0.0.0.0", "--api-key", KEY_A, "--api-key", KEY_B])
    with pytest.raises(RuntimeError, match=r"keys \[\]"):
        main(["serve", "--host", "0.0.0.0", "--insecure"])
    monkeypatch.setenv("ACCULTURATE_API_KEYS", KEY_B)
    with pytest.raises(RuntimeError, match=f"keys \\['{KEY_B}'\\]"):
        main(["serve", "--host", "0.0.0.0"])


def test_rate_limiter_is_a_token_bucket_per_client():
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)   # one a second
    assert limiter.take("b", now=0.0) == 0.0                  # another client has its own bucket
    assert limiter.take("a", now=1.0) == 0.0
    assert RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(2.1) == "3"
    assert RateLimiter(per_minute=0, burst=1).take("a") == 0.0   # off
    small = RateLimiter(per_minute=60, burst=1, max_clients=2)
    for client in "abc":
        small.take(client, now=0.0)
    assert len(small._buckets) == 2   # memory stays bounded


@pytest.mark.slow
def test_keys_guard_every_v1_route_and_feedback_is_one_per_client(live_server):
    server, app = live_server(api_keys=[KEY_A, KEY_B], rate_limit_per_minute=60, rate_limit_burst=40)
    a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
    with server as url, httpx.Client(base_url=url, timeout=120) as http:
        routes = [("GET", "/v1/models", None), ("GET", "/v1/models/smollm2-135m", None),
                  ("GET", "/v1/retrieval/indexes", None),
                  ("POST", "/v1/chat/completions", {"model": "none", "messages": QUESTION, "max_tokens": 2}),
                  ("POST", "/v1/completions", {"model": "none", "prompt": "Hi", "max_tokens": 2}),
                  ("POST", "/v1/feedback", {"completion_id": "x", "kind": "correct_cultural"})]
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": KEY_A}):
                r = http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
                assert r.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200   # liveness stays open
        answer = http.post("/v1/chat/completions", headers=a,
                           json={"model": "none", "messages": QUESTION, "max_tokens": 3}).json()
        cid = answer["id"]

        # Feedback must name a completion this server produced.
        r = http.post("/v1/feedback", headers=a, json={"completion_id": "chatcmpl-unknown", "kind": "inappropriate"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
        r = http.post("/v1/feedback", headers=a, json={"completion_id": cid, "kind": "inappropriate",
                                                       "choice_index": 1})
        assert r.status_code == 404

        # Twenty identical +1s from one key are one judgement; another key adds its own.
        for _ in range(20):
            r = http.post("/v1/feedback", headers=a, json={"completion_id": cid, "kind": "correct_cultural"})
            assert r.status_code == 200, r.text
        assert r.json()["replaced"] is True
        assert http.post("/v1/feedback", headers=b,
                         json={"completion_id": cid, "kind": "correct_cultural"}).json()["replaced"] is False
        rows = app.state.store.feedback()
        assert len(rows) == 2 and {row["client"] for row in rows} == {client_id(KEY_A), client_id(KEY_B)}
        # A later judgement of the same client replaces its earlier one (a new id, so learning reads it).
        last_id = max(row["id"] for row in rows)
        r = http.post("/v1/feedback", headers=a, json={"completion_id": cid, "kind": "inappropriate"})
        rows = app.state.store.feedback()
        assert len(rows) == 2 and r.json()["id"] > last_id
        assert {(row["client"], row["kind"]) for row in rows} == {(client_id(KEY_A), "inappropriate"),
                                                                  (client_id(KEY_B), "correct_cultural")}

        # Per-key rate limit: key A has spent its burst; key B has not.
        for _ in range(40):
            r = http.get("/v1/models", headers=a)
            if r.status_code == 429:
                break
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["Retry-After"]) >= 1
        assert http.get("/v1/models", headers=b).status_code == 200
