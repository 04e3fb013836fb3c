"""The server's continuous batcher on a CUDA GPU: rows join a running batch and leave it at
different steps (the batch step re-indexes its tensors on the model's device), with the same text
as each request decoded alone."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from acculturate.decode import GenerationConfig, generate
from acculturate.serve.batching import Batcher, Job


@pytest.mark.gpu
def test_rows_join_and_leave_a_running_batch_on_cuda(cuda_llama):
    model, tok = cuda_llama
    served = SimpleNamespace(model=model, tokenizer=tok, adapter=None, version="v", active=nullcontext)
    chat = lambda q: tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # noqa: E731
                                             add_generation_prompt=True)
    long_q = chat("Describe a traditional breakfast in Spain.")
    short = [(chat("Name a popular sport in the UK."), GenerationConfig(max_new_tokens=3)),
             (chat("What is 2 + 2?"), GenerationConfig(max_new_tokens=7)),
             (chat("Hi!"), GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=5)),
             (chat("Write one word."), GenerationConfig(max_new_tokens=9, stop=(" ",)))]
    batcher = Batcher(max_batch_size=8, window_s=0.0)
    batcher.start()
    try:
        started = threading.Event()
        first = Job(served, [long_q], GenerationConfig(max_new_tokens=40), on_text=lambda i, d: started.set())
        batcher.submit(first)
        assert started.wait(120)   # the long row is decoding: the others join it and leave before it
        later = [Job(served, [q], config) for q, config in short]
        for job in later:
            batcher.submit(job)
        texts = [job.future.result(120)[0].text for job in later]
        long_text = first.future.result(120)[0].text
    finally:
        batcher.stop()
    assert batcher.stats.joined >= 1 and batcher.stats.largest >= 2
    eager = lambda config: GenerationConfig(**{**config.__dict__, "cuda_graphs": False})  # noqa: E731
    assert long_text == generate(model, tok, [long_q], eager(first.config))[0].text
    assert texts == [generate(model, tok, [q], eager(config))[0].text for q, config in short]
