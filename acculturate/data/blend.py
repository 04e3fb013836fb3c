"""BLEnD short-answer questions on everyday culture (Myung et al., NeurIPS 2024, arXiv:2406.09948):
load them as Examples and score free-text answers against the annotators' answers."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from acculturate.data.errors import DataError, describe
from acculturate.data.example import Example
from acculturate.data.jsonl import read_jsonl_objects
from acculturate.resources import resource_path

BLEND_FILE = "data/blend/blend_saq_en.jsonl"
# The one place the question wording lives: training and evaluation must ask the same way.
BLEND_PROMPT = "{question}\nAnswer in a few words."


def load_blend(
    path: str | os.PathLike | None = None,
    countries: list[str] | str | None = None,
    topics: list[str] | str | None = None,
) -> list[Example]:
    """BLEnD questions as Examples: the user turn asks the question (``BLEND_PROMPT``), the response
    is the most-voted answer (the first answer string of the group with the most votes).

    Args:
        path: a BLEnD JSONL file; default the shipped English subset.
        countries: keep only these countries (case-insensitive; ``"North Korea"`` = ``"North_Korea"``).
        topics: keep only these topics (e.g. ``"Food"``), case-insensitive.

    Returns:
        Examples in file order; rows without any answer string are skipped. ``meta`` holds ``id``,
        ``country``, ``topic``, ``question`` and ``answers`` (every annotator answer string).

    Raises:
        ValueError: an unknown country or topic (the message lists the available ones).
        DataError: a malformed row.
    """
    rows = _read_rows(path)
    keep_country = _selection(countries, {r["country"] for _, r in rows}, "countries")
    keep_topic = _selection(topics, {r["topic"] for _, r in rows}, "topics")
    examples = []
    for _, row in rows:
        if keep_country is not None and row["country"] not in keep_country:
            continue
        if keep_topic is not None and row["topic"] not in keep_topic:
            continue
        # A few groups hold no answer string (the annotation was lost in translation): ignore them.
        groups = [g for g in row["answers_en"] if g["answers"]]
        if not groups:
            continue
        best = max(groups, key=lambda g: g["count"])  # max keeps the first of tied groups
        answers = [a for g in groups for a in g["answers"]]
        examples.append(
            Example(
                [
                    {"role": "user", "content": BLEND_PROMPT.format(question=row["question_en"])},
                    {"role": "assistant", "content": best["answers"][0]},
                ],
                {"id": row["id"], "country": row["country"], "topic": row["topic"],
                 "question": row["question_en"], "answers": answers},
            )
        )
    return examples


def blend_countries(path: str | os.PathLike | None = None) -> list[str]:
    """The countries in a BLEnD file (default: the shipped one), sorted."""
    return sorted({row["country"] for _, row in _read_rows(path)})


def normalize_answer(text: str) -> str:
    """Lower-case, turn punctuation into spaces, drop the articles a/an/the, collapse whitespace
    (SQuAD-style, but punctuation splits words so ``ice-cream`` matches ``ice cream``)."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def is_correct(prediction: str, answers: list[str]) -> bool:
    """True when some annotator answer, normalized, equals the normalized prediction or occurs in it
    as a whole-word phrase (the model often answers in a sentence: "People eat couscous.")."""
    padded = f" {normalize_answer(prediction)} "
    if not padded.strip():
        return False
    for answer in answers:
        norm = normalize_answer(answer)
        if norm and f" {norm} " in padded:
            return True
    return False


# --- reading ----------------------------------------------------------------------------------

_FIELDS = {"id": str, "country": str, "topic": str, "question_en": str, "answers_en": list}


def _read_rows(path) -> list[tuple[int, dict]]:
    path = Path(path) if path is not None else resource_path(BLEND_FILE)
    rows = []
    for lineno, row in read_jsonl_objects(path):
        for name, kind in _FIELDS.items():
            if not isinstance(row.get(name), kind):
                got = "nothing (the field is missing)" if name not in row else describe(row[name])
                raise DataError(path, lineno, name, f"a {kind.__name__}", got)
        for i, group in enumerate(row["answers_en"]):
            if not (isinstance(group, dict) and isinstance(group.get("count"), int)
                    and isinstance(group.get("answers"), list)
                    and all(isinstance(a, str) for a in group["answers"])):
                raise DataError(path, lineno, f"answers_en[{i}]",
                                "{'answers': [strings], 'count': int}", describe(group, 80))
        rows.append((lineno, row))
    if not rows:
        raise DataError(path, None, None, "at least one BLEnD row", "an empty file")
    return rows


def _canonical(name: str) -> str:
    return re.sub(r"[\s_]+", "_", name.strip()).lower()


def _selection(wanted, available: set[str], what: str) -> set[str] | None:
    """Map the requested names onto the file's spelling; None means keep everything."""
    if wanted is None:
        return None
    if isinstance(wanted, str):
        wanted = [wanted]
    by_canonical = {_canonical(a): a for a in available}
    unknown = [w for w in wanted if _canonical(w) not in by_canonical]
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; available: {sorted(available)}")
    return {by_canonical[_canonical(w)] for w in wanted}
