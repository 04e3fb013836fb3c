"""Mechanics of the generation loop and of incremental detokenization, with the real SmolLM2
tokenizer and a scripted stand-in for the network: padding, position_ids, the one-token-per-step
cache protocol, dropping finished rows, stop strings across tokens, UTF-8-safe streaming.
Whether the real model decodes correctly is in test_generate.py."""

from types import SimpleNamespace

import pytest
import torch

from acculturate.decode import GenerationConfig, generate
from acculturate.decode.detokenize import TextStream

pytestmark = pytest.mark.slow  # the tokenizer comes from the default model fixture


class ScriptedCache:
    """Keeps each row's real tokens, like a KV cache keeps their keys; follows HF's Cache API."""

    def __init__(self, rows):
        self.rows = rows

    def batch_select_indices(self, index):
        self.rows = [self.rows[i] for i in index.tolist()]


class ScriptedLM(torch.nn.Module):
    """Emits ``scripts[first prompt token][step]`` for each row, and checks what the loop feeds it."""

    def __init__(self, scripts, vocab_size, eos_id):
        super().__init__()
        self.scripts = scripts
        self.vocab_size = vocab_size
        self.weight = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device from here
        self.config = SimpleNamespace(max_position_embeddings=10_000)
        self.generation_config = SimpleNamespace(eos_token_id=[eos_id])
        self.fed = []  # input_ids shapes, one per forward

    def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True, logits_to_keep=0):
        self.fed.append(tuple(input_ids.shape))
        if cache is None:  # prefill: left-padded prompts, positions count real tokens only
            rows = []
            for ids, mask, pos in zip(input_ids.tolist(), attention_mask.tolist(), position_ids.tolist()):
                pad = mask.index(1)
                assert all(m == 1 for m in mask[pad:]) and not any(mask[:pad]), "left padding"
                assert pos[pad:] == list(range(len(mask) - pad)), "position_ids of the prompt"
                rows.append({"prompt": ids[pad:], "new": []})
            cache = ScriptedCache(rows)
        else:
            assert input_ids.shape[1] == 1, "decode steps feed one token per row"
            assert attention_mask.shape[0] == len(cache.rows)
            for row, token, pos in zip(cache.rows, input_ids[:, 0].tolist(), position_ids[:, 0].tolist()):
                assert pos == len(row["prompt"]) + len(row["new"]), "position_ids of a new token"
                row["new"].append(token)
        logits = torch.full((len(cache.rows), 1, self.vocab_size), -10.0)
        for b, row in enumerate(cache.rows):
            logits[b, 0, self.scripts[row["prompt"][0]][len(row["new"])]] = 10.0
        return SimpleNamespace(logits=logits, cache=cache)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_batches_of_unequal_prompts_and_lengths(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = ["Hello", "A much longer prompt with many more tokens in it", "Zebra crossing"]
    answers = [" short", " a longer answer that keeps going for a while", " medium answer"]
    scripts = {ids_of(tokenizer, p)[0]: ids_of(tokenizer, a) + [eos] * 20 for p, a in zip(prompts, answers)}
    model = ScriptedLM(scripts, len(tokenizer), eos)
    out = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=40, batch_size=3))
    assert [c.text for c in out] == answers
    assert all(c.finish_reason == "eos" and c.token_ids[-1] == eos for c in out)
    assert [c.prompt_tokens for c in out] == [len(ids_of(tokenizer, p)) for p in prompts]
    # One prefill, then one token per step; rows leave the batch as they finish.
    longest = max(c.completion_tokens for c in out)
    assert len(model.fed) == longest
    assert model.fed[0][0] == 3 and all(shape[1] == 1 for shape in model.fed[1:])
    assert model.fed[-1] == (1, 1)


def test_max_new_tokens_and_input_order(tokenizer):
    prompts = ["b", "a much longer prompt", "c"]
    scripts = {ids_of(tokenizer, p)[0]: ids_of(tokenizer, " word" * 30) for p in prompts}
    model = ScriptedLM(scripts, len(tokenizer), tokenizer.convert_tokens_to_ids("<|im_end|>"))
    out = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=4, batch_size=2))
    assert [c.completion_tokens for c in out] == [4, 4, 4]
    assert [c.finish_reason for c in out] == ["length"] * 3
    assert [c.prompt_tokens for c in out] == [len(ids_of(tokenizer, p)) for p in prompts]


