"""The OpenAI-compatible API, exercised with the real ``openai`` client against a uvicorn server
on 127.0.0.1 serving the default model (CPU, a few tokens per request)."""

from __future__ import annotations

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(url: str, key: str = "unused") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def solo(pool, prompt: str, max_tokens: int) -> str:
    """What our sampler writes for ``prompt`` alone, greedily: the reference for the server's text."""
    from acculturate.decode import GenerationConfig, generate

    return generate(pool.base.model, pool.base.tokenizer, [prompt], GenerationConfig(max_new_tokens=max_tokens))[0].text


def test_models_chat_stream_and_completions(live_server, model_pool):
    from acculturate.data import render_prompt

    server, app = live_server()
    with server as url:
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["smollm2-135m"]

        chat = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8, temperature=0)
        expected = solo(model_pool, render_prompt(QUESTION, model_pool.base.tokenizer, "chat"), 8)
        assert chat.choices[0].message.content == expected and expected.strip()
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 5
        assert chat.id.startswith("chatcmpl-")

        # Streaming: several chunks that add up to the same greedy text, then usage.
        pieces, finish, usage = [], None, None
        for chunk in c.chat.completions.create(model="none", messages=QUESTION, max_tokens=8, temperature=0,
                                               stream=True, stream_options={"include_usage": True}):
            assert chunk.id.startswith("chatcmpl-")
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        assert len([p for p in pieces if p]) > 1
        assert "".join(pieces) == expected and finish in ("stop", "length")
        assert usage.completion_tokens == chat.usage.completion_tokens

        # Legacy completions: n choices, a stop string, seeded sampling reproducible.
        out = c.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=6,
                                   temperature=0, n=2, stop=["."])
        assert [ch.index for ch in out.choices] == [0, 1]
        assert out.choices[0].text == out.choices[1].text and "." not in out.choices[0].text
        seeded = [c.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=6,
                                       temperature=1.0, top_p=0.9, seed=7, n=2).choices for _ in range(2)]
        assert [ch.text for ch in seeded[0]] == [ch.text for ch in seeded[1]]
        other = c.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=6,
                                     temperature=1.0, top_p=0.9, seed=8)
        assert isinstance(other.choices[0].text, str)

        # Every served choice is in the store, with its prompt and sampling settings.
        stored = app.state.store.completion(out.id, 1)
        assert stored["prompt"] == "The capital of France is" and stored["sampling"]["stop"] == ["."]
        assert stored["adapter_version"] == "base:smollm2-135m"
        assert app.state.store.completion(chat.id)["messages"] == QUESTION


def test_errors_are_openai_error_objects(live_server):
    server, _ = live_server(max_tokens_cap=64, default_max_tokens=32, max_body_bytes=2000)
    with server as url:
        c = client(url)
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=2)
        assert e.value.code == "model_not_found" and e.value.param == "model"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="none", messages=QUESTION, max_tokens=65)
        assert e.value.param == "max_tokens"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="none", messages=QUESTION, max_tokens=2, temperature=3)
        assert e.value.param == "temperature"
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="none", prompt="x", max_tokens=2, logprobs=2)
        assert e.value.param == "logprobs"

        raw = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": "none", "messages": [',
                         headers={"content-type": "application/json"})
        assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
        big = {"model": "none", "messages": [{"role": "user", "content": "x" * 3000}]}
        raw = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert raw.status_code == 413 and raw.json()["error"]["code"] == "request_too_large"
        raw = httpx.post(f"{url}/v1/chat/completions", json={"model": "none", "messages": []})
        assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"
        raw = httpx.get(f"{url}/v1/nothing-here")
        assert raw.status_code == 404 and raw.json()["error"]["type"] == "invalid_request_error"
        raw = httpx.get(f"{url}/v1/chat/completions")
        assert raw.status_code == 405 and "error" in raw.json()


