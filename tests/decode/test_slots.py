"""Fixed-slot continuous batching (decode.slots): rows join a running batch, leave it at different
steps, free slots are reused and the cache widens mid-run, and every row gets the tokens that
generate() gives it alone (greedy, seeded top-k/top-p, repetition penalty, stop strings, n copies of
one prompt). On the CPU the step runs eagerly; on CUDA each step is a CUDA-graph replay. Prefills
padded to bucketed shapes (what CUDA runs) give the rows the same tokens as unpadded ones."""

from __future__ import annotations

import pytest
import torch

from acculturate.decode import GenerationConfig, generate
from acculturate.decode.engine import make_row
from acculturate.decode.generate import encode_prompts
from acculturate.decode.slots import (MIN_WIDTH, SlotBatch, prefill_shape, prefill_width, row_buckets,
                                      width_buckets)


def _chat(tok, q: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)


def run_join_and_leave(model, tok, cuda_graph: bool | None = None, pad_prefill: bool | None = None) -> None:
    """The scenario both tests run: checks every row against generate() and the slot mechanics."""
    batch = SlotBatch(model, tok, slots=4, cuda_graph=cuda_graph, pad_prefill=pad_prefill)
    streamed: dict[str, list[str]] = {}

    def row(name: str, question: str, config: GenerationConfig, index: int = 0):
        ids = encode_prompts(tok, [_chat(tok, question)])[0]
        streamed[name] = []
        return make_row(tok, ids, config, index, on_text=streamed[name].append, tag=name)

    long = row("long", "Describe a traditional breakfast in Spain.", GenerationConfig(max_new_tokens=40))
    batch.add([long])
    finished = {}

    def steps(n: int) -> None:
        for _ in range(n):
            for r in batch.step():
                finished[r.tag] = r

    steps(3)
    seeded = GenerationConfig(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=5)
    joined = [row("seeded", "Hi!", seeded),
              row("penalty", "What is 2 + 2?", GenerationConfig(max_new_tokens=9, repetition_penalty=1.3)),
              row("stop", "Write one word.", GenerationConfig(max_new_tokens=9, stop=(" ",)))]
    batch.add(joined)
    assert batch.free == 0
    with pytest.raises(ValueError, match="free slots"):
        batch.add([row("extra", "Hello", GenerationConfig(max_new_tokens=2))])
    steps(2)
    cancelled = batch.cancel(lambda r: r.tag == "stop" and r.finish_reason is None)
    steps(1)
    # Two samples of one prompt share its prefill; a greedy row needs a wider cache than the first
    # graphs while "long" still runs (its cache columns are carried over).
    sampled = GenerationConfig(max_new_tokens=16, temperature=0.8, seed=3)
    wide = GenerationConfig(max_new_tokens=MIN_WIDTH - 10)
    pair = [row("pair0", "Name a dish.", sampled, 0), row("pair1", "Name a dish.", sampled, 1)]
    while batch.free < 3:
        steps(1)
    assert "long" not in finished
    batch.add(pair + [row("wide", "Tell me about the sea.", wide)])
    assert batch.width > MIN_WIDTH and pair[1].cached_tokens == len(pair[1].prompt_ids)
    while len(batch):
        steps(1)
    assert set(finished) == {"long", "seeded", "penalty", "stop", "pair0", "pair1", "wide"} - {r.tag for r in cancelled}

    def alone(question: str, config: GenerationConfig, n: int = 1):
        return generate(model, tok, [_chat(tok, question)], GenerationConfig(**{**config.__dict__, "cuda_graphs": False}),
                        n=n)

    for name, question, config in [("long", "Describe a traditional breakfast in Spain.", long.config),
                                   ("seeded", "Hi!", seeded),
                                   ("penalty", "What is 2 + 2?", joined[1].config),
                                   ("wide", "Tell me about the sea.", wide)]:
        want = alone(question, config)[0]
        got = finished[name]
        assert (got.stream.token_ids, got.stream.text, got.finish_reason) == (want.token_ids, want.text,
                                                                               want.finish_reason), name
        assert "".join(streamed[name]) == want.text
    for i, want in enumerate(alone("Name a dish.", sampled, n=2)):
        assert finished[f"pair{i}"].stream.token_ids == want.token_ids
    if cancelled:   # the stop row may have ended before the cancel; either way it matches generate()
        assert cancelled[0].finish_reason is None
    else:
        want = alone("Write one word.", joined[2].config)[0]
        assert (finished["stop"].stream.text, finished["stop"].finish_reason) == (want.text, want.finish_reason)


