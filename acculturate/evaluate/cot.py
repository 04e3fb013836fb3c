"""Chain-of-thought interpretability proxies (defined in docs/evaluation.md), pure functions on text.

- ``split_steps``: the explicit steps of a chain (numbered/bulleted lines, "Step N", else sentences).
- ``arithmetic_claims``: every ``a op b = c`` in the text, re-computed with exact rational arithmetic
  (parsed with a regex, never ``eval``).
- ``final_answer``: the number after "the answer is" (or the last number).
- ``follows_from_last_step``: whether that answer is the result the last step computed.
- ``consistency``: how many sampled chains agree with the majority answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
# "a op b = c"; op also accepts x, ×, ÷, − and the words times/plus/minus/divided by.
_CLAIM = re.compile(
    rf"(?P<a>{_NUM})\s*(?P<op>\+|-|−|\*|x|×|/|÷|plus|minus|times|divided by)\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})",
    re.IGNORECASE)
_OPS = {"+": "+", "plus": "+", "-": "-", "−": "-", "minus": "-", "*": "*", "x": "*", "×": "*",
        "times": "*", "/": "/", "÷": "/", "divided by": "/"}
_ANSWER = re.compile(rf"answer\s*(?:is|:|=)?\s*(?:\*\*)?\s*(?P<n>{_NUM})", re.IGNORECASE)
_ANY_NUM = re.compile(_NUM)
_STEP_LINE = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]|\d+\s*[.)]|[-*•])\s*", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """``"$1,250.5"`` -> Fraction(2501, 2); None when the text holds no number. Exact, so
    ``0.1 + 0.2 = 0.3`` checks as true."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").replace("−", "-")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass
class ArithmeticClaim:
    """One ``a op b = c`` found in a chain, with whether ``c`` is what ``a op b`` gives."""

    text: str
    a: Fraction
    op: str
    """+ - * /."""
    b: Fraction
    claimed: Fraction
    value: Fraction | None
    """None for division by zero."""
    correct: bool


def _compute(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def _close(value: Fraction, claimed: Fraction, claimed_text: str) -> bool:
    """Exact, or equal after rounding to the claimed number's decimals (``10 / 3 = 3.33`` is right)."""
    if value == claimed:
        return True
    decimals = len(claimed_text.split(".")[1]) if "." in claimed_text else None
    return decimals is not None and round(value, decimals) == claimed


def arithmetic_claims(text: str) -> list[ArithmeticClaim]:
    """Every ``a op b = c`` in ``text``, in order, each re-computed.

    A chained ``2 + 3 = 5 + 1 = 6`` gives two claims (``2 + 3 = 5`` and ``5 + 1 = 6``): the search
    restarts at ``c`` so a result can be the next claim's first operand.
    """
    claims, pos = [], 0
    while (m := _CLAIM.search(text, pos)) is not None:
        a, b, c = (parse_number(m.group(k)) for k in "abc")
        op = _OPS[m.group("op").lower()]
        if a is not None and b is not None and c is not None:
            value = _compute(a, op, b)
            claims.append(ArithmeticClaim(m.group(0), a, op, b, c, value,
                                          value is not None and _close(value, c, m.group("c").strip())))
        pos = m.start("c")
    return claims


def split_steps(text: str) -> list[str]:
    """The explicit reasoning steps: non-empty lines when the chain is laid out in lines (numbered,
    bulleted or plain), otherwise sentences. A concluding "The answer is ..." line is not a step."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip()) if s.strip()]
    steps = [_STEP_LINE.sub("", ln) for ln in lines]
    return [s for s in steps if s and not re.match(r"^(so,?\s+)?(the\s+)?(final\s+)?answer\b", s, re.IGNORECASE)]


def final_answer(text: str) -> Fraction | None:
    """The number after the last "answer is"/"answer:", else the last number in the text."""
    answers = list(_ANSWER.finditer(text))
    if answers:
        return parse_number(answers[-1].group("n"))
    numbers = _ANY_NUM.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def follows_from_last_step(text: str) -> bool | None:
    """Whether the final answer equals what the last step computes: the result of its last
    ``a op b = c`` (``c``), else the last number it states. None without steps or without an answer."""
    answer = final_answer(text)
    steps = split_steps(text)
    if answer is None or not steps:
        return None
    last = steps[-1]
    claims = arithmetic_claims(last)
    if claims:
        return claims[-1].claimed == answer
    numbers = _ANY_NUM.findall(last)
    return parse_number(numbers[-1]) == answer if numbers else False


def consistency(answers: Sequence[Fraction | float | None]) -> float | None:
    """Share of sampled chains whose answer equals the most common answer (a missing answer counts
    as disagreeing). 1.0 = every chain agrees; None for no chains."""
    if not answers:
        return None
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    return counts.most_common(1)[0][1] / len(answers)


def majority_answer(answers: Sequence[Fraction | None]) -> Fraction | None:
    """The most common non-missing answer (the first seen among ties); None if all are missing."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def chain_proxies(text: str) -> dict:
    """All single-chain proxies of one chain, JSON-ready (fractions as floats)."""
    claims = arithmetic_claims(text)
    answer = final_answer(text)
    return {
        "steps": len(split_steps(text)),
        "arithmetic_claims": len(claims),
        "arithmetic_correct": sum(c.correct for c in claims),
        "answer": None if answer is None else float(answer),
        "follows_from_last_step": follows_from_last_step(text),
    }
