"""The one reader of users' JSON-lines files: every bad line is named by file and line."""

import pytest

from acculturate.data import DataError
from acculturate.data.jsonl import read_jsonl_objects, text_field


def test_rows_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl_objects(path) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}\n{"a": \n', r"rows.jsonl:2: expected one JSON object per line, got malformed JSON"),
    ('{"a": 1}\n[1, 2]\n', r"rows.jsonl:2: expected a JSON object, got list"),
    (b'{"a": 1}\n{"a": "\xff"}\n', r"rows.jsonl:2: expected UTF-8 text, got undecodable bytes"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError, match=message):
        read_jsonl_objects(path)


def test_a_byte_order_mark_is_accepted_when_asked(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_jsonl_objects(path, encoding="utf-8-sig") == [(1, {"a": 1})]


def test_text_field_names_the_field_and_what_was_there():
    assert text_field("f.jsonl", 3, {"text": "hi"}, "text") == "hi"
    with pytest.raises(DataError, match=r"f.jsonl:3: field 'text': expected a non-empty string, got nothing"):
        text_field("f.jsonl", 3, {}, "text")
    with pytest.raises(DataError, match=r"f.jsonl:3: field 'text': expected a non-empty string, got"):
        text_field("f.jsonl", 3, {"text": "  "}, "text")
    assert text_field("f.jsonl", 3, {"text": ""}, "text", allow_empty=True) == ""
