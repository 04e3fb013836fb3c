"""The server's batcher on fixed slots (decode.slots.SlotBatch, what a CUDA server runs), here forced
onto the CPU: requests join a running batch and leave it, ``n`` choices share a prefill, a cancelled
request frees its slots for the next, a request with more rows than slots runs on the eager batch,
and every text equals generate()'s for that request alone."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from acculturate.decode import GenerationConfig, generate
from acculturate.decode.engine import DecodeBatch
from acculturate.decode.slots import SlotBatch
from acculturate.serve import batching
from acculturate.serve.batching import Batcher, Cancelled, Job


def test_batcher_on_slots_matches_generate(cpu_llama, monkeypatch):
    model, tok = cpu_llama
    monkeypatch.setattr(batching, "static_decoding_supported", lambda m: True)
    opened = []
    real_open = batching._Running.open

    def spy(self, served, rows=1):
        real_open(self, served, rows)
        opened.append(type(self.batch))
    monkeypatch.setattr(batching._Running, "open", spy)
    served = SimpleNamespace(model=model, tokenizer=tok, adapter=None, version="v", active=nullcontext)
    chat = lambda q: tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # noqa: E731
                                             add_generation_prompt=True)
    batcher = Batcher(max_batch_size=3, window_s=0.0)
    batcher.start()
    try:
        started = threading.Event()
        first = Job(served, [chat("Describe a traditional breakfast in Spain.")], GenerationConfig(max_new_tokens=30),
                    on_text=lambda i, d: started.set())
        batcher.submit(first)
        assert started.wait(60)
        gone = Job(served, [chat("Say something long.")], GenerationConfig(max_new_tokens=200))
        pair = Job(served, [chat("Hi!")] * 2, GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.8, seed=4))
        batcher.submit(gone)
        gone.cancelled.set()   # waiting or running, it leaves and its slot goes to the next job
        batcher.submit(pair)
        texts = [c.text for c in pair.future.result(60)]
        with pytest.raises(Cancelled):
            gone.future.result(60)
        long_text = first.future.result(60)[0].text
        wide = Job(served, [chat("One."), chat("Two."), chat("Three."), chat("Four.")], GenerationConfig(max_new_tokens=4))
        batcher.submit(wide)
        wide_texts = [c.text for c in wide.future.result(60)]
    finally:
        batcher.stop()
    assert opened[0] is SlotBatch and opened[-1] is DecodeBatch   # 4 rows > 3 slots: the eager batch
    assert batcher.stats.joined >= 2
    eager = lambda c: GenerationConfig(**{**c.__dict__, "cuda_graphs": False})  # noqa: E731
    assert long_text == generate(model, tok, first.prompts, eager(first.config))[0].text
    assert texts == [c.text for c in generate(model, tok, pair.prompts[:1], eager(pair.config), n=2)]
    assert wide_texts == [c.text for c in generate(model, tok, wide.prompts, eager(wide.config))]


def test_batcher_warms_the_slot_batch_up_before_its_first_job(cpu_llama, monkeypatch):
    """Batcher.start(warm=...) with warm_prompt_tokens builds the slot batch of those weights and warms
    it up before taking jobs (its time in the stats, as /health reports it); the first job runs on that
    same batch and gets generate()'s text."""
    model, tok = cpu_llama
    monkeypatch.setattr(batching, "static_decoding_supported", lambda m: True)
    warmed, used = [], []
    real_warm, real_open = SlotBatch.warm, batching._Running.open
    monkeypatch.setattr(SlotBatch, "warm", lambda self, *a: (warmed.append(self), real_warm(self, *a))[1])

    def spy(self, served, rows=1):
        real_open(self, served, rows)
        used.append(self.batch)
    monkeypatch.setattr(batching._Running, "open", spy)
    served = SimpleNamespace(model=model, tokenizer=tok, adapter=None, version="v", active=nullcontext)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a dish."}], tokenize=False,
                                     add_generation_prompt=True)
    batcher = Batcher(max_batch_size=2, window_s=0.0, warm_prompt_tokens=64, warm_new_tokens=16)
    batcher.start(warm=served)
    try:
        job = Job(served, [prompt], GenerationConfig(max_new_tokens=6))
        batcher.submit(job)
        text = job.future.result(60)[0].text
    finally:
        batcher.stop()
    assert len(warmed) == 1 and used == warmed and batcher.stats.warmup_s > 0 and not batcher.stats.warming
    assert text == generate(model, tok, [prompt], GenerationConfig(max_new_tokens=6, cuda_graphs=False))[0].text


def test_serve_config_sets_the_warm_up(tmp_path):
    """ServeConfig.warmup_prompt_tokens (and default_max_tokens, the cache it warms for) reach the batcher;
    a negative value is refused with the field's name; /health reports the warm-up."""
    from fastapi.testclient import TestClient

    from acculturate.feedback.store import FeedbackStore
    from acculturate.serve import ServeConfig, create_app

    with pytest.raises(ValueError, match="warmup_prompt_tokens"):
        ServeConfig(warmup_prompt_tokens=-1)
    app = create_app(ServeConfig(warmup_prompt_tokens=128, default_max_tokens=32),
                     pool=SimpleNamespace(before_change=[], names=lambda: []), store=FeedbackStore(tmp_path / "f.db"))
    assert (app.state.batcher.warm_prompt_tokens, app.state.batcher.warm_new_tokens) == (128, 32)
    with TestClient(app) as client:
        health = client.get("/health").json()
    assert health["warming"] is False and health["warmup_s"] == 0   # no pool.base here: nothing to warm
