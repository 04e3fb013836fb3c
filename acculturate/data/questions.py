"""A region's questions with accepted answers: the user's own evaluation and training set for
``acculturate adapt``.

Accepted files:

- JSONL (or a JSON list) of ``{"question": "...", "answers": ["...", "..."]}``; any answer counts as
  correct, the first is the one trained on. Optional ``id`` (default: ``q<line>``) and ``topic``
  (per-topic accuracy, stratified split); other fields are kept in ``meta``.
- Any file :func:`acculturate.data.read_examples` reads (Alpaca, chat, CSV with a column map): the
  prompt is the question, the response the one accepted answer.

Every question becomes an :class:`Example` shaped like a BLEnD one, so the adapt job treats both alike:
``meta`` holds ``id``, ``question``, ``answers`` and ``topic``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The closed-book wording of a question is BLEnD's, so presets and user questions are asked alike.
from acculturate.data.blend import BLEND_PROMPT
from acculturate.data.errors import DataError, describe
from acculturate.data.example import Example
from acculturate.data.formats import read_examples
from acculturate.data.jsonl import read_jsonl_objects

MIN_QUESTIONS = 20   # below this a train/held-apart split cannot show anything


def question_example(question: str, answers: list[str], id: str, topic: str | None = None, **meta) -> Example:
    """One question as an Example: the closed-book prompt, the first answer as the response."""
    return Example([{"role": "user", "content": BLEND_PROMPT.format(question=question)},
                    {"role": "assistant", "content": answers[0]}],
                   {**meta, "id": id, "question": question, "answers": list(answers), "topic": topic})


def read_questions(path: str | os.PathLike, columns: dict | None = None) -> list[Example]:
    """Read a question file (see the module doc) into Examples.

    Raises:
        DataError: naming the file, line and field of a malformed row, a duplicate id, or a file with
            fewer than ``MIN_QUESTIONS`` questions.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"questions: no such file {path}")
    examples = _read_answer_lists(path) if _has_answer_lists(path) else _read_other(path, columns)
    seen: dict[str, int] = {}
    for n, ex in enumerate(examples):
        if ex.meta["id"] in seen:
            raise DataError(path, ex.meta.get("line"), "id", "ids that are unique in the file",
                            f"{ex.meta['id']!r} again")
        seen[ex.meta["id"]] = n
    if len(examples) < MIN_QUESTIONS:
        raise DataError(path, None, None, f"at least {MIN_QUESTIONS} questions (they are split into train "
                        "and held-apart halves; with fewer, no difference could be measured)",
                        f"{len(examples)}")
    return examples


def _has_answer_lists(path: Path) -> bool:
    """Whether the file is the ``question`` + ``answers`` format (its first record has both)."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return False
    text = path.read_text(encoding="utf-8", errors="replace").lstrip()
    try:
        first = (json.loads(text)[0] if text.startswith("[") else json.loads(text.splitlines()[0]))
    except (ValueError, IndexError, KeyError, TypeError):
        return False
    return isinstance(first, dict) and "question" in first and "answers" in first


def _read_answer_lists(path: Path) -> list[Example]:
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("["):
        try:
            records = list(enumerate(json.loads(text), 1))
        except ValueError as e:
            raise DataError(path, None, None, "a JSON list of question objects", f"invalid JSON ({e})") from None
    else:
        records = read_jsonl_objects(path)
    examples = []
    for line, row in records:
        if not isinstance(row, dict):
            raise DataError(path, line, None, "an object with 'question' and 'answers'", describe(row))
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(path, line, "question", "a non-empty string",
                            "nothing (the field is missing)" if "question" not in row else describe(question))
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(path, line, "answers", "a list of answer strings",
                            "nothing (the field is missing)" if "answers" not in row else describe(answers))
        answers = [a for a in answers if a.strip()]   # a blank answer accepts nothing: dropped
        if not answers:
            raise DataError(path, line, "answers", "at least one non-blank answer", "none")
        topic = row.get("topic")
        if topic is not None and not isinstance(topic, str):
            raise DataError(path, line, "topic", "a string", describe(topic))
        rid = row.get("id", f"q{line}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise DataError(path, line, "id", "a string or an integer", describe(rid))
        extra = {k: v for k, v in row.items() if k not in ("question", "answers", "topic", "id")}
        examples.append(question_example(question.strip(), [a.strip() for a in answers], str(rid), topic,
                                         line=line, **extra))
    return examples


def _read_other(path: Path, columns: dict | None) -> list[Example]:
    """Alpaca / chat / CSV: the last user turn is the question, the last response the one answer."""
    examples = []
    for n, ex in enumerate(read_examples(path, columns=columns), 1):
        users = [m["content"] for m in ex.messages if m["role"] == "user"]
        answers = [m["content"] for m in ex.messages if m["role"] == "assistant"]
        question = ex.meta.get("instruction") or users[-1]
        if ex.meta.get("input"):
            question = f"{question}\n{ex.meta['input']}"
        examples.append(question_example(question.strip(), [answers[-1].strip()], str(ex.meta.get("id", f"q{n}")),
                                         ex.meta.get("topic"), line=n))
    return examples
