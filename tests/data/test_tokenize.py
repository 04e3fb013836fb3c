import logging

import pytest

from acculturate.data import Example, read_examples, render_prompt, tokenize_example, tokenize_examples

pytestmark = pytest.mark.slow  # the real SmolLM2 tokenizer


def response_tokens(feature):
    return [t for t, label in zip(feature["input_ids"], feature["labels"]) if label != -100]


def test_unmasked_tokens_decode_to_the_response(tokenizer, data_dir):
    for ex in read_examples(data_dir / "instructions" / "instruction-data.json")[:30]:
        for template in ("chat", "alpaca"):
            f = tokenize_example(ex, tokenizer, template, max_length=1024)
            assert len(f["input_ids"]) == len(f["labels"])
            assert all(label in (-100, tok) for tok, label in zip(f["input_ids"], f["labels"]))
            assert tokenizer.decode(response_tokens(f)) == ex.response + "<|im_end|>"
            # the masked part is exactly the inference prompt, token for token
            n_prompt = f["labels"].index(next(label for label in f["labels"] if label != -100))
            prompt = render_prompt(ex, tokenizer, template)
            assert f["input_ids"][:n_prompt] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_multi_turn_trains_on_every_assistant_turn(tokenizer):
    ex = Example([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A one."},
                  {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A two."}])
    f = tokenize_example(ex, tokenizer, "chat", max_length=512)
    assert tokenizer.decode(response_tokens(f)) == "A one.<|im_end|>A two.<|im_end|>"
    full = tokenizer.apply_chat_template(ex.messages, tokenize=False)
    assert tokenizer.decode(f["input_ids"]) == full
    last = tokenize_example(ex, tokenizer, "chat", max_length=512, loss_turns="last")
    assert last["input_ids"] == f["input_ids"]
    assert tokenizer.decode(response_tokens(last)) == "A two.<|im_end|>"
    with pytest.raises(ValueError, match="loss_turns"):
        tokenize_example(ex, tokenizer, "chat", loss_turns="first")


def test_truncation_keeps_partial_responses_and_drops_empty_ones(tokenizer, caplog):
    ex = Example.from_alpaca("Say something long.", "", "word " * 50)
    full = tokenize_example(ex, tokenizer, "alpaca", max_length=None)
    n_prompt = full["labels"].count(-100)
    cut = tokenize_example(ex, tokenizer, "alpaca", max_length=n_prompt + 3)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 3]
    assert len(response_tokens(cut)) == 3
    assert tokenize_example(ex, tokenizer, "alpaca", max_length=n_prompt) is None
    short = Example.from_alpaca("Hi", "", "Hello")
    dropped = []
    with caplog.at_level(logging.WARNING, logger="acculturate.data.tokenize"):
        features = tokenize_examples([ex, short, ex], tokenizer, "alpaca", max_length=n_prompt,
                                     progress=False, dropped=dropped)
    assert dropped == [0, 2] and len(features) == 1
    assert "dropped 2 of 3 examples" in caplog.text


def test_examples_without_a_response_are_refused(tokenizer):
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_example(Example.from_alpaca("Hi"), tokenizer, "chat", max_length=64)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_example(Example.from_alpaca("Hi", "", "Yo"), tokenizer, "chat", max_length=0)


def test_meta_weight_becomes_the_features_loss_weight(tokenizer):
    weighted = Example.from_alpaca("Say hi.", output="Hi!", weight=1.5)
    assert tokenize_example(weighted, tokenizer)["weight"] == 1.5
    assert "weight" not in tokenize_example(Example.from_alpaca("Say hi.", output="Hi!"), tokenizer)
    with pytest.raises(ValueError, match=r"field 'meta.weight': expected a finite number >= 0 .*, got -1"):
        tokenize_example(Example.from_alpaca("Say hi.", output="Hi!", weight=-1), tokenizer)
