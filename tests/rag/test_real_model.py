"""End to end on the real models: all-MiniLM-L6-v2 embeddings (the shipped wheel) and the default
generator, on a few small documents written here."""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")
pytest.importorskip("bm25s")

pytestmark = pytest.mark.slow

DOCS = {
    "uk.md": "---\nregion: UK\n---\n# Customs in the United Kingdom\n\n## Bonfire Night\n\n"
             "On the 5th of November people light bonfires and set off fireworks to remember the "
             "Gunpowder Plot of 1605.\n\n## Food\n\nFish and chips is the classic takeaway, often eaten on Fridays.\n",
    "spain.md": "---\nregion: Spain\n---\n# Customs in Spain\n\n## Meals\n\nDinner is eaten late, usually after "
                "nine in the evening.\n\n## Festivals\n\nLa Tomatina is a huge tomato fight held in Bunol every August.\n",
    "mexico.md": "---\nregion: Mexico\n---\n# Customs in Mexico\n\n## Holidays\n\nOn the Day of the Dead families "
                 "build altars with marigolds and sugar skulls to honour relatives who have died.\n",
}


@pytest.fixture(scope="module")
def rag_index(tmp_path_factory):
    from acculturate.rag import IndexConfig, open_index, update_index

    root = tmp_path_factory.mktemp("rag")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    update_index([root / "docs"], root / "index", IndexConfig(), progress=False)
    return open_index(root / "index")


def test_dense_retrieval_finds_the_paraphrased_passage(rag_index):
    from acculturate.rag import RetrieveConfig, retrieve

    # No content word in common with the passage: only the embedding can find it.
    hits = retrieve(rag_index, "How do people honour deceased relatives?", RetrieveConfig(k=2, mode="dense"))
    assert "Day of the Dead" in hits[0].passage["text"]
    assert hits[0].dense_score > hits[1].dense_score
    hybrid = retrieve(rag_index, "When are fireworks set off in Britain?", RetrieveConfig(k=1))
    assert "Gunpowder" in hybrid[0].passage["text"]
    spain_only = retrieve(rag_index, "fireworks", RetrieveConfig(k=5, filters={"region": "Spain"}))
    assert spain_only and {h.passage["meta"]["region"] for h in spain_only} == {"Spain"}


def test_ask_answers_from_the_passages_and_returns_citations(rag_index, default_model):
    from acculturate.rag import AskConfig, RetrieveConfig, ask

    model, tokenizer = default_model
    result = ask("What do families build for the Day of the Dead?", rag_index, model, tokenizer,
                 AskConfig(retrieve=RetrieveConfig(k=2), max_new_tokens=32))
    assert "[1] Customs in Mexico > Holidays\n" in result.prompt
    assert result.answer
    assert [p["number"] for p in result.passages] == [1, 2]
    assert "Day of the Dead" in result.passages[0]["text"]
    # The model read the passage: its answer names what the passage says families build with, and
    # the citation (named or inferred from the copied words) is the Mexican passage.
    assert any(w in result.answer.lower() for w in ("altar", "marigold", "sugar skull"))
    assert result.citations and result.citations[0]["number"] == 1 and result.citations[0]["how"] in ("cited", "inferred")


def test_rag_strategy_filters_by_the_questions_region(rag_index, default_model):
    from acculturate.prompting import load_task, run_strategy

    model, tokenizer = default_model
    task = load_task("blend", countries=["UK"])
    example = task.question_example("What food is eaten on Fridays?", region="UK")
    result = run_strategy("rag", model, tokenizer, task, example,
                          {"index": str(rag_index.path), "k": 2, "max_new_tokens": 16})
    sources = [p["source"] for p in result.extra["passages"]]
    assert sources and all(s.endswith("uk.md") for s in sources)
    assert "Passages:" in result.trace.calls[0].prompt and result.answer
    assert result.trace.events[0]["filters"] == {"region": "UK"}


def test_cli_index_search_and_errors(tmp_path, capsys, rag_index):
    import json

    from acculturate.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "mexico.md").write_text(DOCS["mexico.md"], encoding="utf-8")
    where = str(tmp_path / "ix")
    assert main(["rag", "index", str(docs), "--index", where]) == 0
    assert "1 passages; files added 1" in capsys.readouterr().out
    assert main(["rag", "index", str(docs), "--index", where]) == 0
    assert "unchanged 1; embedded 0" in capsys.readouterr().out
    assert main(["rag", "search", "marigolds", "--index", where, "-k", "1", "--json"]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert "Day of the Dead" in hit["text"] and hit["meta"]["region"] == "Mexico"
    assert main(["rag", "search", "x", "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["rag", "index", str(docs), "--index", where, "--max-chars", "300"]) == 2
    assert "--rebuild" in capsys.readouterr().err
    (docs / "bad.jsonl").write_text('{"text": 3}\n')
    assert main(["rag", "index", str(docs), "--index", where]) == 2
    assert "bad.jsonl:1: field 'text': expected a non-empty string" in capsys.readouterr().err


def test_cross_encoder_rerank_orders_the_candidates_by_the_models_scores(rag_index):
    """The cross-encoder path with a real sentence-transformers CrossEncoder. None ships offline, so
    it is all-MiniLM-L6-v2's encoder with a fresh one-logit head: its scores carry no meaning here,
    but the path is the real one (load, predict on (query, passage) pairs, reorder)."""
    from acculturate.models.embedding import embedder_path
    from acculturate.rag import RetrieveConfig, retrieve
    from acculturate.rag.retrieve import load_cross_encoder

    path = embedder_path()
    query = "When do people set off fireworks in Britain?"
    fused = retrieve(rag_index, query, RetrieveConfig(k=20, candidates=20))
    reranked = retrieve(rag_index, query, RetrieveConfig(k=20, candidates=20, rerank="cross-encoder", reranker=path))
    assert {h.passage["id"] for h in reranked} == {h.passage["id"] for h in fused}   # same candidates
    model = load_cross_encoder(path)   # the cached instance retrieve used
    expected = model.predict([(query, h.passage["indexed_text"]) for h in reranked], show_progress_bar=False)
    assert [h.score for h in reranked] == pytest.approx([float(s) for s in expected], rel=1e-5, abs=1e-6)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
