"""Batching mechanics with a scripted ``generate`` (no model): which jobs share a batch, the idle
window, cancellation and overload. That batched answers equal solo answers on the real model is
tested in test_api.py."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from acculturate.decode import Completion, GenerationConfig
from acculturate.serve import batching
from acculturate.serve.batching import Batcher, Cancelled, Job, Overloaded, batch_key


def served(adapter=None):
    from contextlib import nullcontext

    return SimpleNamespace(model="m", tokenizer=None, adapter=adapter, version=f"v-{adapter}", active=nullcontext)


@pytest.fixture
def calls(monkeypatch):
    """Replace generate with a script: each prompt streams its characters, one per 'token'."""
    log = []

    def fake_generate(model, tokenizer, prompts, config, on_text=None):
        log.append(list(prompts))
        for step in range(max(len(p) for p in prompts)):
            for i, p in enumerate(prompts):
                if step < len(p) and on_text is not None:
                    on_text(i, p[step].upper())
            time.sleep(0.01)
        return [Completion(p.upper(), [], "eos", 1, len(p)) for p in prompts]

    monkeypatch.setattr(batching, "generate", fake_generate)
    return log


def test_batch_key_groups_compatible_jobs():
    base, uk = served(), served("uk")
    greedy = GenerationConfig(max_new_tokens=8)
    assert batch_key(Job(base, ["a"], greedy)) == batch_key(Job(base, ["b"], GenerationConfig(max_new_tokens=8, seed=1)))
    assert batch_key(Job(base, ["a"], greedy)) != batch_key(Job(uk, ["a"], greedy))
    assert batch_key(Job(base, ["a"], greedy)) != batch_key(Job(base, ["a"], GenerationConfig(max_new_tokens=9)))
    hot = GenerationConfig(max_new_tokens=8, temperature=0.8)
    assert batch_key(Job(base, ["a"], hot)) == batch_key(Job(base, ["b"], hot))
    seeded = GenerationConfig(max_new_tokens=8, temperature=0.8, seed=3)
    assert batch_key(Job(base, ["a"], seeded)) != batch_key(Job(base, ["a"], seeded))  # seeded runs alone


def test_jobs_arriving_within_the_window_share_a_batch(calls):
    b = Batcher(max_batch_size=8, window_s=0.3)
    b.start()
    try:
        config = GenerationConfig(max_new_tokens=8)
        jobs = [Job(served(), [p], config) for p in ("ab", "cd", "ef")]
        other = Job(served("uk"), ["gh"], config)
        for job in jobs + [other]:
            b.submit(job)
        assert [j.future.result(5) for j in jobs] == [[Completion("AB", [], "eos", 1, 2)],
                                                      [Completion("CD", [], "eos", 1, 2)],
                                                      [Completion("EF", [], "eos", 1, 2)]]
        assert other.future.result(5)[0].text == "GH"
        assert calls == [["ab", "cd", "ef"], ["gh"]]  # one batch per adapter
        assert (b.stats.batches, b.stats.prompts, b.stats.largest) == (2, 4, 3)
    finally:
        b.stop()


def test_streaming_and_cancellation(calls):
    b = Batcher(max_batch_size=8, window_s=0.0)
    b.start()
    try:
        pieces = []
        listening = Job(served(), ["hello"], GenerationConfig(), on_text=lambda i, d: pieces.append(d))
        b.submit(listening)
        assert listening.future.result(5)[0].text == "HELLO" and "".join(pieces) == "HELLO"

        # A job cancelled after its first piece: the scripted batch is stopped early, no error leaks.
        started = threading.Event()
        job = Job(served(), ["x" * 500], GenerationConfig(), on_text=lambda i, d: started.set())
        b.submit(job)
        assert started.wait(5)
        job.cancelled.set()
        with pytest.raises(Cancelled):
            job.future.result(5)
        assert b.stats.cancelled == 1
        # Cancelled before it ran: skipped without calling generate.
        gate = Job(served(), ["y" * 30], GenerationConfig())
        skipped = Job(served("uk"), ["zz"], GenerationConfig())
        b.submit(gate)
        b.submit(skipped)
        skipped.cancelled.set()
        gate.future.result(5)
        with pytest.raises(Cancelled):
            skipped.future.result(5)
        assert ["zz"] not in calls
    finally:
        b.stop()


def test_overload_is_refused():
    b = Batcher(max_batch_size=2, window_s=0.0, max_pending=3)  # not started: nothing drains
    b.submit(Job(served(), ["a", "b"], GenerationConfig()))
    with pytest.raises(Overloaded):
        b.submit(Job(served(), ["c", "d"], GenerationConfig()))
    b.submit(Job(served(), ["c"], GenerationConfig()))
