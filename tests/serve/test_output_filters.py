"""Output filters enabled by the server's config, per region."""

from __future__ import annotations

import json
import re

import pytest

from acculturate.decode.generate import Completion
from acculturate.decode.postprocess import FILTERED, OutputFilterConfig
from acculturate.serve import ServeConfig
from acculturate.serve.output_filters import HeldBackStream, filters_for

httpx = pytest.importorskip("httpx")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_config_builds_filters_per_region_and_names_bad_fields():
    config = ServeConfig(output_filters={"*": {"blocklist": ["default"]},
                                         "Indonesia": {"languages": ["id", "en"], "best_of": 2}})
    assert isinstance(config.output_filters["Indonesia"], OutputFilterConfig)
    assert filters_for(config.output_filters, "indonesia").best_of == 2
    # A region's entry adds to "*": naming a region never drops the "*" blocklist.
    assert filters_for(config.output_filters, "indonesia").blocklist == ("default",)
    assert filters_for(config.output_filters, "indonesia").languages == ("id", "en")
    assert filters_for(config.output_filters, "UK").blocklist == ("default",)
    assert filters_for(config.output_filters, "*").blocklist == ("default",)
    assert filters_for(config.output_filters, None).blocklist == ("default",)
    assert filters_for({}, "UK") is None
    with pytest.raises(ValueError, match=r"output_filters.UK: best_of"):
        ServeConfig(output_filters={"UK": {"best_of": 0}})
    with pytest.raises(ValueError, match=r"output_filters.UK: unknown field|bogus"):
        ServeConfig(output_filters={"UK": {"bogus": 1}})


def test_a_region_adds_to_the_star_filters_and_cannot_loosen_them():
    star = {"blocklist": ["default"], "patterns": ["forbidden"], "languages": ["en", "fr"], "best_of": 2}
    config = ServeConfig(output_filters={"*": star, "UK": {"patterns": ["crumpet"], "languages": ["en"],
                                                           "best_of": 1, "stream_holdback": None}})
    uk = filters_for(config.output_filters, "uk")
    assert uk.blocklist == ("default",) and uk.patterns == ("forbidden", "crumpet")
    assert uk.languages == ("en",) and uk.best_of == 2 and uk.stream_holdback is None
    assert filters_for(config.output_filters, "uk") is uk   # combined once, not per request
    blocklist = uk.compiled_blocklist()
    assert blocklist.find("a forbidden word") and blocklist.find("a crumpet")
    with pytest.raises(ValueError, match=r"output_filters\['UK'\].*nothing could pass"):
        ServeConfig(output_filters={"*": {"languages": ["en"]}, "UK": {"languages": ["fr"]}})


def _streamed(filters: OutputFilterConfig, text: str, chunk: int = 1) -> tuple[str, HeldBackStream]:
    sent = []
    stream = HeldBackStream(filters, sent.append)
    for start in range(0, len(text), chunk):
        stream.add(text[start:start + chunk])
    return "".join(sent), stream


def test_held_back_stream_sends_clean_text_and_stops_before_a_blocked_phrase():
    filters = OutputFilterConfig(patterns=(r"(?<!\w)(?:ass|bad word)(?!\w)",), stream_holdback=8)
    clean = "The class assessed a passage about grass."   # 'ass' inside words is no match
    sent, stream = _streamed(filters, clean)
    assert sent == clean[:len(clean) - 8] and not stream.blocked   # the last 8 characters held back
    rest = []
    stream.emit = rest.append
    done = stream.finish(Completion(clean, [], "eos", 3, 9), filters.fallback)
    assert rest == [clean[-8:]] and done.text == clean
    blocked = "A long clean opening sentence, then a bad word and more text after it."
    for chunk in (1, 3, 7):
        sent, stream = _streamed(filters, blocked, chunk)
        assert stream.blocked and blocked.startswith(sent) and len(sent) <= blocked.index("bad word")
        done = stream.finish(Completion(filters.fallback, [], FILTERED, 3, 9), filters.fallback)
        assert done.text == sent and done.finish_reason == FILTERED   # what the client saw is recorded
    sent, stream = _streamed(filters, "bad word at once")
    assert sent == ""
    got = []
    stream.emit = got.append
    done = stream.finish(Completion(filters.fallback, [], FILTERED, 3, 9), filters.fallback)
    assert got == [filters.fallback] and done.text == filters.fallback   # nothing shown yet: the fallback
    assert not OutputFilterConfig(blocklist=("default",), best_of=2).streams_incrementally
    assert not OutputFilterConfig(languages=("en",)).streams_incrementally
    assert not OutputFilterConfig(patterns=("x",), stream_holdback=None).streams_incrementally
    with pytest.raises(ValueError, match="stream_holdback: expected None or an integer >= 0"):
        OutputFilterConfig(stream_holdback=-1)


def _stream_text(url: str, body: dict) -> tuple[list[str], list[dict]]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=300, json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    return [d for d in deltas if d], events


@pytest.mark.slow
def test_server_streams_a_filtered_answer_as_it_is_written(live_server):
    body = {"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 24, "temperature": 0,
            "metadata": {"region": "Open"}}
    server, _ = live_server(output_filters={"Open": {"patterns": ["xyzzy"], "stream_holdback": 8}})
    with server as url:
        whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()["choices"][0]["message"]["content"]
        deltas, _ = _stream_text(url, body)
    assert len(deltas) > 2 and "".join(deltas) == whole          # many pieces, the same answer
    words = re.findall(r"[A-Za-z]{4,}", whole)
    word = words[len(words) // 2]                                   # a word from the middle of it
    start = re.search(rf"\b{word}\b", whole, re.IGNORECASE).start()
    server, _ = live_server(output_filters={"Cut": {"patterns": [rf"\b{word}\b"], "stream_holdback": 8}})
    with server as url:
        deltas, events = _stream_text(url, {**body, "metadata": {"region": "Cut"}})
    text = "".join(deltas)
    assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert whole.startswith(text) and len(text) <= start            # only clean text before the word


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
