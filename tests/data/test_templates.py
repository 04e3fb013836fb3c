import copy

import pytest

from acculturate.data import Example, read_examples, render_prompt, render_segments

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

MULTI = Example([
    {"role": "user", "content": "What do people eat for breakfast in Jakarta?"},
    {"role": "assistant", "content": "Often nasi uduk."},
    {"role": "user", "content": "And to drink?"},
    {"role": "assistant", "content": "Sweet tea."},
])


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_alpaca_prompt_matches_the_seed_format(tokenizer):
    ex = Example.from_alpaca("Convert 45 kilometers to meters.", "", "45 kilometers is 45000 meters.")
    segments = render_segments(ex, tokenizer, "alpaca")
    assert segments == [
        ("Below is an instruction that describes a task. Write a response that appropriately completes "
         "the request.\n\n### Instruction:\nConvert 45 kilometers to meters.\n\n### Response:\n", False),
        ("45 kilometers is 45000 meters.<|im_end|>", True),
    ]
    with_input = Example.from_alpaca("Edit the sentence.", "He go.", "He goes.")
    prompt = render_prompt(with_input, tokenizer, "alpaca")
    assert prompt.endswith("### Instruction:\nEdit the sentence.\n\n### Input:\nHe go.\n\n### Response:\n")


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_alpaca_for_chat_examples_uses_last_user_turn_and_system_first(tokenizer):
    ex = Example([{"role": "system", "content": "You live in Aceh."},
                  {"role": "user", "content": "Name a dish.\n\nOne word."},
                  {"role": "assistant", "content": "Mie"}])
    prompt = render_prompt(ex, tokenizer, "alpaca")
    assert prompt.startswith("You live in Aceh.\n\nBelow is an instruction")
    # no Alpaca meta: the whole user turn is the instruction, no Input section
    assert prompt.endswith("### Instruction:\nName a dish.\n\nOne word.\n\n### Response:\n")
    persona = render_prompt(ex, tokenizer, "alpaca", system="You live in Bali.")
    assert persona.startswith("You live in Bali.\n\nBelow") and "Aceh" not in persona
    with pytest.raises(ValueError, match="single-turn"):
        render_segments(MULTI, tokenizer, "alpaca")


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_chat_segments_mark_every_assistant_turn_with_its_end_token(tokenizer):
    segments = render_segments(MULTI, tokenizer, "chat")
    assert segments == [
        (SMOL_SYSTEM + "<|im_start|>user\nWhat do people eat for breakfast in Jakarta?<|im_end|>\n"
                       "<|im_start|>assistant\n", False),
        ("Often nasi uduk.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd to drink?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Sweet tea.<|im_end|>", True),
        ("\n", False),
    ]
    full = tokenizer.apply_chat_template(MULTI.messages, tokenize=False)
    assert "".join(text for text, _ in segments) == full


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_chat_segments_end_at_a_turn_marker_the_tokenizer_does_not_list_as_special(tokenizer):
    # A tokenizer read from a GGUF may not mark the template's end-of-turn token as special (Gemma's
    # <end_of_turn>): the response must still end with it, or the trained model never stops.
    marker = "###"
    assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1
    assert marker not in tokenizer.all_special_tokens
    plain = copy.copy(tokenizer)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                           "{% if m['role'] == 'assistant' %}" + marker + "{% endif %}\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant: {% endif %}")
    segments = render_segments(MULTI, plain, "chat")
    assert [text for text, is_response in segments if is_response] == ["Often nasi uduk.###", "Sweet tea.###"]


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_prompt_equals_training_text_up_to_the_response(tokenizer, data_dir):
    examples = read_examples(data_dir / "instructions" / "instruction-data.json")[:20] + [MULTI]
    for template in ("chat", "alpaca"):
        for system in (None, "You are a helpful assistant from Indonesia."):
            for ex in examples:
                if template == "alpaca" and ex is MULTI:
                    continue
                segments = render_segments(ex, tokenizer, template, system=system)
                last = max(i for i, (_, is_response) in enumerate(segments) if is_response)
                training_prefix = "".join(text for text, _ in segments[:last])
                assert render_prompt(ex, tokenizer, template, system=system) == training_prefix
                assert segments[last][0].startswith(ex.response)


@pytest.mark.slow  # the real SmolLM2 tokenizer
def test_render_prompt_accepts_strings_and_message_lists(tokenizer):
    expected = SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("Hi", tokenizer) == expected
    assert render_prompt([{"role": "user", "content": "Hi"}], tokenizer) == expected
    persona = render_prompt("Hi", tokenizer, system="You are Javanese.")
    assert persona.startswith("<|im_start|>system\nYou are Javanese.<|im_end|>\n") and "SmolLM" not in persona
    with pytest.raises(ValueError, match="template"):
        render_prompt("Hi", tokenizer, template="vicuna")


class ReasoningDroppingTokenizer:
    """Mimics templates (e.g. Qwen3's) that drop earlier assistant turns' reasoning: the rendering of a
    conversation prefix is then not a prefix of the whole rendering. Mechanics only."""

    chat_template = "fake"
    eos_token = "<end>"
    all_special_tokens = ["<end>"]

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        parts = []
        for i, m in enumerate(messages):
            content = m["content"]
            if m["role"] == "assistant" and i != last_assistant:
                content = content.split("</think>")[-1]
            parts.append(f"[{m['role']}]{content}<end>")
        return "".join(parts) + ("[assistant]" if add_generation_prompt else "")


def test_template_that_is_not_prefix_stable_is_refused():
    tok = ReasoningDroppingTokenizer()
    one = Example([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>x</think>A"}])
    assert render_segments(one, tok) == [("[user]Q<end>[assistant]", False), ("<think>x</think>A<end>", True)]
    two = Example(one.messages + [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}])
    with pytest.raises(ValueError, match="not prefix-stable"):
        render_segments(two, tok)
