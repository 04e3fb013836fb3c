import json
import logging
import pickle

import pytest

from acculturate.data import DataError, Example, read_examples, write_examples


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path, rows):
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# --- reading good files -----------------------------------------------------------------------


def test_reads_shipped_alpaca_json_list(data_dir):
    examples = read_examples(data_dir / "instructions" / "instruction-data.json")
    assert len(examples) == 1100
    first = examples[0]
    assert first.meta["instruction"] == "Evaluate the following phrase by transforming it into the spelling given."
    assert first.meta["input"] == "freind --> friend"
    assert first.messages[0]["content"] == first.meta["instruction"] + "\n\nfreind --> friend"
    assert first.response.startswith('The spelling of the given phrase "freind" is incorrect')


def test_alpaca_jsonl_optional_input_and_extra_fields_to_meta(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Add 2 and 3.", "output": "5", "id": 7},
        {"instruction": "Translate.", "input": "Halo", "output": "Hello", "input_lang": "id"},
        "",  # blank lines are fine
    ])
    a, b = read_examples(path)
    assert a.messages[0]["content"] == "Add 2 and 3."
    assert a.meta == {"id": 7, "instruction": "Add 2 and 3.", "input": ""}
    assert b.messages[0]["content"] == "Translate.\n\nHalo"
    assert b.meta["input_lang"] == "id"


def test_chat_jsonl_and_roundtrip_through_write_examples(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "You are from Jakarta."},
                      {"role": "user", "content": "Breakfast?"},
                      {"role": "assistant", "content": "Nasi uduk."}], "source": "hand"},
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                      {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
         "meta": {"id": 2}},
    ]
    examples = read_examples(jsonl(tmp_path / "chat.jsonl", rows))
    assert examples[0].messages == rows[0]["messages"]
    assert examples[0].meta == {"source": "hand"}
    assert examples[1].meta == {"id": 2}
    out = tmp_path / "out" / "again.jsonl"
    write_examples(out, examples + [Example.from_alpaca("I", "x", "O", k=1)])
    again = read_examples(out)
    assert again == examples + [Example.from_alpaca("I", "x", "O", k=1)]
    assert [p.name for p in out.parent.iterdir()] == ["again.jsonl"]  # no temporary file left


def test_auto_detects_chat_in_a_json_list(tmp_path):
    path = write(tmp_path / "c.json", json.dumps([
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ], indent=2))
    (ex,) = read_examples(path)
    assert ex.response == "Hello" and ex.meta == {}


def test_csv_with_column_mapping_and_multiline_cells(tmp_path):
    path = write(tmp_path / "qa.csv", 'question,answer,region\n"Staple food?","Rice",Java\n'
                                      '"Two\nlines","Yes, two",Bali\n')
    a, b = read_examples(path, columns={"instruction": "question", "output": "answer"})
    assert a.messages == [{"role": "user", "content": "Staple food?"}, {"role": "assistant", "content": "Rice"}]
    assert a.meta == {"region": "Java", "instruction": "Staple food?", "input": ""}
    assert b.messages[0]["content"] == "Two\nlines" and b.response == "Yes, two"


def test_shipped_nusax_csv_as_translation_pairs(data_dir):
    examples = read_examples(data_dir / "nusax" / "valid.csv",
                             columns={"instruction": "indonesian", "output": "english"})
    assert len(examples) == 100
    assert examples[0].response.startswith("If you have further questions")
    assert "javanese" in examples[0].meta and "column0" in examples[0].meta


def test_allow_no_response_for_prompt_only_data(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(DataError, match="'assistant' as the last message"):
        read_examples(path)
    (ex,) = read_examples(path, allow_no_response=True)
    assert ex.response is None
    (ex,) = read_examples(jsonl(tmp_path / "q.jsonl", [{"instruction": "Q"}]), allow_no_response=True)
    assert ex.messages == [{"role": "user", "content": "Q"}]


# --- named errors -----------------------------------------------------------------------------


def test_wrong_type_message_names_file_line_field(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 42}])
    with pytest.raises(DataError) as info:
        read_examples(path)
    err = info.value
    assert str(err) == f"{path}:2: field 'output': expected a string, got int (42)"
    assert (err.path, err.line, err.field, err.expected) == (str(path), 2, "output", "a string")
    assert isinstance(err, ValueError)


def test_malformed_json_line(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b"}, "", '{"instruction": "a", "output": '])
    with pytest.raises(DataError, match=r"x\.jsonl:3: expected one JSON object per line, got malformed JSON"):
        read_examples(path)


def test_missing_field(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"instruction": "a"}])
    with pytest.raises(DataError, match=r"x\.jsonl:1: field 'output': expected a non-empty string, got nothing"):
        read_examples(path)


