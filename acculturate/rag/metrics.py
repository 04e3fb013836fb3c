"""Retrieval metrics over ranked results: recall@k and mean reciprocal rank (MRR).

Each query has a set of relevant passage keys and a ranking (best first). recall@k is the share of
queries with at least one relevant passage in the first k (with one target per query, as in the
BLEnD evaluation, this is the usual hit rate); MRR is the mean over queries of 1 / the rank of the
first relevant passage (0 when none is retrieved; Voorhees, TREC-8 QA, 1999).
"""

from __future__ import annotations


def first_relevant_rank(ranking: list, relevant: set) -> int | None:
    """1-based rank of the first relevant key in ``ranking``, None when there is none."""
    for rank, key in enumerate(ranking, 1):
        if key in relevant:
            return rank
    return None


def recall_at_k(rankings: list[list], relevant: list[set], k: int) -> float:
    """Share of queries whose first ``k`` results hold a relevant key."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance sets")
    if not rankings:
        return 0.0
    hits = sum(1 for r, rel in zip(rankings, relevant) if (first_relevant_rank(r[:k], rel) is not None))
    return hits / len(rankings)


def mean_reciprocal_rank(rankings: list[list], relevant: list[set]) -> float:
    """Mean of 1/rank of the first relevant key (0 for a query with none retrieved)."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance sets")
    if not rankings:
        return 0.0
    total = 0.0
    for r, rel in zip(rankings, relevant):
        rank = first_relevant_rank(r, rel)
        total += 1.0 / rank if rank else 0.0
    return total / len(rankings)
