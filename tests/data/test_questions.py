"""A region's question file: the formats read, and errors that name file, line and field."""

import json

import pytest

from acculturate.data import DataError
from acculturate.data.questions import MIN_QUESTIONS, read_questions


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good(n=MIN_QUESTIONS):
    return [{"question": f"What is dish {i}?", "answers": [f"dish {i}", "stew"], "topic": "Food"} for i in range(n)]


def test_answer_lists_become_blend_like_examples(tmp_path):
    examples = read_questions(write(tmp_path / "q.jsonl", good()))
    ex = examples[3]
    assert ex.meta["question"] == "What is dish 3?" and ex.meta["answers"] == ["dish 3", "stew"]
    assert ex.meta["topic"] == "Food" and ex.meta["id"] == "q4"
    assert ex.messages[-1] == {"role": "assistant", "content": "dish 3"}


@pytest.mark.parametrize("row, field", [
    ({"answers": ["x"]}, "question"),
    ({"question": "Why?", "answers": []}, "answers"),
    ({"question": "Why?", "answers": [" "]}, "answers"),
    ({"question": "Why?", "answers": ["ok", 3]}, "answers"),
    ({"question": "Why?", "answers": ["ok"], "topic": 5}, "topic"),
])
def test_a_bad_row_names_file_line_and_field(tmp_path, row, field):
    path = write(tmp_path / "q.jsonl", good()[:5] + [row] + good()[5:])
    with pytest.raises(DataError) as e:
        read_questions(path)
    assert e.value.line == 6 and e.value.field == field and "q.jsonl" in str(e.value)


def test_a_tiny_or_duplicated_set_is_refused(tmp_path):
    with pytest.raises(DataError, match=f"at least {MIN_QUESTIONS} questions"):
        read_questions(write(tmp_path / "q.jsonl", good(5)))
    rows = [{**r, "id": "same"} for r in good()]
    with pytest.raises(DataError, match="unique"):
        read_questions(write(tmp_path / "d.jsonl", rows))


def test_csv_with_a_column_map_is_read_too(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("q,a\n" + "".join(f"What is {i}?,{i}\n" for i in range(MIN_QUESTIONS)))
    examples = read_questions(path, columns={"instruction": "q", "output": "a"})
    assert examples[0].meta["question"] == "What is 0?" and examples[0].meta["answers"] == ["0"]
