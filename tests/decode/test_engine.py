"""DecodeBatch (continuous batching) on the real default model: rows that join a running batch, leave
it early or are cancelled give exactly what ``generate`` gives them alone; per-row settings; the
cache is trimmed when long rows leave; a prompt-tuned model refuses to join mid-batch."""

from __future__ import annotations

import pytest
import torch

from acculturate.decode import GenerationConfig, generate
from acculturate.decode.engine import DecodeBatch, _pad_left, make_row
from acculturate.decode.generate import encode_prompts

pytestmark = pytest.mark.slow

QUESTIONS = ["What do people in Spain eat for breakfast?", "Name a sport popular in the UK.", "Hi",
             "Write a haiku about rain in Jakarta, please, with some detail about the streets."]


@pytest.fixture(scope="module")
def setup(default_model):
    model, tok = default_model
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS]
    return model, tok, prompts, encode_prompts(tok, prompts)


def run(batch: DecodeBatch, schedule: dict[int, list], steps: int = 200) -> dict:
    """Step the batch, adding ``schedule[step]`` rows before that step; returns tag -> finished row."""
    done = {}
    for step in range(steps):
        batch.add(schedule.get(step, []))
        for row in batch.step():
            done[row.tag] = row
        if not len(batch) and step >= max(schedule):
            break
    return done


def test_rows_joining_mid_batch_equal_generate_alone(setup):
    model, tok, prompts, ids = setup
    config = GenerationConfig(max_new_tokens=20)
    reference = generate(model, tok, prompts, config)
    batch = DecodeBatch(model, tok)
    # The short prompt starts, a longer one joins at step 3 (the running rows are left-padded), two
    # more at step 6; "Hi" finishes early and leaves while the others run.
    done = run(batch, {0: [make_row(tok, ids[2], config, tag=2)],
                       3: [make_row(tok, ids[0], config, tag=0)],
                       6: [make_row(tok, ids[1], config, tag=1), make_row(tok, ids[3], config, tag=3)]})
    for i, ref in enumerate(reference):
        assert done[i].stream.text == ref.text and done[i].finish_reason == ref.finish_reason
        assert done[i].stream.token_ids == ref.token_ids


def test_per_row_settings_in_one_batch(setup):
    model, tok, prompts, ids = setup
    greedy = GenerationConfig(max_new_tokens=12)
    seeded = GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=5)
    penalised = GenerationConfig(max_new_tokens=12, repetition_penalty=1.3)
    stopped = GenerationConfig(max_new_tokens=40, stop=(",",))
    batch = DecodeBatch(model, tok)
    rows = [make_row(tok, ids[0], greedy, tag="greedy"), make_row(tok, ids[0], seeded, index=1, tag="seeded"),
            make_row(tok, ids[1], penalised, tag="penalised"), make_row(tok, ids[0], stopped, tag="stopped")]
    done = run(batch, {0: rows})
    assert done["greedy"].stream.text == generate(model, tok, [prompts[0]], greedy)[0].text
    # Row index 1 is seeded as prompt 1 of a generate call.
    assert done["seeded"].stream.text == generate(model, tok, [prompts[1], prompts[0]], seeded)[1].text
    assert done["penalised"].stream.text == generate(model, tok, [prompts[1]], penalised)[0].text
    assert done["stopped"].finish_reason == "stop" and "," not in done["stopped"].stream.text
    assert done["stopped"].stream.text == generate(model, tok, [prompts[0]], stopped)[0].text


def test_streaming_cancel_and_trim(setup):
    model, tok, prompts, ids = setup
    pieces = []
    long_row = make_row(tok, ids[3], GenerationConfig(max_new_tokens=60), tag="long")
    short = make_row(tok, ids[2], GenerationConfig(max_new_tokens=30), on_text=pieces.append, tag="short")
    batch = DecodeBatch(model, tok)
    batch.add([long_row, short])
    width = batch.mask.shape[1]
    for _ in range(3):
        batch.step()
    assert batch.cancel(lambda r: r.tag == "long") == [long_row] and len(batch) == 1
    # The long prompt's padding columns are gone: the cache is as wide as the short row alone.
    assert batch.mask.shape[1] == len(ids[2]) + 3 < width + 3
    assert batch.mask.shape[1] == batch.cache.layers[0].keys.shape[-2]
    done = {}
    while len(batch):
        for row in batch.step():
            done[row.tag] = row
    assert "".join(pieces) == done["short"].stream.text == generate(
        model, tok, [prompts[2]], GenerationConfig(max_new_tokens=30))[0].text


def test_prompt_tuned_model_does_not_join_mid_batch(fresh_model):
    from acculturate.adapters.prompt_tuning import PromptTuningConfig, apply_prompt_tuning

    model, tok = fresh_model
    apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=4, init_text=None))
    ids = encode_prompts(tok, ["Hello there", "Hi"])
    config = GenerationConfig(max_new_tokens=4)
    batch = DecodeBatch(model, tok)
    assert batch.can_join  # empty
    batch.add([make_row(tok, ids[0], config)])
    assert not batch.can_join
    with pytest.raises(RuntimeError, match="cannot take rows mid-batch"):
        batch.add([make_row(tok, ids[1], config)])
    while len(batch):
        batch.step()
    assert batch.can_join


def test_pad_left():
    t = torch.ones(2, 1, 3, 2)
    padded = _pad_left(t, 2, -2)
    assert padded.shape == (2, 1, 5, 2) and padded[:, :, :2].abs().sum() == 0 and padded[:, :, 2:].eq(1).all()
    assert _pad_left(torch.tensor([[5, 6]]), 1, -1, -1).tolist() == [[-1, 5, 6]]
