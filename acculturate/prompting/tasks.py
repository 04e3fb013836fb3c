"""Tasks the strategies run on: a list of Examples plus the kind of answer they expect.

Every task's Examples carry the same ``meta`` fields, so a strategy never needs to know which
task it is solving:

- ``id``: unique within the task; ``question``: the bare question;
- ``prompt``: the user turn for a direct answer (BLEnD keeps its training wording, ``BLEND_PROMPT``,
  so a BLEnD-trained adapter is asked the way it was trained);
- ``answers``: accepted gold answers (numbers for ``number`` tasks, strings otherwise; empty when the
  question came from a user);
- ``answer_text``: the direct answer as an exemplar would show it;
- ``solution``: a worked solution ending with "The answer is X." (chain-of-thought exemplars);
- ``program``: a Python program printing the answer (program exemplars);
- ``region``: the region a question is about (personas, exemplar choice), or None.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.data import BLEND_PROMPT, DataError, Example, load_blend
from acculturate.data.errors import describe
from acculturate.prompting.extract import ANSWER_KINDS, format_number
from acculturate.resources import resource_path

SVAMP_FILE = "data/svamp/SVAMP.json"
SVAMP_PROMPT = "{question}\nAnswer with a number."


@dataclass
class Task:
    """A question set and how its answers are read."""

    name: str
    """e.g. ``"svamp"``."""
    kind: str
    """A key of :data:`~acculturate.prompting.extract.ANSWER_KINDS` (``number``, ``short``, ``choice``)."""
    examples: list[Example]
    """The questions."""
    pool: list[Example] | None = None
    """Where few-shot exemplars come from (default: ``examples``; an evaluation passes the questions it does
    not evaluate on). The question being answered is never its own exemplar."""
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    """Per-task memo (exemplar embeddings); not part of the task's identity."""

    def __post_init__(self):
        if self.kind not in ANSWER_KINDS:
            raise ValueError(f"Task.kind: expected one of {sorted(ANSWER_KINDS)}, got {self.kind!r}")
        if self.pool is None:
            self.pool = self.examples

    def extract(self, text: str, strict: bool = False, fallback: str = "last"):
        """The answer in a completion (see :mod:`acculturate.prompting.extract`)."""
        return ANSWER_KINDS[self.kind].extract(text, strict=strict, fallback=fallback)

    def is_correct(self, answer, example: Example) -> bool:
        """Whether ``answer`` matches one of the example's gold answers."""
        return ANSWER_KINDS[self.kind].correct(answer, example.meta["answers"])

    def vote_key(self, answer) -> str:
        """Key under which equal answers share a vote (``17.0`` and ``17``; ``The Fish`` and ``fish``)."""
        return ANSWER_KINDS[self.kind].key(answer)

    def display(self, answer) -> str | None:
        """The answer as text (``51.0`` -> ``"51"``); None stays None."""
        return None if answer is None else ANSWER_KINDS[self.kind].display(answer)

    def question_example(self, question: str, region: str | None = None) -> Example:
        """An Example for a question typed by a user (no gold answers)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question: expected a non-empty string")
        prompt = (BLEND_PROMPT if self.kind == "short" else SVAMP_PROMPT).format(question=question.strip())
        return Example([{"role": "user", "content": prompt}],
                       {"id": "user", "question": question.strip(), "prompt": prompt, "answers": [],
                        "answer_text": "", "solution": "", "program": None, "region": region})


def load_svamp(path: str | os.PathLike | None = None) -> Task:
    """SVAMP arithmetic word problems (Patel et al., NAACL 2021): 1,000 one-operation problems.

    Args:
        path: a SVAMP JSON file (a list of ``{ID, Body, Question, Equation, Answer}``); default the
            shipped copy.

    Returns:
        A ``number`` task whose exemplar solutions and programs come from each problem's equation.

    Raises:
        DataError: the file is not a list of SVAMP records.
    """
    path = Path(path) if path is not None else resource_path(SVAMP_FILE)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, "a JSON list of SVAMP problems", f"malformed JSON ({e.msg})") from None
    if not isinstance(rows, list) or not rows:
        raise DataError(path, None, None, "a non-empty JSON list of SVAMP problems", describe(rows))
    examples = []
    for i, row in enumerate(rows):
        for name, kinds in (("ID", str), ("Body", str), ("Question", str), ("Equation", str),
                            ("Answer", (int, float))):
            if not isinstance(row, dict) or not isinstance(row.get(name), kinds) or isinstance(row.get(name), bool):
                got = describe(row.get(name) if isinstance(row, dict) else row)
                raise DataError(path, None, f"[{i}].{name}", "a number" if name == "Answer" else "a string", got)
        body = row["Body"].strip()
        question = f"{body}{'' if body.endswith(('.', '?', '!')) else '.'} {row['Question'].strip()}"
        answer = float(row["Answer"])
        expression = _pretty_equation(row["Equation"])
        prompt = SVAMP_PROMPT.format(question=question)
        examples.append(Example(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": format_number(answer)}],
            {"id": row["ID"], "question": question, "prompt": prompt, "answers": [answer],
             "answer_text": format_number(answer),
             "solution": f"We need {expression} = {format_number(answer)}.\nThe answer is {format_number(answer)}.",
             "program": f"print({expression})", "region": None, "type": row.get("Type")},
        ))
    return Task("svamp", "number", examples)


def _pretty_equation(equation: str) -> str:
    """``"( ( 76.0 - 25.0 ) * 2.0 )"`` -> ``"(76 - 25) * 2"``: integers without ``.0``, no outer brackets."""
    text = re.sub(r"(\d+)\.0\b", r"\1", equation)
    text = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", text)).strip()
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def load_blend_task(path: str | os.PathLike | None = None, countries: list[str] | str | None = None) -> Task:
    """BLEnD short-answer questions about everyday culture, scored with :func:`acculturate.data.is_correct`.

    Args:
        path: a BLEnD JSONL file; default the shipped English subset.
        countries: keep only these countries.

    Returns:
        A ``short`` task; each example's region is its country (``North_Korea`` -> ``North Korea``).
    """
    examples = []
    for ex in load_blend(path, countries=countries):
        best = ex.response
        region = ex.meta["country"].replace("_", " ")
        examples.append(Example(ex.messages, {
            **ex.meta, "prompt": ex.prompt_messages[-1]["content"], "answer_text": best,
            "solution": f"Think of everyday life in {region}: most people there would say {best}.\n"
                        f"The answer is {best}.",
            "program": f"print({best!r})", "region": region}))
    return Task("blend", "short", examples)


# name -> loader(path=None, **options) -> Task
TASKS = {"svamp": load_svamp, "blend": load_blend_task}


def load_task(name: str, path: str | os.PathLike | None = None, **options) -> Task:
    """Load a task by name (a key of :data:`TASKS`); ``options`` go to its loader (``countries`` for blend)."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](path, **options)
