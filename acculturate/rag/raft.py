"""Retrieval-aware fine-tuning examples (RAFT: Zhang et al., 2024, arXiv:2403.10131).

Each training question is shown as the assistant will see it at answer time: the persona and the
instruction to cite, then the passages retrieval finds for it, then the question. The response is the
accepted answer followed by the number of the passage that holds it (``"fish and chips [2]"``), so
the model learns to find the right passage among look-alike distractors and to cite it.

- The **gold** passage is the best-ranked of the ``depth`` retrieved passages that contains an accepted
  answer (the most-voted one it contains is the target). When retrieval ranked it below the ``k``
  shown, it replaces the last shown passage at a seeded position: the model still practises reading.
- With probability ``1 - gold_fraction`` the gold passage is left out (only distractors shown) and the
  response is the answer alone, without a citation: RAFT's "no oracle" share, which keeps the model
  from trusting whatever it is shown and teaches the region's facts themselves.
- A question none of whose ``depth`` passages holds an answer is trained with what retrieval shows and
  the plain answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from acculturate.data.blend import is_correct
from acculturate.data.example import Example
from acculturate.rag.pipeline import passages_turn
from acculturate.rag.retrieve import Hit


@dataclass
class RaftConfig:
    """How the retrieval-aware training examples are made."""

    gold_fraction: float = 0.8     # share of questions shown with the passage that answers them
    depth: int = 8                 # retrieved passages searched for the gold one

    def __post_init__(self):
        if not 0.0 <= self.gold_fraction <= 1.0:
            raise ValueError(f"gold_fraction: expected a number in [0, 1], got {self.gold_fraction}")
        if self.depth < 1:
            raise ValueError(f"depth: expected >= 1, got {self.depth}")


def find_gold(hits: list[Hit], answers: list[str]) -> tuple[int, str] | None:
    """(position in ``hits``, the answer it holds) of the best-ranked passage holding an accepted
    answer (answers are tried in order: the most-voted first); None when none does."""
    for i, hit in enumerate(hits):
        for answer in answers:
            if is_correct(hit.passage["text"], [answer]):
                return i, answer
    return None


def raft_example(question: Example, hits: list[Hit], k: int, system: str, rng: random.Random,
                 config: RaftConfig, max_passage_chars: int = 600) -> Example:
    """One retrieval-aware training example for ``question`` (a QA Example: ``meta`` has
    ``question`` and ``answers``) from its ``depth`` retrieved ``hits``."""
    answers = question.meta["answers"]
    gold = find_gold(hits, answers)
    with_gold = gold is not None and rng.random() < config.gold_fraction
    if gold is None:
        shown, target, kind = hits[:k], answers[0], "no_gold_found"
    elif with_gold:
        position, answer = gold
        shown = list(hits[:k])
        if position >= k:
            shown = shown[:k - 1]
            shown.insert(rng.randrange(len(shown) + 1), hits[position])
        number = next(n for n, h in enumerate(shown, 1) if h is hits[position])
        target, kind = f"{answer} [{number}]", "gold"
    else:
        distractors = [h for h in hits if not is_correct(h.passage["text"], answers)]
        shown, target, kind = distractors[:k], answers[0], "distractors_only"
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": passages_turn(question.meta["question"], shown, max_passage_chars)},
                {"role": "assistant", "content": target}]
    return Example(messages, {**question.meta, "raft": kind, "passage_ids": [h.passage["id"] for h in shown]})


def raft_examples(questions: list[Example], hits: list[list[Hit]], k: int, system: str,
                  config: RaftConfig | None = None, seed: int = 0, max_passage_chars: int = 600) -> list[Example]:
    """:func:`raft_example` for each question (``hits[i]`` retrieved for ``questions[i]``), seeded."""
    config = config or RaftConfig()
    rng = random.Random(seed)
    return [raft_example(q, h, k, system, rng, config, max_passage_chars) for q, h in zip(questions, hits)]
