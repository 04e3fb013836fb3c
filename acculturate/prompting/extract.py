"""Pull the final answer out of a model completion: numbers, multiple-choice letters, short answers.

Every extractor looks first for an explicit final-answer marker ("The answer is 42.", "#### 42",
"Answer: B", "\\boxed{42}", "**42**") and takes the last one, because a chain of thought mentions
many numbers and only its conclusion counts. Without a marker it falls back to a position in the
text (the last number; the first or last line of a short answer) unless ``strict`` asks for a
marker, which is how tree-of-thought tells a finished solution from an intermediate step.

``ANSWER_KINDS`` is the registry the strategies use: per kind, how to extract, how to compare with
the gold answers, and the key under which self-consistency counts votes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from acculturate.data import is_correct as blend_is_correct
from acculturate.data import normalize_answer

# "The final answer is", "the answer would be:", "Answer:", "Final answer -", "#### " (GSM8K);
# "\boxed{...}" (MATH) is matched apart.
_MARKER = re.compile(
    r"(?:(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:(?:is|would\s+be|will\s+be)\s*[:=]?|[:=]|-(?!\d))|####)\s*",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_BOLD = re.compile(r"\*\*([^*\n]{1,80})\*\*")

# A number as people write it: -3, 1,200, $1,200.50, 3/4, 2 1/2 (mixed), 45%, 1.5e3 is not handled
# (no word problem answer is written that way). The sign only counts at a word start, so the 5 in
# "10-5" stays positive.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?\s?[$€£¥]?\s?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s+\d+/\d+|/\d+)?|\.\d+)"
    r"(?!\d)"
)
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
         "hundred": 100}
_WORDS.update(_TENS)
_WORD_NUMBER = re.compile(r"\b(" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def _marker_tails(text: str) -> list[str]:
    """Texts that follow each final-answer marker, in order (boxed contents count as markers)."""
    heads = list(_MARKER.finditer(text))
    # Each tail runs to the next marker: "The answer is 7. Wait, the answer is 8." has two.
    tails = [text[m.end():(heads[i + 1].start() if i + 1 < len(heads) else len(text))]
             for i, m in enumerate(heads)]
    tails += [m.group(1) for m in _BOXED.finditer(text)]
    return [t for t in tails if t.strip()]


def parse_number(token: str) -> float | None:
    """``"1,200"`` -> 1200.0, ``"3/4"`` -> 0.75, ``"2 1/2"`` -> 2.5, ``"-$5"`` -> -5.0; None if no number."""
    m = _NUMBER.search(token)
    if not m:
        return None
    return _number_value(m)


def _number_value(m: re.Match) -> float | None:
    raw = m.group("num").replace(",", "")
    try:
        if " " in raw:  # mixed number "2 1/2"
            whole, frac = raw.split()
            value = float(int(whole) + Fraction(frac))
        elif "/" in raw:
            num, den = raw.split("/")
            if int(den) == 0:
                return None
            value = float(Fraction(int(num), int(den))) if "." not in num else float(num) / int(den)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") else value


def _numbers_in(text: str) -> list[float]:
    values = [_number_value(m) for m in _NUMBER.finditer(text)]
    return [v for v in values if v is not None]


def extract_number(text: str, strict: bool = False) -> float | None:
    """The final numeric answer in ``text``.

    Args:
        text: a completion, e.g. ``"... so 26 - 9 = 17. The answer is 17."``.
        strict: only accept a number that follows a final-answer marker (or is boxed/bold).

    Returns:
        The number as a float, or None when there is none.
    """
    for tail in reversed(_marker_tails(text)):
        # The first number after the marker: "The answer is 17 cookies (26 - 9)".
        numbers = _numbers_in(tail.split("\n")[0]) or _numbers_in(tail)
        if numbers:
            return numbers[0]
        word = _WORD_NUMBER.search(tail.split("\n")[0])
        if word:
            return float(_WORDS[word.group(1).lower()])
    for bold in reversed(_BOLD.findall(text)):
        numbers = _numbers_in(bold)
        if numbers:
            return numbers[-1]
    if strict:
        return None
    numbers = _numbers_in(text)
    if numbers:
        return numbers[-1]
    word = list(_WORD_NUMBER.finditer(text))
    return float(_WORDS[word[-1].group(1).lower()]) if word else None


def numbers_match(predicted: float | None, gold: float, rel_tol: float = 1e-6) -> bool:
    """True when ``predicted`` equals ``gold`` up to rounding (``0.3333333`` matches ``1/3``'s float
    only to rel_tol, so answers must be given with enough digits)."""
    if predicted is None or math.isnan(predicted):
        return False
    return math.isclose(predicted, gold, rel_tol=rel_tol, abs_tol=1e-9)


def format_number(value: float) -> str:
    """``51.0`` -> ``"51"``, ``2.5`` -> ``"2.5"``: how a number is written in prompts and vote keys."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def extract_choice(text: str, choices: str = "ABCD", strict: bool = False) -> str | None:
    """The chosen option letter in ``text`` ("(B)", "Answer: B", "**B**", "B) Paris", "b.").

    Args:
        text: a completion.
        choices: the option letters, upper-case.
        strict: only accept a letter after a final-answer marker.

    Returns:
        The upper-case letter, or None.
    """
    letters = re.escape(choices.upper())
    option = re.compile(rf"(?:^|[\s(\[*'\"])([{letters}{letters.lower()}])(?:$|[\s).\]:,*'\"])")
    for tail in reversed(_marker_tails(text)):
        m = option.search(" " + tail.split("\n")[0])
        if m:
            return m.group(1).upper()
    if strict:
        return None
    # Parenthesised or bold upper-case letters are deliberate; a bare "A" may be the article.
    for pattern in (rf"\(([{letters}])\)", rf"\*\*\(?([{letters}])\)?[.)]?\*\*", rf"(?m)^\s*([{letters}])[.):]"):
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    found = re.findall(rf"\b([{letters}])\b", text)
    return found[-1] if found else None


