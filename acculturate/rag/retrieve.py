"""Hybrid retrieval: dense (embeddings) and BM25 rankings fused by reciprocal rank, filtered on
metadata, optionally re-ranked.

Reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): a passage's fused score is
``sum over rankings of 1 / (rrf_k + rank)`` with ranks from 1; ``rrf_k = 60`` is the paper's value.
It needs no score calibration between the two retrievers, which is why it is the default.

Re-ranking (``rerank``) reorders the fused candidates: ``"dense"`` by their exact cosine similarity
to the query (no extra model); ``"cross-encoder"`` with a sentence-transformers CrossEncoder from
``reranker`` (a local model directory: no cross-encoder ships offline with acculturate, so this
needs one you provide).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from acculturate.rag.index import Index, bm25_tokens

MODES = ("hybrid", "dense", "bm25")
RERANKERS = ("none", "dense", "cross-encoder")


@dataclass
class RetrieveConfig:
    """How passages are found for a query."""

    k: int = 4
    """Passages returned."""
    mode: str = "hybrid"
    """'hybrid' (dense + BM25, fused), 'dense' or 'bm25'."""
    candidates: int = 50
    """Passages each retriever contributes to the fusion."""
    rrf_k: int = 60
    """Reciprocal-rank fusion constant."""
    rerank: str = "none"
    """'none', 'dense' or 'cross-encoder' (needs `reranker`)."""
    reranker: str | None = None
    """A local sentence-transformers CrossEncoder directory."""
    filters: dict = field(default_factory=dict)
    """Metadata that passages must match, e.g. {region: UK}."""

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k: expected >= 1, got {self.k}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.candidates < self.k:
            raise ValueError(f"candidates: expected >= k ({self.k}), got {self.candidates}")
        if self.rrf_k < 0:
            raise ValueError(f"rrf_k: expected >= 0, got {self.rrf_k}")
        if self.rerank not in RERANKERS:
            raise ValueError(f"rerank: expected one of {RERANKERS}, got {self.rerank!r}")
        if self.rerank == "cross-encoder" and not self.reranker:
            raise ValueError("reranker: rerank 'cross-encoder' needs a local CrossEncoder model directory "
                             "(none ships with acculturate)")
        if not isinstance(self.filters, dict):
            raise ValueError(f"filters: expected a mapping of metadata field to value(s), got {self.filters!r}")


@dataclass
class Hit:
    """A retrieved passage.
        dense_rank, bm25_rank: its rank in each retriever's list (None when not among its candidates).
        dense_score: cosine similarity to the query (None in bm25 mode).
    """

    passage: dict
    """The stored passage (``id``, ``text``, ``title``, ``heading``, ``source``, ``meta``)."""
    score: float
    """The score it was ranked by (fused, dense cosine or cross-encoder logit)."""
    rank: int
    """1-based position in the result."""
    dense_rank: int | None = None
    bm25_rank: int | None = None
    dense_score: float | None = None


def rrf(rankings: list[list], k: int = 60) -> list[tuple[object, float]]:
    """Reciprocal-rank fusion of ranked lists of keys (best first): ``[(key, score)]`` best first;
    ties keep the order in which keys were first seen."""
    scores: dict = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    order = {key: i for i, key in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def _norm(value) -> str:
    return str(value).strip().lower().replace("_", " ")


def matches(meta: dict, filters: dict) -> bool:
    """Whether metadata satisfies every filter: equal to the value, or to one of a list of values;
    strings compare case-insensitively with ``_`` as a space (``North_Korea`` = ``north korea``)."""
    for name, wanted in filters.items():
        if name not in meta:
            return False
        options = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        if _norm(meta[name]) not in {_norm(o) for o in options}:
            return False
    return True


_MISSING = "\x00missing"


def _meta_column(index: Index, name: str) -> np.ndarray:
    """Every passage's normalized value of metadata field ``name``, computed once per opened index
    (a per-query Python loop over the passages cost ~250 ms at 25k passages; see docs/benchmarks.md)."""
    key = ("meta", name)
    if key not in index.cache:
        index.cache[key] = np.array([_norm(p["meta"][name]) if name in p["meta"] else _MISSING
                                     for p in index.passages], dtype=object)
    return index.cache[key]


def allowed_ids(index: Index, filters: dict) -> np.ndarray | None:
    """Positions of the passages that pass ``filters`` (None: no filter); same rules as :func:`matches`."""
    if not filters:
        return None
    mask = np.ones(len(index), dtype=bool)
    for name, wanted in filters.items():
        options = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        mask &= np.isin(_meta_column(index, name), [_norm(o) for o in options])
    return np.flatnonzero(mask).astype(np.int64)


def dense_ranking(index: Index, query_vector: np.ndarray, n: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
    """Top ``n`` passage positions by inner product with the (unit) query vector."""
    import faiss

    total = len(index) if allowed is None else len(allowed)
    n = min(n, total)
    if n == 0:
        return []
    params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    scores, ids = index.vectors.search(query_vector.reshape(1, -1).astype(np.float32), n, params=params)
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def bm25_ranking(index: Index, query: str, n: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
    """Top ``n`` passage positions by BM25 score (only passages sharing a word with the query)."""
    if index.bm25 is None or not len(index):
        return []
    vocab = index.bm25.vocab_dict
    tokens = [t for t in bm25_tokens([query])[0] if t in vocab]
    if not tokens:
        return []
    mask = None
    if allowed is not None:
        if not len(allowed):
            return []
        mask = np.zeros(len(index), dtype=np.float32)
        mask[allowed] = 1.0
    docs, scores = index.bm25.retrieve([tokens], k=min(n, len(index)), show_progress=False, weight_mask=mask,
                                       n_threads=1)
    return [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


@functools.lru_cache(maxsize=2)
def load_cross_encoder(path: str, device: str = "cpu"):
    """A sentence-transformers CrossEncoder from a local directory."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, device=device)


