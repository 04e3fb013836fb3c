import pytest

from acculturate.data import Example


def test_from_alpaca_joins_instruction_and_input_and_keeps_them_in_meta():
    ex = Example.from_alpaca("Translate.", "Selamat pagi", "Good morning", source="nusax")
    assert ex.messages == [
        {"role": "user", "content": "Translate.\n\nSelamat pagi"},
        {"role": "assistant", "content": "Good morning"},
    ]
    assert ex.meta == {"source": "nusax", "instruction": "Translate.", "input": "Selamat pagi"}
    assert ex.response == "Good morning"
    assert ex.prompt_messages == ex.messages[:1]


def test_from_alpaca_without_input_or_output():
    ex = Example.from_alpaca("Name a fruit.")
    assert ex.messages == [{"role": "user", "content": "Name a fruit."}]
    assert ex.response is None
    assert ex.prompt_messages == ex.messages


def test_prompt_messages_multi_turn_drops_only_the_last_assistant_turn():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    ex = Example(msgs)
    assert ex.prompt_messages == msgs[:4]
    assert ex.response == "A2"
    assert ex.to_dict() == {"messages": msgs, "meta": {}}


@pytest.mark.parametrize("bad", [[{"role": "bot", "content": "x"}], [{"role": "user", "content": 3}], ["hi"]])
def test_invalid_messages_are_rejected(bad):
    with pytest.raises(ValueError, match=r"Example.messages\[0\]"):
        Example(bad)