def extract_short_answer(text: str, strict: bool = False, fallback: str = "first") -> str | None:
    """A short free-text answer ("The answer is fish and chips." -> "fish and chips").

    Args:
        text: a completion.
        strict: only accept text after a final-answer marker.
        fallback: without a marker, take the ``"first"`` non-empty line (a direct answer states it
            first) or the ``"last"`` one (a chain of thought concludes at the end).

    Returns:
        The answer without markdown emphasis, quotes or a final full stop; None when empty.
    """
    tails = _marker_tails(text)
    if tails:
        answer = tails[-1].split("\n")[0]
    elif strict:
        return None
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        answer = lines[0] if fallback == "first" else lines[-1]
    answer = re.sub(r"[*_`]+", "", answer).strip().strip("\"'").strip()
    answer = re.sub(r"[.!;,]+$", "", answer).strip()
    return answer or None


@dataclass(frozen=True)
class AnswerKind:
    """How one kind of answer is extracted, scored and voted on."""

    extract: Callable
    """``extract(text, strict, fallback) -> answer | None``."""
    correct: Callable
    """``correct(answer, gold_answers) -> bool``; gold answers as in ``meta["answers"]``."""
    key: Callable
    """``key(answer) -> str``, equal for answers that should share a vote."""
    display: Callable
    """``display(answer) -> str`` for prompts, tables and JSON."""


def _number_correct(answer, gold: list) -> bool:
    return any(numbers_match(answer, float(g)) for g in gold)


def _short_correct(answer, gold: list) -> bool:
    return answer is not None and blend_is_correct(answer, gold)


def _choice_correct(answer, gold: list) -> bool:
    return answer is not None and answer.upper() in {str(g).upper() for g in gold}


ANSWER_KINDS: dict[str, AnswerKind] = {
    "number": AnswerKind(
        extract=lambda text, strict=False, fallback="last": extract_number(text, strict),
        correct=_number_correct,
        key=lambda a: format_number(round(a, 6)),
        display=format_number,
    ),
    "short": AnswerKind(
        extract=lambda text, strict=False, fallback="first": extract_short_answer(text, strict, fallback),
        correct=_short_correct,
        key=normalize_answer,
        display=str,
    ),
    "choice": AnswerKind(
        extract=lambda text, strict=False, fallback="last": extract_choice(text, strict=strict),
        correct=_choice_correct,
        key=str.upper,
        display=str,
    ),
}