def test_missing_mapped_field_is_named_by_its_file_name(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"question": "a", "reply": "b"}])
    with pytest.raises(DataError) as info:
        read_examples(path, columns={"instruction": "question", "output": "answer"})
    assert info.value.field == "answer"


def test_unknown_role_and_bad_content(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]},
    ])
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert info.value.field == "messages[1].role" and info.value.line == 1
    assert "one of 'system', 'user', 'assistant'" in str(info.value) and "str ('bot')" in str(info.value)
    path = jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": ["Hi"]}]}])
    with pytest.raises(DataError, match=r"field 'messages\[0\].content': expected a string, got list"):
        read_examples(path, format="chat")


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path / "e.jsonl", text)
    with pytest.raises(DataError, match=r"e\.jsonl: expected at least one example, got an empty file"):
        read_examples(path)


def test_json_list_errors_carry_the_element_line(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, {"instruction": "e"}]
    path = write(tmp_path / "l.json", json.dumps(rows, indent=4))
    # indent=4: '[' then 4 lines per element, so element k starts on line 2 + 4k
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert (info.value.line, info.value.field) == (10, "output")


def test_json_list_syntax_error_line(tmp_path):
    path = write(tmp_path / "l.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]')
    with pytest.raises(DataError, match=r"l\.json:3: expected valid JSON, got malformed JSON"):
        read_examples(path)


def test_csv_errors(tmp_path):
    path = write(tmp_path / "q.csv", "question,answer\nq1,a1\n")
    with pytest.raises(DataError, match=r"q\.csv:1: field 'instruction': expected a column named 'instruction'"):
        read_examples(path)
    with pytest.raises(DataError, match=r"q\.csv:1: field 'reply': expected a column named 'reply'"):
        read_examples(path, columns={"instruction": "question", "output": "reply"})
    path = write(tmp_path / "r.csv", 'question,answer\nq1,a1\n"q\n2",a2,extra\nq3,\n')
    with pytest.raises(DataError, match=r"r\.csv:3: expected 2 fields as in the header, got 3 fields"):
        read_examples(path, columns={"instruction": "question", "output": "answer"})
    errors = []
    examples = read_examples(path, columns={"instruction": "question", "output": "answer"},
                             skip_invalid=True, errors=errors)
    assert [e.response for e in examples] == ["a1"]
    assert [(e.line, e.field) for e in errors] == [(3, None), (5, "answer")]  # the quoted cell spans 3-4


def test_skip_invalid_collects_errors_and_warns(tmp_path, caplog):
    path = jsonl(tmp_path / "x.jsonl", [
        {"instruction": "a", "output": "b"}, "not json", {"instruction": 1, "output": "c"},
        [1, 2], {"instruction": "d", "output": "e"},
    ])
    errors = []
    with caplog.at_level(logging.WARNING, logger="acculturate.data.formats"):
        examples = read_examples(path, skip_invalid=True, errors=errors)
    assert [e.response for e in examples] == ["b", "e"]
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "instruction"), (4, None)]
    assert "skipped 3 invalid record(s) of 5" in caplog.text


def test_skip_invalid_with_nothing_valid_still_fails(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"instruction": "a"}])
    with pytest.raises(DataError, match="expected at least one valid example, got none"):
        read_examples(path, skip_invalid=True)


def test_bad_arguments_and_pickling():
    with pytest.raises(ValueError, match="format"):
        read_examples("x.jsonl", format="yaml")
    with pytest.raises(ValueError, match="columns"):
        read_examples("x.jsonl", columns={"question": "q"})
    err = DataError("d.jsonl", 3, "output", "a string", "int (1)")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "d.jsonl:3: field 'output': expected a string, got int (1)"
    assert str(DataError("d.jsonl", None, None, "x", "y")) == "d.jsonl: expected x, got y"


def test_meta_weight_is_checked_with_file_line_and_field(tmp_path):
    path = tmp_path / "weighted.jsonl"
    path.write_text('{"instruction": "a", "output": "b", "weight": 2}\n'
                    '{"instruction": "c", "output": "d", "meta": {"weight": "heavy"}}\n')
    with pytest.raises(DataError, match=r"weighted.jsonl:2: field 'meta.weight': expected a finite number >= 0"):
        read_examples(path)
    path.write_text('{"instruction": "a", "output": "b", "weight": 2}\n')
    [example] = read_examples(path)
    assert example.meta["weight"] == 2
