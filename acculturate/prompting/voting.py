"""Majority vote over sampled answers (Wang et al., 2023, self-consistency)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence


def majority_vote(answers: Sequence[Any], key: Callable[[Any], str] = str) -> tuple[Any, dict[str, int]]:
    """The most frequent answer and the vote distribution.

    Args:
        answers: one extracted answer per sample; None (no answer found) casts no vote.
        key: maps an answer to its vote key (``17.0`` and ``17`` share one).

    Returns:
        (winner, {key: votes}) with the distribution sorted by votes, then by first appearance.
        The winner is the first answer that got the most votes (ties go to the earliest sample,
        so the result is deterministic); None when no sample gave an answer.
    """
    keys = [None if a is None else key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, {}
    first_seen = {}
    for i, k in enumerate(keys):
        if k is not None:
            first_seen.setdefault(k, i)
    ranking = sorted(counts, key=lambda k: (-counts[k], first_seen[k]))
    winner = answers[first_seen[ranking[0]]]
    return winner, {k: counts[k] for k in ranking}
