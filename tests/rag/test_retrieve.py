import pytest

from acculturate.rag import IndexConfig, RetrieveConfig, open_index, retrieve, rrf, update_index
from acculturate.rag.metrics import mean_reciprocal_rank, recall_at_k
from acculturate.rag.retrieve import matches


def test_rrf_matches_hand_computed_scores():
    # dense: a b c ; bm25: c a d   (k = 60)
    fused = dict(rrf([["a", "b", "c"], ["c", "a", "d"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [key for key, _ in rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)] == ["a", "c", "b", "d"]
    # k = 0: x and z score 1/1, y scores 1/2 + 1/2 = 1 too: ties keep the order first seen.
    assert rrf([["x", "y"], ["z", "y"]], k=0) == [("x", 1.0), ("y", 1.0), ("z", 1.0)]
    assert rrf([[], []]) == []


def test_recall_and_mrr_on_hand_values():
    rankings = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    relevant = [{"b"}, {"f", "x"}, {"z"}]
    assert recall_at_k(rankings, relevant, 1) == 0.0
    assert recall_at_k(rankings, relevant, 2) == pytest.approx(1 / 3)
    assert recall_at_k(rankings, relevant, 3) == pytest.approx(2 / 3)
    assert mean_reciprocal_rank(rankings, relevant) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        recall_at_k(rankings, relevant[:2], 1)


def test_metadata_filter_semantics():
    meta = {"region": "North_Korea", "lang": "en"}
    assert matches(meta, {"region": "north korea"})
    assert matches(meta, {"region": ["Spain", "North Korea"], "lang": "EN"})
    assert not matches(meta, {"region": "South Korea"})
    assert not matches(meta, {"topic": "food"})  # a field the passage lacks


@pytest.fixture
def index(docs, tmp_path, fake_embedder):
    update_index([docs], tmp_path / "ix", IndexConfig(), progress=False, embedder=fake_embedder)
    return open_index(tmp_path / "ix")


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_keep_only_matching_passages(index, fake_embedder, mode):
    hits = retrieve(index, "food dinner eaten", RetrieveConfig(k=5, mode=mode, filters={"region": "Spain"}),
                    fake_embedder)
    assert hits and all(h.passage["meta"]["region"] == "Spain" for h in hits)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    none = retrieve(index, "food", RetrieveConfig(k=5, mode=mode, filters={"region": "Peru"}), fake_embedder)
    assert none == []


def test_hybrid_fuses_both_rankings(index, fake_embedder):
    hits = retrieve(index, "tomato fight in August", RetrieveConfig(k=3), fake_embedder)
    top = hits[0]
    assert "Tomatina" in top.passage["text"]
    assert top.dense_rank is not None and top.bm25_rank is not None
    assert top.score == pytest.approx(1 / (60 + top.dense_rank) + 1 / (60 + top.bm25_rank))
    # BM25 alone returns only passages sharing a word with the query.
    assert retrieve(index, "zzzz qqqq", RetrieveConfig(k=3, mode="bm25"), fake_embedder) == []


def test_dense_rerank_orders_by_cosine(index, fake_embedder):
    hits = retrieve(index, "fireworks bonfires November", RetrieveConfig(k=4, rerank="dense"), fake_embedder)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([h.dense_score for h in hits])


def test_bad_retrieval_settings_name_the_field():
    for kwargs, field in [({"k": 0}, "k"), ({"mode": "sparse"}, "mode"), ({"k": 10, "candidates": 5}, "candidates"),
                          ({"rerank": "cross-encoder"}, "reranker")]:
        with pytest.raises(ValueError, match=field):
            RetrieveConfig(**kwargs)
