"""ShareGPT records and columnar containers (Parquet, Arrow, save_to_disk folders), written here with
pyarrow / datasets themselves and read through ``read_examples``."""

import json
import pickle

import pytest

from acculturate.data import DataError, read_examples

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

SHAREGPT = [
    {"conversations": [{"from": "system", "value": "You are from Leeds."},
                       {"from": "human", "value": "Breakfast?"}, {"from": "gpt", "value": "A full English."}],
     "id": 1},
    {"conversations": [{"from": "user", "value": "Q1"}, {"from": "assistant", "value": "A1"},
                       {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}], "id": 2},
]
EXPECTED = [
    [{"role": "system", "content": "You are from Leeds."}, {"role": "user", "content": "Breakfast?"},
     {"role": "assistant", "content": "A full English."}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sharegpt_jsonl_multi_turn_and_meta(tmp_path):
    a, b = read_examples(jsonl(tmp_path / "s.jsonl", SHAREGPT))
    assert [a.messages, b.messages] == EXPECTED
    assert a.meta == {"id": 1} and b.response == "A2"


def test_sharegpt_top_level_system_and_column_and_role_mapping(tmp_path):
    rows = [{"dialog": [{"speaker": "asker", "text": "Tea or coffee?"}, {"speaker": "bot", "text": "Tea."}],
             "prompt": "You are British."}]
    path = jsonl(tmp_path / "other.jsonl", rows)
    (ex,) = read_examples(path, format="sharegpt", roles={"asker": "user", "bot": "assistant"},
                          columns={"conversations": "dialog", "role": "speaker", "content": "text", "system": "prompt"})
    assert ex.messages == [{"role": "system", "content": "You are British."},
                           {"role": "user", "content": "Tea or coffee?"}, {"role": "assistant", "content": "Tea."}]
    assert ex.meta == {}
    with pytest.raises(DataError) as info:   # without the role mapping 'asker' is unknown
        read_examples(path, format="sharegpt", columns={"conversations": "dialog", "role": "speaker", "content": "text"})
    assert (info.value.line, info.value.field) == (1, "dialog[0].speaker")
    assert "'human', 'gpt'" in str(info.value) and "str ('asker')" in str(info.value)
    with pytest.raises(ValueError, match="roles: values"):
        read_examples(path, roles={"bot": "robot"})


def test_sharegpt_bad_records_name_line_and_field(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [SHAREGPT[0], {"conversations": [{"from": "human", "value": 3}]},
                                          {"conversations": [{"from": "human", "value": "Q"}]}])
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert (info.value.line, info.value.field) == (2, "conversations[0].value")
    errors = []
    examples = read_examples(path, skip_invalid=True, errors=errors)
    assert len(examples) == 1
    assert [(e.line, e.field) for e in errors] == [(2, "conversations[0].value"), (3, "conversations[0].from")]
    assert "'assistant' as the last message" in str(errors[1])


def test_parquet_sharegpt_and_alpaca_with_column_mapping(tmp_path):
    pq.write_table(pa.Table.from_pylist(SHAREGPT), tmp_path / "s.parquet")
    assert [ex.messages for ex in read_examples(tmp_path / "s.parquet")] == EXPECTED
    pq.write_table(pa.table({"question": ["Staple food?", "Capital?"], "answer": ["Rice", "Jakarta"],
                             "region": ["Java", "Java"]}), tmp_path / "qa.parquet")
    a, b = read_examples(tmp_path / "qa.parquet", columns={"instruction": "question", "output": "answer"})
    assert a.messages == [{"role": "user", "content": "Staple food?"}, {"role": "assistant", "content": "Rice"}]
    assert a.meta == {"region": "Java", "instruction": "Staple food?", "input": ""} and b.response == "Jakarta"


def test_parquet_errors_name_file_row_and_field(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"instruction": ["ok", "fine", "x"], "output": ["yes", None, "z"]}), path)
    with pytest.raises(DataError) as info:
        read_examples(path)
    err = info.value
    assert (err.path, err.line, err.field, err.unit) == (str(path), 2, "output", "row")
    assert str(err).startswith(f"{path}: row 2: field 'output': expected a non-empty string, got null")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert len(read_examples(path, skip_invalid=True)) == 2
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="expected a Parquet file"):
        read_examples(tmp_path / "junk.parquet")


def test_arrow_ipc_file_and_stream(tmp_path):
    table = pa.Table.from_pylist(SHAREGPT)
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name in ("f.arrow", "s.arrow"):
        assert [ex.messages for ex in read_examples(tmp_path / name)] == EXPECTED


def test_save_to_disk_folders_dataset_and_dataset_dict(tmp_path):
    messages = [{"messages": m} for m in EXPECTED]
    datasets.Dataset.from_list(messages).save_to_disk(str(tmp_path / "one"))
    assert [ex.messages for ex in read_examples(tmp_path / "one")] == EXPECTED
    # datasets' own cache file inside the folder is an Arrow stream: readable alone too
    (arrow,) = (tmp_path / "one").glob("*.arrow")
    assert [ex.messages for ex in read_examples(arrow)] == EXPECTED
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(SHAREGPT),
                               "test": datasets.Dataset.from_list(SHAREGPT[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [ex.messages for ex in read_examples(tmp_path / "dd")] == EXPECTED
    assert len(read_examples(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DataError, match=r"field 'split': expected one of the saved splits \['train', 'test'\]"):
        read_examples(tmp_path / "dd", split="validation")


def test_a_plain_folder_is_refused_with_what_was_expected(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match="folder written by Dataset.save_to_disk"):
        read_examples(tmp_path / "notes")
