"""Worked examples shown to a pre-trained base model before each held-apart question.

A pre-trained (not instruction-tuned) model given a chat prompt continues the text instead of
answering: Gemma 3 270M base repeated the system persona for every UK question, so both of its base
rows scored 0% and said nothing about what the model knew. Few-shot prompting is how such models are
evaluated (lm-evaluation-harness, the GPT-3 paper): a few solved questions from the *training* split,
as earlier chat turns in exactly the format of the real question, so the model sees what an answer
looks like. The adapted model is evaluated without them, as ``ask`` and ``serve`` run it, so shots
can only make the base look better, never the gain larger.

Closed-book shots are question -> accepted answer. Retrieval shots show the passage that holds the
answer, cut short (a shot costs prompt tokens on every question), and the answer citing it
(``"fish and chips [1]"``), as retrieval-aware training does (rag/raft.py).
"""

from __future__ import annotations

import random

from acculturate.data.example import Example
from acculturate.rag.assistant import closed_book_turn
from acculturate.rag.pipeline import passages_turn
from acculturate.rag.raft import find_gold
from acculturate.rag.retrieve import Hit

SHOT_PASSAGE_CHARS = 200


def closed_book_shots(questions: list[Example], n: int, seed: int = 0) -> list[dict]:
    """``n`` solved questions as user/assistant turns (the closed-book wording), seeded."""
    turns: list[dict] = []
    for q in random.Random(seed).sample(questions, min(n, len(questions))):
        turns += [{"role": "user", "content": closed_book_turn(q.meta["question"])},
                  {"role": "assistant", "content": q.meta["answers"][0]}]
    return turns


def retrieval_shots(questions: list[Example], hits: list[list[Hit]], n: int, seed: int = 0,
                    max_passage_chars: int = SHOT_PASSAGE_CHARS) -> list[dict]:
    """``n`` solved questions with the passage that answers them (questions whose retrieved passages
    hold no accepted answer are skipped), as user/assistant turns, seeded."""
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    turns: list[dict] = []
    for i in order:
        if len(turns) == 2 * n:
            break
        gold = find_gold(hits[i], questions[i].meta["answers"])
        if gold is None:
            continue
        position, answer = gold
        turns += [{"role": "user", "content": passages_turn(questions[i].meta["question"], [hits[i][position]],
                                                            max_passage_chars)},
                  {"role": "assistant", "content": f"{answer} [1]"}]
    return turns
