"""Nearest questions by meaning, for choosing few-shot exemplars (Liu et al., 2022, "What Makes Good
In-Context Examples for GPT-3?": exemplars similar to the question beat random ones).

Embeddings come from :mod:`acculturate.models.embedding` (all-MiniLM-L6-v2 by default).
"""

from __future__ import annotations

from acculturate.models.embedding import embed


def nearest(query: str, texts: list[str], k: int, cache: dict | None = None, embedder=None) -> list[int]:
    """Indices of the ``k`` texts most similar to ``query``, most similar first.

    Args:
        query: the question.
        texts: candidate texts.
        k: how many to return (fewer when there are fewer texts).
        cache: a dict where the candidates' embeddings are kept between calls (keyed by the texts).
        embedder: a sentence-transformers model; default: :func:`acculturate.models.embedding.load_embedder`'s.
    """
    key = ("embeddings", tuple(texts))
    matrix = cache.get(key) if cache is not None else None
    if matrix is None:
        matrix = embed(texts, embedder)                                  # (N, D)
        if cache is not None:
            cache[key] = matrix
    q = embed([query], embedder)                                         # (1, D)
    scores = (matrix @ q.T).squeeze(1)                                   # (N,)
    # Stable order for equal scores: the earlier text wins.
    order = sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))
    return order[:k]
