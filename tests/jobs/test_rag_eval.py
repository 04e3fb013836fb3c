"""The BLEnD document set of `acculturate rag eval` (construction only; the run itself is the example)."""

from pathlib import Path

import pytest

from acculturate.config_loading import ConfigError, load_yaml
from acculturate.jobs.rag_eval import RagEvalConfig, answer_paragraph, blend_documents, question_without_country
from acculturate.rag.ingest import read_document

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rag_blend" / "config.yaml"


def test_the_example_config_loads():
    config = load_yaml(RagEvalConfig, EXAMPLE)
    assert config.answer_sample and config.modes == ["dense", "bm25", "hybrid"]
    with pytest.raises(ConfigError, match="modes"):
        load_yaml(RagEvalConfig, EXAMPLE, ["modes=[sparse]"])


def test_the_country_leaves_the_question():
    assert question_without_country("What is the most popular fruit in Algeria?", "Algeria") == \
        "What is the most popular fruit?"
    assert question_without_country("What do people in the UK eat for breakfast?", "UK") == \
        "What do people eat for breakfast?"
    assert question_without_country("How long is Algeria's maternity leave?", "Algeria") == \
        "How long is the country's maternity leave?"
    groups = [{"answers": ["dates"], "count": 2}, {"answers": ["orange", "oranges"], "count": 5}, {"answers": [], "count": 1}]
    assert answer_paragraph("What is the most popular fruit in Algeria?", "Algeria", groups) == (
        "What is the most popular fruit? Most common answer: orange / oranges (5 of 7 annotators). Other answers: dates.",
        "What is the most popular fruit? Most common answer: orange / oranges (5 of 7 annotators).")


def test_one_document_per_country_and_one_target_paragraph_per_question(tmp_path):
    targets = blend_documents(tmp_path, ["UK", "North_Korea"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["North_Korea.md", "UK.md"]
    [doc] = read_document(tmp_path / "North_Korea.md")
    assert doc.meta["region"] == "North Korea" and doc.title == "Everyday culture in North Korea"
    assert all(b.heading.endswith(" in North Korea") for b in doc.blocks)
    texts = [b.text for b in doc.blocks]
    nk = [t for t in targets if t["country"] == "North_Korea"]
    assert len(nk) == len(texts) and all(texts.count(t["paragraph"]) == 1 for t in nk)
    # Targets carry the gold answers, and the question text no longer names the country.
    assert all(t["answers"] for t in targets)
    assert sum("North Korea" in t["paragraph"] for t in nk) < len(nk) * 0.05