def test_stop_string_across_tokens_and_streaming(tokenizer):
    text = "Answer: Jakarta.\n\nQuestion: next one"
    tokens = ids_of(tokenizer, text)
    model = ScriptedLM({ids_of(tokenizer, "Q")[0]: tokens + [0] * 5}, len(tokenizer), 2)
    stop = "\n\nQuest"  # spans the "\n\n" and "Question" tokens
    assert all(stop not in tokenizer.decode([t]) for t in tokens)
    pieces = []
    (out,) = generate(model, tokenizer, ["Q"], GenerationConfig(max_new_tokens=50, stop=("zzz", stop)),
                      on_text=lambda i, d: pieces.append((i, d)))
    assert out.text == "Answer: Jakarta." and out.finish_reason == "stop"
    assert out.completion_tokens < len(tokens)
    assert "".join(d for _, d in pieces) == out.text and {i for i, _ in pieces} == {0}
    # Nothing that could turn out to be the stop string was streamed early.
    assert all("\n" not in d for _, d in pieces)


def test_text_stream_holds_back_broken_utf8(tokenizer):
    tokens = ids_of(tokenizer, "日本語 🇮🇩 ok")
    stream = TextStream(tokenizer)
    deltas = [stream.add(t) for t in tokens] + [stream.flush()]
    assert any(d == "" for d in deltas)  # some tokens are half a character
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == stream.text == "日本語 🇮🇩 ok"


def test_text_stream_stop_found_at_earliest_position(tokenizer):
    stream = TextStream(tokenizer, stop=("world", "lo w"))
    deltas = []
    for token in ids_of(tokenizer, "hello world and more"):
        deltas.append(stream.add(token))
        if stream.stopped:
            break
    assert stream.stopped and stream.text == "hel"
    assert "".join(deltas) == "hel"
    with pytest.raises(RuntimeError):
        stream.add(0)


def test_text_stream_flushes_a_held_prefix_at_the_end(tokenizer):
    stream = TextStream(tokenizer, stop=("\n\nQ",))
    deltas = [stream.add(t) for t in ids_of(tokenizer, "done\n\n")]
    assert "".join(deltas) == "done"  # "\n\n" could still become the stop string
    assert stream.flush() == "\n\n" and stream.text == "done\n\n"


def test_text_stream_cut_inside_a_character_drops_it(tokenizer):
    """max_tokens reached after the first byte-token of an emoji: the text must not end with U+FFFD."""
    tokens = ids_of(tokenizer, "ok 🇮🇩")
    cut = next(n for n in range(1, len(tokens) + 1)
               if tokenizer.decode(tokens[:n], clean_up_tokenization_spaces=False).endswith("\ufffd"))
    stream = TextStream(tokenizer)
    deltas = [stream.add(t) for t in tokens[:cut]] + [stream.flush()]
    assert stream.text == "ok " and "".join(deltas) == "ok " and "\ufffd" not in stream.text


def test_text_stream_extend_equals_adding_one_by_one(tokenizer):
    """extend() (one decode for many tokens, the static decoder's path) gives add()'s text, a cut
    inside a character dropped alike; with stop strings it refuses."""
    tokens = ids_of(tokenizer, "日本語 🇮🇩 ok 🇮🇩")
    cut = next(n for n in range(1, len(tokens) + 1)
               if tokenizer.decode(tokens[:n], clean_up_tokenization_spaces=False).endswith("\ufffd"))
    for part in (tokens, tokens[:cut]):
        one, many = TextStream(tokenizer), TextStream(tokenizer)
        for t in part:
            one.add(t)
        one.flush()
        assert many.extend(part) + many.flush() == many.text == one.text
        assert many.token_ids == one.token_ids
    with pytest.raises(RuntimeError):
        TextStream(tokenizer, stop=("x",)).extend(tokens)


def test_text_stream_decodes_incrementally_to_the_whole_decode(tokenizer):
    """add() decodes a short window per token (anchors every few tokens): over long random completions,
    byte pieces that form no character included, the text is the whole completion's decode and the
    deltas add up to it; a stop string past many anchors is still found where it starts."""
    import random

    from acculturate.decode.detokenize import ANCHOR_EVERY, REPLACEMENT_CHAR

    rng = random.Random(0)
    for _ in range(20):
        tokens = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 12 * ANCHOR_EVERY))]
        stream = TextStream(tokenizer)
        deltas = [stream.add(t) for t in tokens] + [stream.flush()]
        whole = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert stream.text == whole.rstrip(REPLACEMENT_CHAR) == "".join(deltas)
    tokens = ids_of(tokenizer, "word " * (4 * ANCHOR_EVERY) + "the end. more words follow here")
    stream = TextStream(tokenizer, stop=("end.",))
    deltas = []
    for token in tokens:
        deltas.append(stream.add(token))
        if stream.stopped:
            break
    assert stream.stopped and stream.text == "word " * (4 * ANCHOR_EVERY) + "the " == "".join(deltas)


def test_gc_paused_during_a_capture_and_restored_after():
    import gc

    from acculturate.decode.step import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(RuntimeError), gc_paused():
            raise RuntimeError("capture failed")
        assert not gc.isenabled()   # left as the caller had it
    finally:
        gc.enable()
