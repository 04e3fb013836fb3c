"""The canonical training/inference example: a chat transcript plus free-form metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
WEIGHT_EXPECTED = "a finite number >= 0 (the example's loss weight)"


def loss_weight(meta: dict) -> float | None:
    """``meta["weight"]`` as a float (None when absent): the factor on the example's token losses in
    training, as ``acculturate data balance`` (mode ``weight``) writes it.

    Raises:
        ValueError: the weight is not a finite number >= 0 (the message says what was found).
    """
    if "weight" not in meta:
        return None
    value = meta["weight"]
    weight = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        weight = float(value)
    elif isinstance(value, str):
        try:
            weight = float(value)
        except ValueError:
            pass
    if weight is None or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"field 'meta.weight': expected {WEIGHT_EXPECTED}, got {value!r}")
    return weight


@dataclass
class Example:
    """One conversation. The assistant turns are the responses: training puts loss only on them."""

    messages: list[dict]
    """``[{"role": "system"|"user"|"assistant", "content": str}, ...]``."""
    meta: dict = field(default_factory=dict)
    """Anything else about the example (source id, country, the Alpaca ``instruction`` and ``input`` so the
    Alpaca template can render them verbatim, ...)."""

    def __post_init__(self):
        if not isinstance(self.messages, list):
            raise ValueError(f"Example.messages: expected a list, got {type(self.messages).__name__}")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"Example.messages[{i}]: expected {{'role': one of {ROLES}, 'content': str}}, got {m!r}"
                )
        if not isinstance(self.meta, dict):
            raise ValueError(f"Example.meta: expected a dict, got {type(self.meta).__name__}")

    @classmethod
    def from_alpaca(cls, instruction: str, input: str = "", output: str = "", **meta: Any) -> "Example":
        """Build an example from an Alpaca record.

        Args:
            instruction: the task.
            input: optional context; the user turn is ``instruction + "\\n\\n" + input`` when given.
            output: the response; empty means a prompt-only example (no assistant turn).
            **meta: extra fields kept in ``meta``.

        Returns:
            An Example whose ``meta`` also holds ``instruction`` and ``input`` for the Alpaca template.
        """
        input = input or ""
        user = instruction + ("\n\n" + input if input else "")
        messages = [{"role": "user", "content": user}]
        if output:
            messages.append({"role": "assistant", "content": output})
        return cls(messages, {**meta, "instruction": instruction, "input": input})

    @property
    def prompt_messages(self) -> list[dict]:
        """All messages except the final assistant turn (all of them for a prompt-only example)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    @property
    def response(self) -> str | None:
        """The content of the final assistant turn, or None when the example ends with a prompt."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None

    def to_dict(self) -> dict:
        """The JSON form written by ``write_examples``: ``{"messages": [...], "meta": {...}}``."""
        return {"messages": [dict(m) for m in self.messages], "meta": dict(self.meta)}
