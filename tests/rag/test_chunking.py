import pytest

from acculturate.rag.chunking import ChunkConfig, chunk_document, chunk_section, overlap_tail, split_long
from acculturate.rag.ingest import Block, Document


def words(text):
    return text.split()


def test_short_paragraphs_pack_into_one_passage():
    assert chunk_section(["One two.", "Three four."], ChunkConfig(max_chars=100, overlap_chars=10)) == \
        ["One two.\n\nThree four."]


def test_every_passage_respects_the_bound_and_starts_with_the_previous_tail():
    sentences = [f"Sentence number {i} says something about topic {i % 7}." for i in range(40)]
    paragraphs = [" ".join(sentences[i:i + 5]) for i in range(0, 40, 5)]
    config = ChunkConfig(max_chars=200, overlap_chars=50)
    passages = chunk_section(paragraphs, config)
    assert len(passages) > 5
    assert all(len(p) <= 200 for p in passages)
    for prev, nxt in zip(passages, passages[1:]):
        tail = overlap_tail(prev, 50)
        assert tail and nxt.startswith(tail) and len(tail) <= 50
    # Nothing is lost: every sentence is whole in some passage.
    assert all(any(s in p for p in passages) for s in sentences)


def test_no_overlap_means_a_partition_of_the_words():
    paragraphs = ["alpha beta gamma delta. " * 20, "epsilon zeta eta. " * 15]
    passages = chunk_section(paragraphs, ChunkConfig(max_chars=120, overlap_chars=0))
    assert [w for p in passages for w in words(p)] == [w for p in paragraphs for w in words(p)]


def test_sections_are_never_joined_and_overlap_does_not_cross_them():
    doc = Document("d.md", "Doc", [Block("First section text.", "A"), Block("More of A.", "A"),
                                   Block("Second section text.", "B")])
    chunks = chunk_document(doc, ChunkConfig(max_chars=300, overlap_chars=100))
    assert [(c.heading, c.text) for c in chunks] == [("A", "First section text.\n\nMore of A."),
                                                     ("B", "Second section text.")]
    assert [c.position for c in chunks] == [0, 1]
    assert chunks[1].indexed_text == "Doc > B\nSecond section text."


def test_a_word_longer_than_a_passage_is_cut_hard():
    pieces = split_long("short " + "x" * 130 + " end", 50)
    assert all(len(p) <= 50 for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("short", "").replace("end", "") == "x" * 130


def test_overlap_tail_starts_at_a_word_boundary():
    assert overlap_tail("the quick brown fox jumps", 11) == "fox jumps"
    assert overlap_tail("the quick brown fox jumps", 10) == "fox jumps"
    assert overlap_tail("the quick brown fox jumps", 8) == "jumps"
    assert overlap_tail("abc", 10) == "abc"
    assert overlap_tail("abcdefghijkl", 5) == ""
    # Whole sentences are preferred to a longer mid-sentence tail.
    assert overlap_tail("First one. Second sentence here. Third.", 25) == "Third."
    assert overlap_tail("First one. Second sentence here. Third.", 40) == "First one. Second sentence here. Third."
    assert overlap_tail("First one. Second sentence here. Third.", 35) == "Second sentence here. Third."


@pytest.mark.parametrize("kwargs, field", [({"max_chars": 10}, "max_chars"),
                                           ({"max_chars": 100, "overlap_chars": 60}, "overlap_chars")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ChunkConfig(**kwargs)
