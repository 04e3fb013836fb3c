"""Request checking: each bad parameter is refused with a 400 that names it, as the OpenAI API does."""

from __future__ import annotations

import pytest

from acculturate.serve.errors import APIError
from acculturate.serve.protocol import Limits, parse_chat, parse_completion

LIMITS = Limits(max_tokens_cap=100, default_max_tokens=50, max_n=4, max_prompts=3)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def param_of(body, parse=parse_chat) -> str | None:
    with pytest.raises(APIError) as e:
        parse(body, LIMITS)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value.param


def test_chat_defaults_and_fields():
    req = parse_chat({**CHAT, "stop": "\n", "seed": 3, "n": 2, "top_p": 0.5, "temperature": 0,
                      "metadata": {"region": "UK"}, "stream": True, "stream_options": {"include_usage": True},
                      "user": "ignored", "presence_penalty": 0}, LIMITS)
    assert req.sampling.stop == ("\n",) and req.sampling.seed == 3 and req.sampling.n == 2
    assert req.sampling.max_tokens == 50 and req.region == "UK" and req.stream and req.include_usage
    config = req.sampling.generation_config()
    assert config.greedy and config.stop == ("\n",) and config.max_new_tokens == 50
    plain = parse_chat(CHAT, LIMITS).sampling
    assert (plain.temperature, plain.top_p, plain.n) == (1.0, 1.0, 1)  # OpenAI's defaults
    parts = parse_chat({"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, LIMITS)
    assert parts.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]
    assert parse_chat({**CHAT, "max_completion_tokens": 7}, LIMITS).sampling.max_tokens == 7
    assert parse_completion({"model": "m", "prompt": "x"}, LIMITS).sampling.max_tokens == 16


@pytest.mark.parametrize("change, param", [
    ({"model": None}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
    ({"max_tokens": 101}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 500}, "max_completion_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 5}, "n"),
    ({"n": True}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"seed": 1.5}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"metadata": {"region": 3}}, "metadata"),
])
def test_chat_refusals_name_the_parameter(change, param):
    assert param_of({**CHAT, **change}) == param


def test_completion_refusals():
    assert param_of({"model": "m", "prompt": [1, 2, 3]}, parse_completion) == "prompt"
    assert param_of({"model": "m", "prompt": ["a"] * 4}, parse_completion) == "prompt"
    assert param_of({"model": "m", "prompt": "x", "echo": True}, parse_completion) == "echo"
    assert param_of(["not", "an", "object"]) is None
