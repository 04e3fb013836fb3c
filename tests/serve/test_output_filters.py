"""Output filters enabled by the server's config, per region."""

from __future__ import annotations

import json

import pytest

from acculturate.decode.postprocess import OutputFilterConfig
from acculturate.serve import ServeConfig
from acculturate.serve.output_filters import filters_for

httpx = pytest.importorskip("httpx")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_config_builds_filters_per_region_and_names_bad_fields():
    config = ServeConfig(output_filters={"*": {"blocklist": ["default"]},
                                         "Indonesia": {"languages": ["id", "en"], "best_of": 2}})
    assert isinstance(config.output_filters["Indonesia"], OutputFilterConfig)
    assert filters_for(config.output_filters, "indonesia").best_of == 2
    assert filters_for(config.output_filters, "UK").blocklist == ("default",)
    assert filters_for(config.output_filters, None).blocklist == ("default",)
    assert filters_for({}, "UK") is None
    with pytest.raises(ValueError, match=r"output_filters.UK: best_of"):
        ServeConfig(output_filters={"UK": {"best_of": 0}})
    with pytest.raises(ValueError, match=r"output_filters.UK: unknown field|bogus"):
        ServeConfig(output_filters={"UK": {"bogus": 1}})


@pytest.mark.slow
def test_server_filters_by_region(live_server):
    # 'Testland' rejects every answer (a pattern matching any letter); UK re-ranks 2 candidates.
    server, app = live_server(output_filters={"Testland": {"patterns": ["[A-Za-z]"], "fallback": "Filtered."},
                                              "UK": {"best_of": 2, "reward": "mean_logprob"}})
    body = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 6, "temperature": 0}
    with server as url:
        plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        assert plain["choices"][0]["finish_reason"] in ("stop", "length")
        blocked = httpx.post(f"{url}/v1/chat/completions", json={**body, "metadata": {"region": "Testland"}},
                             timeout=300).json()
        assert blocked["choices"][0]["message"]["content"] == "Filtered."
        assert blocked["choices"][0]["finish_reason"] == "content_filter"
        ranked = httpx.post(f"{url}/v1/chat/completions", json={**body, "metadata": {"region": "UK"}, "n": 1},
                            timeout=300).json()
        assert len(ranked["choices"]) == 1 and ranked["choices"][0]["message"]["content"]
        # Two candidates were generated for the one choice.
        assert ranked["usage"]["completion_tokens"] > plain["usage"]["completion_tokens"] or \
            ranked["usage"]["completion_tokens"] >= 2
        # A stream gets the filtered answer as one piece.
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=300,
                          json={**body, "stream": True, "metadata": {"region": "Testland"}}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert text == "Filtered."
        assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
