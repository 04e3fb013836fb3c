"""Render an Example as text: training segments marked response / not response, and the
inference prompt, which is exactly the training text up to where the response starts.

Two templates:
- ``"chat"``: the tokenizer's own chat template (``tokenizer.apply_chat_template``).
- ``"alpaca"``: the Stanford Alpaca prompt, verbatim as in LLMs-from-scratch ch07 ``format_input``.
"""

from __future__ import annotations

from acculturate.data.example import Example

TEMPLATES = ("chat", "alpaca")
# Which assistant turns of a multi-turn conversation carry the loss: every one, or the last only
# (the earlier answers are then context, as at inference time).
LOSS_TURNS = ("all", "last")

# Verbatim from Alpaca / rasbt LLMs-from-scratch ch07 (format_input); the model sees exactly this.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_INSTRUCTION = "\n\n### Instruction:\n{instruction}"
ALPACA_INPUT = "\n\n### Input:\n{input}"
ALPACA_RESPONSE = "\n\n### Response:\n"

Segment = tuple[str, bool]  # (text, is_response)


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Messages with ``system`` as the system message (replacing an existing one); unchanged if None."""
    messages = [dict(m) for m in messages]
    if system is None:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": system}] + messages[1:]
    return [{"role": "system", "content": system}] + messages


def render_segments(example: Example, tokenizer, template: str = "chat", system: str | None = None,
                    loss_turns: str = "all") -> list[Segment]:
    """The training text of ``example`` cut into segments.

    Args:
        example: the example; every assistant turn is a response.
        tokenizer: a Hugging Face tokenizer (its chat template, eos and bos tokens are used).
        template: ``"chat"`` or ``"alpaca"``.
        system: optional persona that replaces or inserts the system message.
        loss_turns: ``"all"``: every assistant turn is a response; ``"last"``: only the final one
            (earlier assistant turns become context).

    Returns:
        ``[(text, is_response), ...]`` whose texts concatenate to the full training text. With
        ``"chat"`` each assistant turn (the last only, with ``loss_turns="last"``), including its
        end-of-turn token (``<|im_end|>``), is a response segment; with ``"alpaca"`` the response is ``output + tokenizer.eos_token``.
    """
    check_template(template)
    if loss_turns not in LOSS_TURNS:
        raise ValueError(f"loss_turns: expected one of {LOSS_TURNS}, got {loss_turns!r}")
    messages = with_system(example.messages, system)
    if template == "chat":
        segments = _chat_segments(messages, tokenizer)
        if loss_turns == "last":
            last = max((i for i, (_, r) in enumerate(segments) if r), default=-1)
            segments = [(text, r and i == last) for i, (text, r) in enumerate(segments)]
        return segments
    prompt_messages = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    prompt = _alpaca_prompt(prompt_messages, example.meta, tokenizer)
    if example.response is None:
        return [(prompt, False)]
    if tokenizer.eos_token is None:
        raise ValueError("template 'alpaca' needs tokenizer.eos_token to end the response; this tokenizer has none")
    return [(prompt, False), (example.response + tokenizer.eos_token, True)]


def render_prompt(
    messages_or_example: Example | list[dict] | str,
    tokenizer,
    template: str = "chat",
    system: str | None = None,
) -> str:
    """The inference prompt: the training text of the same example up to where its response starts.

    Args:
        messages_or_example: an Example, a message list, or a plain string (one user turn). A final
            assistant turn is dropped: the prompt is the one that turn answers.
        tokenizer: a Hugging Face tokenizer.
        template: ``"chat"`` or ``"alpaca"``.
        system: optional persona that replaces or inserts the system message.

    Returns:
        The prompt text, to be tokenized with ``add_special_tokens=False`` (it already holds any BOS).
    """
    check_template(template)
    if isinstance(messages_or_example, str):
        example = Example([{"role": "user", "content": messages_or_example}])
    elif isinstance(messages_or_example, Example):
        example = messages_or_example
    else:
        example = Example(list(messages_or_example))
    messages = with_system(example.prompt_messages, system)
    if template == "chat":
        return _apply(tokenizer, messages, add_generation_prompt=True)
    return _alpaca_prompt(messages, example.meta, tokenizer)


def check_template(template: str) -> None:
    """Raise ``ValueError("template: expected 'chat' or 'alpaca', got ...")`` for any other value
    (the check every config with a ``template`` field makes at load)."""
    if template not in TEMPLATES:
        raise ValueError(f"template: expected {' or '.join(map(repr, TEMPLATES))}, got {template!r}")


# --- chat -------------------------------------------------------------------------------------


def _apply(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat': this tokenizer has no chat template; use template='alpaca'")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _chat_segments(messages: list[dict], tokenizer) -> list[Segment]:
    """Locate each assistant turn by rendering prefixes: the turn starts where
    ``messages[:i]`` + generation prompt ends, and ends after its content and end-of-turn token."""
    full = _apply(tokenizer, messages, add_generation_prompt=False)
    segments: list[Segment] = []
    pos = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _apply(tokenizer, messages[:i], add_generation_prompt=True)
        turn = _apply(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(prompt) and full.startswith(turn) and len(prompt) <= len(turn)):
            # e.g. templates that drop earlier turns' reasoning: the prompt seen at inference time
            # would differ from the training text, so masking by position would be wrong.
            raise ValueError(
                f"the tokenizer's chat template is not prefix-stable: rendering messages[:{i}] does not "
                "give a prefix of the whole conversation, so assistant turns cannot be located"
            )
        start, end = len(prompt), _turn_end(turn, len(prompt), message["content"], tokenizer)
        segments += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    segments.append((full[pos:], False))
    return [(text, is_response) for text, is_response in segments if text]


def _turn_end(turn: str, start: int, content: str, tokenizer) -> int:
    """End of the assistant turn in ``turn``: after its content and the end-of-turn token that
    follows it, so the model learns to stop; the template's trailing newline stays unmasked-out."""
    found = turn.find(content, start) if content else start
    if found < 0:  # the template rewrote the content (e.g. trimmed it): take the rest of the turn
        return len(turn.rstrip())
    end = found + len(content)
    for token in _end_tokens(tokenizer):
        if turn.startswith(token, end):
            return end + len(token)
    # A marker the tokenizer does not list as special (a GGUF's tokenizer may not mark Gemma's
    # <end_of_turn>): what the template writes after the content, when it is one vocabulary token.
    marker = turn[end:].strip()
    if marker and len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1:
        return end + turn[end:].index(marker) + len(marker)
    return end