def retrieve(index: Index, query: str, config: RetrieveConfig | None = None, embedder=None,
             query_vector: np.ndarray | None = None) -> list[Hit]:
    """The ``config.k`` passages of ``index`` best matching ``query``.

    Args:
        index: an opened index (:func:`acculturate.rag.open_index`).
        query: the question.
        config: mode, k, filters, re-ranking (default ``RetrieveConfig()``).
        embedder: the sentence-transformers model the index was built with (default: load the one
            its manifest names).
        query_vector: the query's unit embedding when already computed (batch evaluation).

    Returns:
        Hits, best first (fewer than k when fewer passages pass the filters).
    """
    from acculturate.models.embedding import embed, load_embedder

    config = config or RetrieveConfig()
    if not query or not query.strip():
        raise ValueError("query: expected a non-empty string")
    allowed = allowed_ids(index, config.filters)
    if query_vector is None and (config.mode != "bm25" or config.rerank == "dense"):
        model = embedder or load_embedder(index.manifest["settings"]["embedder"])
        query_vector = embed([query], model).numpy()[0]
    dense = dense_ranking(index, query_vector, config.candidates, allowed) if config.mode != "bm25" else []
    sparse = bm25_ranking(index, query, config.candidates, allowed) if config.mode != "dense" else []
    dense_rank = {i: r for r, (i, _) in enumerate(dense, 1)}
    bm25_rank = {i: r for r, (i, _) in enumerate(sparse, 1)}
    if config.mode == "hybrid":
        ranked = rrf([[i for i, _ in dense], [i for i, _ in sparse]], config.rrf_k)
    else:
        ranked = dense or sparse
    if config.rerank != "none":
        ranked = _rerank(index, query, query_vector, [i for i, _ in ranked[:config.candidates]], config)
    cosine = {}
    if query_vector is not None:
        top = [i for i, _ in ranked[:config.k]]
        if top:
            cosine = dict(zip(top, (index.vectors.reconstruct_batch(np.array(top, dtype=np.int64)) @ query_vector).tolist()))
    return [Hit(index.passages[i], float(s), r, dense_rank.get(i), bm25_rank.get(i), cosine.get(i))
            for r, (i, s) in enumerate(ranked[:config.k], 1)]


def _rerank(index: Index, query: str, query_vector, ids: list[int], config: RetrieveConfig) -> list[tuple[int, float]]:
    if not ids:
        return []
    if config.rerank == "dense":
        scores = index.vectors.reconstruct_batch(np.array(ids, dtype=np.int64)) @ query_vector
    else:
        model = load_cross_encoder(config.reranker)
        scores = model.predict([(query, index.passages[i]["indexed_text"]) for i in ids], show_progress_bar=False)
    order = sorted(range(len(ids)), key=lambda j: (-float(scores[j]), j))
    return [(ids[j], float(scores[j])) for j in order]
