"""Property-based tests (Hypothesis) of every data reader and the config loader: whatever the input,
the answer is the data or a named error (DataError / ConfigError naming file, line, field), never
another exception, never a hang (each example has a deadline). Bounded examples keep CI short;
shrunk counterexamples found are kept as plain regression tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acculturate.config_loading import ConfigError, apply_overrides, from_dict, load_yaml
from acculturate.data import DataError, read_examples
from acculturate.data.blend import load_blend
from acculturate.data.jsonl import read_jsonl_objects
from acculturate.data.text import read_documents

SETTINGS = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON values (what a record or a config value may be), a few levels deep.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
field_names = st.sampled_from(["instruction", "input", "output", "messages", "role", "content", "text",
                               "question", "answer", "country", "topic", "annotations", "id", "meta"])
records = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=6)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", 3]),
                                           "content": json_values}), max_size=4)
chat_records = st.fixed_dictionaries({"messages": messages | json_values})
# Raw bytes that look like the formats: lines of JSON-ish text, CSV-ish cells, broken UTF-8.
texts = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list('{}[]",:\n\t\r\\')), max_size=200)
raw_bytes = st.binary(max_size=200) | texts.map(lambda t: t.encode("utf-8"))


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def reads_or_names_the_error(call) -> None:
    try:
        call()
    except DataError as e:
        assert e.path is not None and str(e)


@pytest.fixture
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


@SETTINGS
@given(data=raw_bytes, suffix=st.sampled_from([".json", ".jsonl", ".csv", ".tsv", ".txt"]),
       format=st.sampled_from(["auto", "alpaca", "chat", "csv"]), skip=st.booleans())
def test_read_examples_any_bytes(tmp, data, suffix, format, skip):
    path = write(tmp, "data" + suffix, data)
    reads_or_names_the_error(lambda: read_examples(path, format=format, skip_invalid=skip, allow_no_response=skip))


@SETTINGS
@given(rows=st.lists(records | chat_records, min_size=0, max_size=5), as_array=st.booleans(),
       columns=st.none() | st.dictionaries(st.sampled_from(["instruction", "input", "output", "messages"]),
                                           st.text(min_size=1, max_size=8), max_size=2))
def test_read_examples_any_records(tmp, rows, as_array, columns):
    text = json.dumps(rows) if as_array else "\n".join(json.dumps(r) for r in rows)
    path = write(tmp, "data.json" if as_array else "data.jsonl", text.encode())
    reads_or_names_the_error(lambda: read_examples(path, columns=columns))


@SETTINGS
@given(data=raw_bytes)
def test_jsonl_reader_any_bytes(tmp, data):
    reads_or_names_the_error(lambda: read_jsonl_objects(write(tmp, "x.jsonl", data)))


@SETTINGS
@given(data=raw_bytes, suffix=st.sampled_from([".txt", ".jsonl", ".csv"]), field=st.none() | st.text(max_size=6))
def test_document_reader_any_bytes(tmp, data, suffix, field):
    path = write(tmp, "docs" + suffix, data)
    reads_or_names_the_error(lambda: read_documents(path, field=field))


@SETTINGS
@given(rows=st.lists(records, max_size=4) | st.lists(json_values, max_size=3))
def test_blend_reader_any_rows(tmp, rows):
    path = write(tmp, "blend.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    reads_or_names_the_error(lambda: load_blend(path))


def _config_classes():
    from acculturate.jobs.finetune import FinetuneConfig
    from acculturate.jobs.learn import LearnConfig
    from acculturate.serve import ServeConfig

    return [FinetuneConfig, LearnConfig, ServeConfig]


yaml_texts = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list("{}[]:-&*!|>'\"#%@\n ")),
                     max_size=120)
config_keys = st.sampled_from(["name", "train", "train.lr", "lora.r", "guard.blend_questions", "port", "model",
                               "sft.enabled", "output_filters", "data", "method", "max_n", "api_keys", "learn"])


@SETTINGS
@given(text=yaml_texts, which=st.integers(0, 2))
def test_config_loader_any_yaml(tmp, text, which):
    path = write(tmp, "config.yaml", text.encode("utf-8", "surrogatepass"))
    try:
        load_yaml(_config_classes()[which], path)
    except ConfigError as e:
        assert str(e)


@SETTINGS
@given(data=st.dictionaries(config_keys | st.text(max_size=8), json_values, max_size=5), which=st.integers(0, 2),
       overrides=st.lists(st.tuples(config_keys | st.text(max_size=10), st.text(max_size=12)), max_size=3))
def test_config_from_any_dict_and_overrides(data, which, overrides):
    try:
        apply_overrides(data, [f"{k}={v}" for k, v in overrides])
        from_dict(_config_classes()[which], data)
    except ConfigError as e:
        assert str(e)


# --- shrunk counterexamples, kept as regression tests ------------------------------------------------

def test_an_override_whose_value_is_not_yaml_is_a_config_error():
    for value in ("{", "[0", "|0", "\x1f", "&"):
        with pytest.raises(ConfigError, match="not valid YAML"):
            apply_overrides({}, [f"name={value}"])


def test_a_text_file_that_is_not_utf8_is_a_data_error(tmp_path):
    path = write(tmp_path, "docs.txt", b"ok\n\x80")
    with pytest.raises(DataError) as e:
        read_documents(path)
    assert e.value.line == 2 and "UTF-8" in str(e.value)
