"""The continuous batcher on the real default model: jobs joining a running batch get the same text
as alone, rows with different settings share a batch, batches change with the weights, streaming,
cancellation of running and waiting jobs, drain, overload."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from acculturate.decode import GenerationConfig, generate
from acculturate.serve.batching import Batcher, Cancelled, Job, Overloaded, batch_key

pytestmark = pytest.mark.slow


def served(model=None, tokenizer=None, adapter=None, version=None):
    return SimpleNamespace(model=model, tokenizer=tokenizer, adapter=adapter,
                           version=version or f"v-{adapter}", active=nullcontext)


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.fixture(scope="module")
def base(default_model):
    return served(default_model.model, default_model.tokenizer)


@pytest.fixture
def batcher():
    b = Batcher(max_batch_size=8, window_s=0.0)
    b.start()
    yield b
    b.stop()


def test_batch_key_is_the_weights_not_the_settings(base):
    uk = served(base.model, base.tokenizer, "uk")
    greedy, hot = GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=3, temperature=0.8, seed=3)
    assert batch_key(Job(base, ["a"], greedy)) == batch_key(Job(base, ["b"], hot))  # settings are per row
    assert batch_key(Job(base, ["a"], greedy)) != batch_key(Job(uk, ["a"], greedy))
    assert batch_key(Job(uk, ["a"], greedy)) != batch_key(Job(served(base.model, None, "uk", "v2"), ["a"], greedy))


def test_jobs_join_a_running_batch_and_match_solo_generation(base, batcher):
    tok = base.tokenizer
    long_q, questions = chat(tok, "Describe a traditional breakfast in Spain."), \
        [chat(tok, q) for q in ("Name a popular sport in the UK.", "Hi!", "What is 2 + 2?")]
    long_cfg, short_cfg = GenerationConfig(max_new_tokens=40), GenerationConfig(max_new_tokens=12)
    started = threading.Event()
    first = Job(base, [long_q], long_cfg, on_text=lambda i, d: started.set())
    batcher.submit(first)
    assert started.wait(300)  # the long job is decoding: the next ones must join it
    later = [Job(base, [q], short_cfg) for q in questions]
    for job in later:
        batcher.submit(job)
    results = [job.future.result(300)[0] for job in later]
    assert first.future.result(300)[0].text == generate(base.model, tok, [long_q], long_cfg)[0].text
    assert [r.text for r in results] == [c.text for c in generate(base.model, tok, questions, short_cfg)]
    assert batcher.stats.joined >= 1 and batcher.stats.largest >= 2


def test_rows_with_different_settings_share_a_batch(base, batcher):
    tok = base.tokenizer
    prompt = chat(tok, "Write one sentence about tea.")
    greedy = Job(base, [prompt], GenerationConfig(max_new_tokens=10))
    seeded = Job(base, [prompt, prompt], GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7))
    stopped = Job(base, [prompt], GenerationConfig(max_new_tokens=30, stop=(" ",)))
    for job in (greedy, seeded, stopped):
        batcher.submit(job)
    assert greedy.future.result(300)[0].text == generate(base.model, tok, [prompt], greedy.config)[0].text
    # Seeded rows draw from their own (seed, index) generators: the same as generate's prompts 0 and 1.
    alone = generate(base.model, tok, [prompt, prompt], seeded.config)
    assert [c.text for c in seeded.future.result(300)] == [c.text for c in alone]
    only = stopped.future.result(300)[0]
    assert only.finish_reason == "stop" and " " not in only.text
    assert batcher.stats.batches == 1  # all three met in one batch


def test_other_weights_wait_for_the_batch_to_drain(base, batcher):
    tok = base.tokenizer
    uk = served(base.model, tok, "uk")  # same module, other key: must not share the batch
    a, b = Job(base, [chat(tok, "Hello")], GenerationConfig(max_new_tokens=6)), \
        Job(uk, [chat(tok, "Hello")], GenerationConfig(max_new_tokens=6))
    batcher.submit(a)
    batcher.submit(b)
    a.future.result(300), b.future.result(300)
    assert batcher.stats.batches == 2


def test_streaming_and_cancellation(base, batcher):
    tok = base.tokenizer
    pieces = []
    job = Job(base, [chat(tok, "Say hello.")], GenerationConfig(max_new_tokens=8), on_text=lambda i, d: pieces.append(d))
    batcher.submit(job)
    text = job.future.result(300)[0].text
    assert text and "".join(pieces) == text

    started = threading.Event()
    running = Job(base, [chat(tok, "Tell a long story.")], GenerationConfig(max_new_tokens=400),
                  on_text=lambda i, d: started.set())
    batcher.submit(running)
    assert started.wait(300)
    running.cancelled.set()
    with pytest.raises(Cancelled):
        running.future.result(300)  # left the batch at the next token, long before 400 tokens
    waiting = Job(base, [chat(tok, "Hi")], GenerationConfig(max_new_tokens=4))
    waiting.cancelled.set()
    batcher.submit(waiting)
    with pytest.raises(Cancelled):
        waiting.future.result(300)
    assert batcher.stats.cancelled == 2


def test_drain_stops_admission_until_the_batch_ends(base, batcher):
    tok = base.tokenizer
    started = threading.Event()
    first = Job(base, [chat(tok, "Count to ten.")], GenerationConfig(max_new_tokens=24), on_text=lambda i, d: started.set())
    batcher.submit(first)
    assert started.wait(300)
    batcher.drain()
    second = Job(base, [chat(tok, "Hi")], GenerationConfig(max_new_tokens=4))
    batcher.submit(second)
    first.future.result(300), second.future.result(300)
    assert batcher.stats.batches == 2 and batcher.stats.joined == 0


def test_a_bad_prompt_fails_only_its_job(base, batcher):
    good = Job(base, [chat(base.tokenizer, "Hi")], GenerationConfig(max_new_tokens=4))
    bad = Job(base, [""], GenerationConfig(max_new_tokens=4))
    batcher.submit(bad)
    batcher.submit(good)
    with pytest.raises(ValueError, match="empty"):
        bad.future.result(300)
    assert good.future.result(300)[0].completion_tokens >= 1


def test_overload_is_refused():
    b = Batcher(max_batch_size=2, window_s=0.0, max_pending=3)  # not started: nothing drains
    b.submit(Job(served(), ["a", "b"], GenerationConfig()))
    with pytest.raises(Overloaded):
        b.submit(Job(served(), ["c", "d"], GenerationConfig()))
    b.submit(Job(served(), ["c"], GenerationConfig()))