@pytest.mark.parametrize("pad_prefill", [False, True], ids=["exact", "padded"])
def test_rows_join_leave_and_match_generate_on_cpu(cpu_llama, pad_prefill):
    model, tok = cpu_llama
    run_join_and_leave(model, tok, pad_prefill=pad_prefill)


def test_prefill_buckets():
    """Widths: multiples of 64 up to 512, then powers of two, capped by the cache; rows: powers of two
    up to the slots, the slot count itself a bucket."""
    lengths = (1, 64, 65, 130, 512, 513, 1500, 4096)
    assert [prefill_width(n) for n in lengths] == [64, 64, 128, 192, 512, 1024, 2048, 4096]
    assert prefill_width(900, cap=1000) == 1000 and prefill_width(40, cap=50) == 50
    assert prefill_shape(3, 100, slots=32) == (4, 128) and prefill_shape(20, 700, slots=24) == (24, 1024)
    assert row_buckets(32) == [1, 2, 4, 8, 16, 32] and row_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert width_buckets(600) == [64, 128, 192, 256, 320, 384, 448, 512, 1024]


def test_padded_prefill_runs_the_bucket_and_keeps_every_rows_tokens(cpu_llama):
    """Three prompts of different lengths (greedy, seeded sampling, repetition penalty) prefilled at
    the bucket (4 rows, 64 columns: the fourth row a copy of the first) decode to the same tokens as
    the exact-shape prefill."""
    model, tok = cpu_llama
    configs = [GenerationConfig(max_new_tokens=8),
               GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=3),
               GenerationConfig(max_new_tokens=8, repetition_penalty=1.3)]
    questions = ["Hi!", "Describe a traditional breakfast in Spain.", "What is 2 + 2?"]
    ids = encode_prompts(tok, [_chat(tok, q) for q in questions])
    tokens, shapes = {}, {}
    for pad in (False, True):
        batch = SlotBatch(model, tok, slots=8, pad_prefill=pad)
        forward = batch._forward
        batch._forward = lambda ids, lengths: (shapes.setdefault(pad, tuple(ids.shape)), forward(ids, lengths))[1]
        rows = [make_row(tok, p, c) for p, c in zip(ids, configs)]
        batch.add(rows)
        while len(batch):
            batch.step()
        tokens[pad] = [r.stream.token_ids for r in rows]
    assert shapes == {False: (3, max(map(len, ids))), True: (4, 64)}
    assert tokens[True] == tokens[False] and all(len(t) == 8 for t in tokens[True])


def test_warm_runs_every_bucket_once_and_changes_no_tokens(cpu_llama):
    """warm() runs the prefill at each (rows, width) bucket for prompts up to its limit and widens the
    cache for the new tokens; a row decoded afterwards gets generate()'s tokens."""
    model, tok = cpu_llama
    batch = SlotBatch(model, tok, slots=4, pad_prefill=True)
    shapes = []
    forward = batch._forward
    batch._forward = lambda ids, lengths: (shapes.append(tuple(ids.shape)), forward(ids, lengths))[1]
    done = batch.warm(prompt_tokens=100, new_tokens=60)
    assert sorted(shapes) == sorted((n, w) for w in (64, 128) for n in (1, 2, 4)) and done["prefill_shapes"] == 6
    assert batch.width == 256 and done["graphs"] == 0 and done["seconds"] > 0   # no graphs on the CPU
    config = GenerationConfig(max_new_tokens=10)
    row = make_row(tok, encode_prompts(tok, [_chat(tok, "Name a dish.")])[0], config)
    batch.add([row])
    while len(batch):
        batch.step()
    want = generate(model, tok, [_chat(tok, "Name a dish.")], config)[0]
    assert row.stream.token_ids == want.token_ids


def test_refuses_what_does_not_fit(cpu_llama):
    model, tok = cpu_llama
    batch = SlotBatch(model, tok, slots=2)
    ids = encode_prompts(tok, ["Hello"])[0]
    with pytest.raises(ValueError, match="positions"):
        batch.add([make_row(tok, ids, GenerationConfig(max_new_tokens=600))])
    assert len(batch) == 0 and batch.step() == []


