"""Our generation loop on the real default model (SmolLM2-135M-Instruct), against HF's own
``model.generate`` where there is a reference. Short max_new_tokens keep each test a few seconds."""

import io

import pytest
import torch

from acculturate.decode import GenerationConfig, eos_token_ids, generate, generate_chat, stream_to_terminal

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of Indonesia?",
    "Write one sentence about the rice terraces of Bali and the farmers who keep them.",
    "Name a dish.",
]


def render(tokenizer, question):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [render(tokenizer, q) for q in QUESTIONS]


def hf_greedy(model, tokenizer, prompts, max_new_tokens, **kwargs):
    """HF's generate on the same left-padded batch; each row cut after its first EOS."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, **kwargs)
    eos = eos_token_ids(model, tokenizer)
    result = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def test_greedy_equals_hf_generate_batched_and_unbatched(default_model, prompts):
    model, tokenizer = default_model
    reference = hf_greedy(model, tokenizer, prompts, 12)
    batched = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=12, batch_size=3))
    assert [c.token_ids for c in batched] == reference
    # Prompt 2 is the shortest, so the most left-padded in the batch; alone it has no padding.
    (alone,) = generate(model, tokenizer, prompts[2:], GenerationConfig(max_new_tokens=12))
    assert alone.token_ids == hf_greedy(model, tokenizer, prompts[2:], 12)[0] == reference[2]
    # The short factual answer ends with SmolLM2's <|im_end|>, which is not part of the text.
    first = batched[0]
    assert first.finish_reason == "eos" and first.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "Jakarta" in first.text and "<|im_end|>" not in first.text
    assert first.text == tokenizer.decode(first.token_ids[:-1])


def test_repetition_penalty_equals_hf(default_model, prompts):
    model, tokenizer = default_model
    config = GenerationConfig(max_new_tokens=16, repetition_penalty=1.5)
    (ours,) = generate(model, tokenizer, prompts[1:2], config)
    (ref,) = hf_greedy(model, tokenizer, prompts[1:2], 16, repetition_penalty=1.5)
    assert ours.token_ids == ref
    assert ours.token_ids != hf_greedy(model, tokenizer, prompts[1:2], 16)[0]  # the penalty did act


def test_seeded_sampling_is_reproducible(default_model, prompts):
    model, tokenizer = default_model
    prompts = prompts[1:]
    config = dict(max_new_tokens=8, temperature=1.0, top_p=0.95, batch_size=2)
    a = generate(model, tokenizer, prompts, GenerationConfig(seed=1, **config))
    b = generate(model, tokenizer, prompts, GenerationConfig(seed=1, **config))
    c = generate(model, tokenizer, prompts, GenerationConfig(seed=2, **config))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    # Each prompt has its own generator: one prompt per batch gives the same texts. (Equal up to
    # float rounding of padded vs unpadded attention, which would need a draw landing within ~1e-6
    # of a probability boundary to matter.)
    config["batch_size"] = 1
    alone = generate(model, tokenizer, prompts, GenerationConfig(seed=1, **config))
    assert [x.token_ids for x in alone] == [x.token_ids for x in a]


def test_stop_string_and_max_new_tokens(default_model, prompts):
    model, tokenizer = default_model
    (full,) = generate(model, tokenizer, prompts[1:2], GenerationConfig(max_new_tokens=12))
    assert full.finish_reason == "length" and full.completion_tokens == 12
    # A stop string that spans two tokens: the last 2 characters of token 4 and the first of token 5.
    upto4 = tokenizer.decode(full.token_ids[:5])
    stop = upto4[-2:] + tokenizer.decode(full.token_ids[:6])[len(upto4)]
    cut = full.text.find(stop)
    pieces = []
    (stopped,) = generate(model, tokenizer, prompts[1:2], GenerationConfig(max_new_tokens=12, stop=(stop,)),
                          on_text=lambda i, d: pieces.append(d))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut] and stop not in stopped.text
    assert stopped.token_ids == full.token_ids[:len(stopped.token_ids)] and stopped.completion_tokens <= 6
    assert "".join(pieces) == stopped.text


def test_streaming_deltas_concatenate_to_text(default_model, prompts):
    model, tokenizer = default_model
    pieces = {}
    out = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=10, temperature=0.8, seed=3),
                   on_text=lambda i, d: pieces.setdefault(i, []).append(d))
    assert ["".join(pieces.get(i, [])) for i in range(len(prompts))] == [c.text for c in out]
    assert all(len(pieces[i]) > 1 for i in range(len(prompts)))  # streamed, not sent at the end


def test_kv_cache_feeds_one_token_per_step(default_model, prompts):
    model, tokenizer = default_model
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        out = generate(model, tokenizer, prompts[1:], GenerationConfig(max_new_tokens=8, batch_size=2))
    finally:
        hook.remove()
    width = max(c.prompt_tokens for c in out)
    assert fed[0] == (2, width)  # prefill: the whole left-padded batch once
    assert all(shape[1] == 1 for shape in fed[1:])  # then one new token per row and step
    assert len(fed) == max(c.completion_tokens for c in out)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_p=0.95, seed=3)], ids=["greedy", "seeded"])
def test_repeated_prompts_share_one_prefill_and_give_the_same_tokens(default_model, prompts, sampling):
    """k samples of a prompt (self-consistency, the server's n) prefill it once and copy its KV
    cache; the tokens equal the plain path's, which prefills every row."""
    model, tokenizer = default_model
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    config = dict(max_new_tokens=8, batch_size=8, **sampling)
    try:
        shared = generate(model, tokenizer, prompts[:2], GenerationConfig(**config), n=3)
    finally:
        hook.remove()
    width = max(c.prompt_tokens for c in shared)
    assert fed[0] == (2, width)  # two distinct prompts prefilled, for six rows
    assert fed[1] == (6, 1)  # then every row decodes from the copied cache
    assert [c.cached_tokens for c in shared] == [0] + [shared[0].prompt_tokens] * 2 + [0] + [shared[3].prompt_tokens] * 2
    repeated = [p for p in prompts[:2] for _ in range(3)]
    plain = generate(model, tokenizer, repeated, GenerationConfig(share_prompts=False, **config))
    assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
    assert all(c.cached_tokens == 0 for c in plain)
    if sampling:  # the samples of one prompt differ from each other (each row has its own seed)
        assert len({tuple(c.token_ids) for c in shared[:3]}) > 1


def test_generate_chat_and_terminal_stream(default_model):
    model, tokenizer = default_model
    config = GenerationConfig(max_new_tokens=10)
    (chat,) = generate_chat(model, tokenizer, [[{"role": "user", "content": QUESTIONS[0]}]], config)
    (plain,) = generate(model, tokenizer, [render(tokenizer, QUESTIONS[0])], config)
    assert chat == plain
    buffer = io.StringIO()
    printed = stream_to_terminal(model, tokenizer, render(tokenizer, QUESTIONS[0]), config, file=buffer)
    assert buffer.getvalue() == printed.text + "\n"


def test_model_mode_is_restored_and_progress_bar_runs(default_model, prompts):
    model, tokenizer = default_model
    model.train()
    try:
        generate(model, tokenizer, prompts[:1], GenerationConfig(max_new_tokens=2), progress=True)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0), "top_p"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(stop=("",)), "stop"),
    (dict(seed="1"), "seed"),
    (dict(batch_size=0), "batch_size"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"GenerationConfig.{field}"):
        GenerationConfig(**kwargs)


def test_bad_prompts_are_named(default_model):
    model, tokenizer = default_model
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["hi", ""], GenerationConfig(max_new_tokens=1))
    with pytest.raises(TypeError, match="prompt 0 must be a str"):
        generate(model, tokenizer, [[{"role": "user", "content": "hi"}]])
    with pytest.raises(TypeError, match="list of strings"):
        generate(model, tokenizer, "hi")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        generate(model, tokenizer, ["hi"], n=0)
    assert generate(model, tokenizer, []) == []
    assert GenerationConfig(stop="END").stop == ("END",)
