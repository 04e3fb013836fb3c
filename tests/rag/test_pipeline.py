from acculturate.rag.pipeline import format_passages, parse_citations, passages_turn
from acculturate.rag.retrieve import Hit


def test_citation_forms():
    assert parse_citations("Paella [2].", 3) == [2]
    assert parse_citations("See [1, 3] and [2][1].", 3) == [1, 3, 2]
    assert parse_citations("Both [1-3] apply", 3) == [1, 2, 3]
    assert parse_citations("[1; 2] and [2 and 3]", 3) == [1, 2, 3]
    assert parse_citations("Invented [7] and [0]", 3) == []
    assert parse_citations("A range [1-999] is no citation; [x] neither; (1) neither", 3) == []
    assert parse_citations("No citation here.", 3) == []


def hit(text, heading="Food", title="Spain"):
    return Hit({"id": "x", "text": text, "heading": heading, "title": title, "source": "s.md", "meta": {}}, 1.0, 1)


def test_prompt_numbers_passages_with_their_context():
    block = format_passages([hit("Paella."), hit("Siesta.", heading="", title="Notes")])
    assert block == "[1] Spain > Food\nPaella.\n\n[2] Notes\nSiesta."
    turn = passages_turn("What is eaten?", [hit("Paella.")])
    assert turn.startswith("Passages:\n\n[1] Spain > Food\nPaella.") and turn.endswith("Question: What is eaten?")
    assert passages_turn("Q?", []) == "Q?"
    long = format_passages([hit("word " * 100)], max_chars=30)
    assert len(long) < 60 and long.endswith("...")


def test_citations_are_inferred_when_the_answer_names_none():
    from acculturate.rag.pipeline import cited, infer_citations

    hits = [hit("Fish and chips is eaten on Fridays."), hit("Families build altars with marigolds."),
            hit("Altars and candles.")]
    # New content words {altars, marigolds}: passage 2 holds 2/2, passage 3 1/2, passage 1 none.
    assert infer_citations("They build altars with marigolds.", hits, "What do families build?") == [2, 3]
    assert infer_citations("They build altars with marigolds.", hits, "What do families build?", 0.6) == [2]
    assert infer_citations("Altars, candles", hits) == [3, 2]
    assert infer_citations("What do families build?", hits, "What do families build?") == []  # adds nothing
    cites, shown = cited("Altars with marigolds [3].", hits)
    assert [(c["number"], c["how"]) for c in cites] == [(3, "cited")] and len(shown) == 3
    cites, _ = cited("Marigolds.", hits)
    assert [(c["number"], c["how"]) for c in cites] == [(2, "inferred")]
