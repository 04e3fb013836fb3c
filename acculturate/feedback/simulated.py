"""A simulated user: a plain Python rule that asks questions and judges answers, for demonstrating
and testing the online loop without people.

The user lives in one region and asks BLEnD's everyday questions about it *without naming the
region* ("What do people usually have for breakfast?"), as a local would. A rule turns each
answer into the store's feedback kinds:

- ``mentions_region``: +1 ``correct_cultural`` when the answer is about the user's region (names
  it or its demonym), else -1 ``inappropriate``. Measured on SmolLM2-135M-Instruct, greedy, 32 of
  Indonesia's questions: 0 of 32 answers mention Indonesia (the base model answers generically).
- ``answers_correctly``: +1 when the answer contains one of the region's BLEnD annotator answers
  (:func:`acculturate.data.is_correct`), else -1. The base model: 5 of 32 (16%).

When an answer fails, the user sometimes (``adjust_probability``) writes the answer they wanted
instead, an ``adjustment``: "In Indonesia, <the annotators' most-voted answer>."

Every draw is seeded by ``(seed, question, answer)``, so a simulation is reproducible.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from acculturate.data import is_correct, load_blend


@dataclass
class Question:
    text: str
    answers: list[str]
    id: str


def strip_region(question: str, region: str) -> str:
    """``"What is eaten in Indonesia?"`` -> ``"What is eaten?"`` (the region named by a local is implicit)."""
    name = re.escape(region.replace("_", " "))
    return re.sub(rf"\s+(in|of|from|at) (the )?{name}\b", "", question).strip()


def region_questions(region: str, path=None) -> list[Question]:
    """The region's BLEnD questions with the region stripped; questions that still name it are dropped."""
    out = []
    for example in load_blend(path, countries=[region]):
        text = strip_region(example.meta["question"], example.meta["country"])
        if region.replace("_", " ").lower() not in text.lower():
            out.append(Question(text, example.meta["answers"], example.meta["id"]))
    return out


def _terms(region: str) -> tuple[str, ...]:
    name = region.replace("_", " ")
    demonyms = {"Indonesia": "Indonesian", "Mexico": "Mexican", "China": "Chinese", "Spain": "Spanish",
                "Algeria": "Algerian", "Ethiopia": "Ethiopian", "UK": "British", "US": "American",
                "Azerbaijan": "Azerbaijani", "Assam": "Assamese", "North Korea": "North Korean",
                "Northern Nigeria": "Nigerian"}
    return (name, demonyms[name]) if name in demonyms else (name,)


def mentions(text: str, terms: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(t)}\b", text, flags=re.IGNORECASE) for t in terms)


RULES = ("mentions_region", "answers_correctly")


@dataclass
class SimulatedUser:
    """A user of ``region`` who judges answers by ``rule`` (see the module docstring)."""

    region: str = "Indonesia"
    """A BLEnD country (its questions are asked, its name is what ``mentions_region`` looks for)."""
    rule: str = "mentions_region"
    """``mentions_region`` or ``answers_correctly``."""
    adjust_probability: float = 0.5
    """How often a failed answer gets an ``adjustment`` (a rewrite) instead of ``inappropriate``."""
    seed: int = 0
    questions: list[Question] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"SimulatedUser.rule must be one of {list(RULES)}, got {self.rule!r}")
        if not 0 <= self.adjust_probability <= 1:
            raise ValueError(f"SimulatedUser.adjust_probability must be in [0, 1], got {self.adjust_probability!r}")
        if not self.questions:
            self.questions = region_questions(self.region)
        self._by_text = {q.text: q for q in self.questions}
        self.terms = _terms(self.region)

    def split(self, probe: int) -> tuple[list[Question], list[Question]]:
        """``(asked, probe)``: a seeded shuffle of the questions; the last ``probe`` are kept apart
        (asked every round, never judged into the store) to measure generalisation."""
        order = list(self.questions)
        random.Random(self.seed).shuffle(order)
        return order[:len(order) - probe], order[len(order) - probe:]

    def satisfied(self, question: str, answer: str) -> bool:
        if self.rule == "mentions_region":
            return mentions(answer, self.terms)
        q = self._by_text.get(question)
        return q is not None and is_correct(answer, q.answers)

    def judge(self, question: str, answer: str) -> tuple[str, str | None]:
        """``(kind, corrected_text or None)`` for one answer to one of this user's questions."""
        if self.satisfied(question, answer):
            return "correct_cultural", None
        rng = random.Random(f"{self.seed}|{question}|{answer}")
        q = self._by_text.get(question)
        if q is not None and rng.random() < self.adjust_probability:
            return "adjustment", f"In {self.region.replace('_', ' ')}, {q.answers[0]}."
        return "inappropriate", None

    def reward(self, question: str, answer: str) -> float:
        """The rule as a number: +1 satisfied, -1 not (what the served answers are scored by)."""
        return 1.0 if self.satisfied(question, answer) else -1.0

    def question_in(self, prompt: str) -> str:
        """The longest of this user's questions that a rendered prompt contains ("" if none)."""
        return max((q for q in self._by_text if q in prompt), key=len, default="")

    def reward_fn(self):
        """The rule as a :data:`~acculturate.feedback.ppo.RewardFn` over rendered prompts, for PPO."""
        def score(prompts: list[str], completions: list[str]) -> list[float]:
            return [self.reward(self.question_in(p), c) for p, c in zip(prompts, completions)]
        return score