@pytest.mark.gpu
def test_rows_join_leave_and_match_generate_with_cuda_graphs(cuda_llama):
    model, tok = cuda_llama
    run_join_and_leave(model, tok)   # padded prefills: the default on CUDA


@pytest.mark.gpu
def test_warm_captures_the_decoding_graphs_on_cuda(cuda_llama):
    """On CUDA, warm() also captures the step's graphs (greedy and sampling, every row bucket and
    width): rows added afterwards replay them without a capture and match generate()."""
    model, tok = cuda_llama
    batch = SlotBatch(model, tok, slots=4)
    done = batch.warm(prompt_tokens=64, new_tokens=100)
    assert batch.width == 256 and done["graphs"] == len(batch.graphs) == 3 * 2 * 2   # rows 1,2,4 x widths x modes
    captured = dict(batch.graphs)
    config = GenerationConfig(max_new_tokens=10, temperature=0.8, seed=1)
    rows = [make_row(tok, encode_prompts(tok, [_chat(tok, q)])[0], config) for q in ("Hi!", "Name a dish.")]
    batch.add(rows)
    while len(batch):
        batch.step()
    assert batch.graphs == captured
    for q, r in zip(("Hi!", "Name a dish."), rows):
        want = generate(model, tok, [_chat(tok, q)], GenerationConfig(**{**config.__dict__, "cuda_graphs": False}))[0]
        assert r.stream.token_ids == want.token_ids


def test_a_step_runs_only_the_slots_up_to_the_highest_row(cpu_llama):
    """New rows take the lowest free slots and a step runs the first R slots, R the power of two above
    the highest occupied one: one row decodes at batch 1 whatever the number of slots."""
    model, tok = cpu_llama
    batch = SlotBatch(model, tok, slots=8)
    rows_run = []
    step = batch._step
    batch._step = lambda rows, width, mode: (rows_run.append(rows), step(rows, width, mode))[1]

    def row(question: str):
        return make_row(tok, encode_prompts(tok, [_chat(tok, question)])[0], GenerationConfig(max_new_tokens=30))

    batch.add([row("Hi!")])
    batch.step()
    batch.add([row("Name a dish."), row("Name a river.")])   # slots 1 and 2
    batch.step()
    batch.cancel(lambda r: r is batch.rows[0])               # slot 0 frees; slot 2 still runs
    batch.step()
    batch.add([row("Name a song.")])                         # takes slot 0 again
    batch.step()
    assert rows_run == [1, 4, 4, 4] and batch.free == 5


@pytest.mark.gpu
def test_rows_match_generate_with_the_servers_fused_kernels(cuda_llama, monkeypatch):
    """The server runs its model with Liger's fused RMSNorm, RoPE and SwiGLU on CUDA
    (serve.models.ModelPool): the slot batch's graphs and generate()'s eager loop, both through those
    kernels, still give every row the same tokens."""
    import copy

    from transformers.models.llama import modeling_llama

    from acculturate.models.kernels import use_fused_kernels

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):   # Liger patches these for the process
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    model, tok = cuda_llama
    model = copy.deepcopy(model)
    if not use_fused_kernels(model):
        pytest.skip("liger-kernel is not installed")
    run_join_and_leave(model, tok)


def test_rows_with_and_without_filters_in_one_batch_keep_their_own_draws(cpu_llama):
    """A seeded row with plain temperature shares the step with a seeded top-p row (the filtered
    step): it still draws in vocabulary order and the top-p row in order of score, as generate()
    gives each alone."""
    model, tok = cpu_llama
    configs = [GenerationConfig(max_new_tokens=10, temperature=1.0, seed=4),
               GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.8, seed=4),
               GenerationConfig(max_new_tokens=10, temperature=1.2, top_k=30, seed=9)]
    questions = ["Name a dish.", "Name a dish.", "Describe a river."]
    batch = SlotBatch(model, tok, slots=4)
    rows = [make_row(tok, p, c) for p, c in zip(encode_prompts(tok, [_chat(tok, q) for q in questions]), configs)]
    batch.add(rows)
    assert batch._mode() == "filter"
    while len(batch):
        batch.step()
    for row, question, config in zip(rows, questions, configs):
        want = generate(model, tok, [_chat(tok, question)], GenerationConfig(**{**config.__dict__, "cuda_graphs": False}))
        assert row.stream.token_ids == want[0].token_ids, config