def _end_tokens(tokenizer) -> list[str]:
    """Candidate end-of-turn tokens: eos first, then the other special tokens, longest first."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    eos = [tokenizer.eos_token] if tokenizer.eos_token else []
    return eos + sorted(set(specials) - set(eos), key=len, reverse=True)


# --- alpaca -----------------------------------------------------------------------------------


def _alpaca_prompt(messages: list[dict], meta: dict, tokenizer) -> str:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) != 1 or turns[0]["role"] != "user":
        raise ValueError(
            "template 'alpaca' is single-turn: expected one user message (plus an optional system "
            f"message), got roles {[m['role'] for m in messages]}; use template='chat' for conversations"
        )
    user = turns[0]["content"]
    instruction, input_text = meta.get("instruction"), meta.get("input") or ""
    # Use the Alpaca fields only while they still describe this user turn.
    if not (isinstance(instruction, str) and user == instruction + ("\n\n" + input_text if input_text else "")):
        instruction, input_text = user, ""
    text = ALPACA_PREAMBLE + ALPACA_INSTRUCTION.format(instruction=instruction)
    if input_text:
        text += ALPACA_INPUT.format(input=input_text)
    text += ALPACA_RESPONSE
    if system:
        text = system + "\n\n" + text
    return _bos_text(tokenizer) + text


def _bos_text(tokenizer) -> str:
    """The BOS token text when the tokenizer would add one itself (Llama-style), else ''. Prompts are
    tokenized with add_special_tokens=False, so the BOS must be in the text."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None or not tokenizer.bos_token:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""
