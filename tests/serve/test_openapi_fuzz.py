"""Property-based testing of the HTTP API from its own OpenAPI schema (Schemathesis), in process
(ASGI transport) on the real default model: no request, valid or not, gets a 500.

The server is configured small (max_tokens 4, n <= 2, 2 prompts, 2000-character messages) so valid requests generate for
real yet cheaply. Examples are bounded (``EXAMPLES`` per operation, derandomized) to keep CI short;
raise ``ACCULTURATE_FUZZ_EXAMPLES`` for a longer hunt. Counterexamples found are kept as plain
regression tests below.
"""

from __future__ import annotations

import json
import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = int(os.environ.get("ACCULTURATE_FUZZ_EXAMPLES", "25"))
TRIED = {"cases": 0, "by_status": {}}


@pytest.fixture(scope="module")
def fuzz_app(model_pool, tmp_path_factory):
    from acculturate.serve import ServeConfig, create_app

    config = ServeConfig(db=str(tmp_path_factory.mktemp("fuzz") / "feedback.db"), max_tokens_cap=4,
                         default_max_tokens=2, max_n=2, max_prompts=2, max_batch_size=4, rate_limit_per_minute=0,
                         max_message_chars=2000, max_messages=8,   # bounded prefill: CPU-cheap valid requests
                         output_filters={"*": {"blocklist": ["default"]}, "UK": {"patterns": ["crumpet"]}})
    app = create_app(config, pool=model_pool)
    yield app   # Schemathesis' ASGI transport starts the app's lifespan (the batcher) once, at the first call
    app.state.batcher.stop(timeout=10)
    app.state.store.close()


def operations(app) -> list:
    """Every operation of the app's OpenAPI schema (admin routes too: they must answer 401, not 500)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def check(case) -> None:
    response = case.call(timeout=120)   # a slow answer on a busy CPU is not a failure; a 500 is
    TRIED["cases"] += 1
    TRIED["by_status"][response.status_code] = TRIED["by_status"].get(response.status_code, 0) + 1
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if response.status_code >= 400 and case.path.startswith("/v1/"):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
    if response.status_code == 200 and "text/event-stream" in response.headers.get("content-type", ""):
        assert response.text.rstrip().endswith("data: [DONE]")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_gets_a_server_error(fuzz_app, mode):
    """Requests drawn from each operation's schema (positive: as the schema says; negative: breaking
    it) by Hypothesis, shrunk to the smallest failing one if any fails."""
    from hypothesis import given
    from schemathesis.generation.modes import GenerationMode

    for operation in operations(fuzz_app):
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            check(case)

        try:
            run()
        except Unsatisfiable:   # negative mode: nothing to break (no body; a path parameter is any string)
            assert mode == "negative" and not operation.body


def test_fuzz_summary(capsys):
    """Prints how many generated requests ran (docs/security.md quotes it); runs after the fuzz test."""
    with capsys.disabled():
        print(f"\nschemathesis: {TRIED['cases']} requests, status counts {json.dumps(TRIED['by_status'])}")


# --- shrunk counterexamples, kept as regression tests ------------------------------------------------

REGRESSIONS = [
    # (path, raw body, expected status)
    ("/v1/chat/completions", '{"model": "none", "messages": [{"role": "user", "content": "\\ud800"}]}', 400),
    ("/v1/completions", '{"model": "none", "prompt": ["", "a"]}', 400),
    ("/v1/completions", '{"model": "none", "prompt": "a", "n": 2, "seed": -9223372036854775809}', 400),
    ("/v1/chat/completions", '{"model": "none", "messages": [{"role": "user", "content": [{"type": "text", '
                             '"text": "\\u0000"}]}]}', 400),
    ("/v1/feedback", '{"completion_id": "", "kind": "inappropriate"}', 400),
    ("/v1/feedback", '{"completion_id": "x", "kind": "inappropriate", "choice_index": -1}', 400),
    ("/v1/chat/completions", '{"model": "none", "messages": [{"role": "user", "content": "a"}], '
                             '"metadata": {"\\udc00": "x"}}', 400),
    ("/v1/chat/completions", '{"model": "none", "messages": [{"role": "user", "content": "a"}], "stop": [""]}', 400),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,body,status", REGRESSIONS)
def test_counterexamples_stay_fixed(fuzz_app, path, body, status):
    from starlette.testclient import TestClient

    r = TestClient(fuzz_app).post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