def test_api_token_and_admin_endpoints(live_server, model_pool, tmp_path, monkeypatch):
    import torch

    from acculturate.adapters import LoRAConfig, apply_lora, save_adapter
    from acculturate.models import load

    # An adapter whose B is not zero, so it changes the output.
    model, _ = load("smollm2-135m", device="cpu")
    config = LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"))
    apply_lora(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter_dir = save_adapter(model, tmp_path / "adapter", "smollm2-135m", config)
    del model

    monkeypatch.delenv("ACCULTURATE_ADMIN_TOKEN", raising=False)
    server, _ = live_server(api_token="chat-secret")
    with server as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert [m.id for m in client(url, "chat-secret").models.list().data] == ["smollm2-135m"]
        # No admin token configured: admin is closed.
        r = httpx.get(f"{url}/admin/adapters", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

    monkeypatch.setenv("ACCULTURATE_ADMIN_TOKEN", "admin-secret")
    server, app = live_server()
    with server as url:
        assert httpx.post(f"{url}/admin/adapters", json={"name": "x", "path": "."}).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{url}/admin/adapters", json={"name": "x", "path": "."}, headers=bad).status_code == 401
        admin = {"Authorization": "Bearer admin-secret"}
        r = httpx.post(f"{url}/admin/adapters", json={"name": "uk", "path": str(adapter_dir)}, headers=admin,
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["version"].startswith("uk@")
        try:
            c = client(url)
            assert [m.id for m in c.models.list().data] == ["smollm2-135m", "uk"]
            base = c.chat.completions.create(model="none", messages=QUESTION, max_tokens=8, temperature=0)
            adapted = c.chat.completions.create(model="uk", messages=QUESTION, max_tokens=8, temperature=0)
            again = c.chat.completions.create(model="none", messages=QUESTION, max_tokens=8, temperature=0)
            assert adapted.choices[0].message.content != base.choices[0].message.content
            assert again.choices[0].message.content == base.choices[0].message.content
            assert adapted.system_fingerprint == r.json()["version"]
            assert app.state.store.completion(adapted.id)["adapter"] == "uk"
            r = httpx.post(f"{url}/admin/adapters", json={"name": "bad", "path": str(tmp_path / "missing")},
                           headers=admin)
            assert r.status_code == 400 and r.json()["error"]["param"] == "path"
        finally:
            r = httpx.delete(f"{url}/admin/adapters/uk", headers=admin, timeout=60)
        assert r.status_code == 200
        with pytest.raises(openai.NotFoundError):
            client(url).chat.completions.create(model="uk", messages=QUESTION, max_tokens=2)


def test_concurrent_requests_are_batched_and_equal_solo_answers(live_server, model_pool):
    prompts = ["The capital of France is", "My favourite food is", "In Japan, people greet by",
               "The weather today is", "A good breakfast has", "Football is popular in"]
    server, app = live_server(batch_window_ms=200)
    with server as url:
        c = client(url)
        results: dict[int, str] = {}

        def ask(i):
            results[i] = c.completions.create(model="none", prompt=prompts[i], max_tokens=5, temperature=0).choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = app.state.batcher.stats
        assert stats.prompts == len(prompts)
        assert stats.batches < len(prompts) and stats.largest > 1  # requests met in batches
        for i, prompt in enumerate(prompts):
            assert results[i] == solo(model_pool, prompt, 5), prompt  # batching changes no text


def test_disconnect_mid_stream_frees_the_worker(live_server):
    server, app = live_server()
    with server as url:
        body = {"model": "none", "messages": QUESTION, "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and '"content": "' in line and '"role"' not in line:
                    break  # one real token arrived: hang up
        started = time.monotonic()
        deadline = started + 60
        while app.state.batcher.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.batcher.stats.cancelled == 1
        # The worker is free again: a new request is answered (the 400-token batch was stopped).
        out = client(url).chat.completions.create(model="none", messages=QUESTION, max_tokens=3, temperature=0)
        assert out.choices[0].message.content
        assert app.state.store.count("completions") == 1  # the abandoned answer was not stored
        health = httpx.get(f"{url}/health").json()
        assert health["cancelled"] == 1 and health["status"] == "ok"
        assert json.dumps(health)
