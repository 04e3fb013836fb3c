"""Raw text for continued pre-training: reading documents, EOS separators, packing with a loss on
every token (data/text.py)."""

import json

import pytest

from acculturate.data import DataError
from acculturate.data.text import Document, pack_documents, read_documents, text_features, tokenize_documents


class CharTokenizer:
    """One id per character (ord), EOS = 0: token counts are checkable by eye."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_read_txt_jsonl_csv(tmp_path, data_dir):
    txt = tmp_path / "corpus.txt"
    txt.write_text("first doc\nstill first\n\n\nsecond doc\n\n  \n")
    assert [d.text for d in read_documents(txt)] == ["first doc\nstill first", "second doc"]
    assert {d.group for d in read_documents(txt)} == {"corpus"}
    jl = tmp_path / "x.jsonl"
    jl.write_text(json.dumps({"content": "a b"}) + "\n\n" + json.dumps({"content": "c"}) + "\n")
    assert [d.text for d in read_documents(jl, field="content", group="g")] == ["a b", "c"]
    docs = read_documents(data_dir / "nusax" / "valid.csv", field="javanese")
    assert len(docs) == 100 and docs[0].group == "javanese" and docs[0].text.startswith("Lak ana pitakonan")


def test_bad_input_names_file_line_and_field(tmp_path, data_dir):
    jl = tmp_path / "x.jsonl"
    jl.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": 3}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:2: field 'text': expected a string of text, got int"):
        read_documents(jl)
    jl.write_text("{not json\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: expected one JSON object per line, got malformed JSON"):
        read_documents(jl)
    with pytest.raises(DataError, match="field 'klingon'.*column of the header"):
        read_documents(data_dir / "nusax" / "valid.csv", field="klingon")
    with pytest.raises(DataError, match="field 'column'"):
        read_documents(data_dir / "nusax" / "valid.csv")
    with pytest.raises(FileNotFoundError):
        read_documents(tmp_path / "missing.txt")


def test_tokenize_appends_eos():
    assert tokenize_documents(["ab", Document("c", "g")], CharTokenizer()) == [[97, 98, 0], [99, 0]]
    assert tokenize_documents(["ab"], CharTokenizer(), eos=False) == [[97, 98]]


def test_stream_packing_every_token_a_target_and_fixed_lengths():
    ids = tokenize_documents(["abcde", "fg", "hijklmn"], CharTokenizer())   # 6 + 3 + 8 = 17 tokens
    rows = pack_documents(ids, seq_len=4, group="jv")
    assert [len(r["input_ids"]) for r in rows] == [4, 4, 4, 4]      # the 1-token tail has no target
    stream = [t for d in ids for t in d]
    assert [t for r in rows for t in r["input_ids"]] == stream[:16]
    assert all(r["labels"] == r["input_ids"] and r["group"] == "jv" for r in rows)
    assert stream.count(0) == 3 and stream[5] == 0 and stream[8] == 0   # EOS after every document


def test_document_packing_splits_long_documents():
    ids = tokenize_documents(["abcdefg", "h"], CharTokenizer())            # 8 and 2 tokens
    rows = pack_documents(ids, seq_len=5, packing="document")
    assert [r["input_ids"] for r in rows] == [[97, 98, 99, 100, 101], [102, 103, 0], [104, 0]]
    assert all(r["labels"] == r["input_ids"] for r in rows) and "group" not in rows[0]
    with pytest.raises(ValueError, match="packing"):
        pack_documents(ids, 5, packing="zip")


def test_text_features_keep_groups_apart():
    docs = [Document("aaaa", "x"), Document("bbbb", "y"), Document("cc", "x")]
    rows = text_features(docs, CharTokenizer(), seq_len=3)
    assert [r["group"] for r in rows] == ["x", "x", "x", "y", "y"]
    assert all(set(r["input_ids"]) <= {97, 99, 0} for r in rows if r["group"] == "x")


@pytest.mark.slow
def test_real_tokenizer_packs_nusax_with_its_eos(tokenizer, data_dir):
    docs = read_documents(data_dir / "nusax" / "valid.csv", field="sundanese")[:10]
    rows = text_features(docs, tokenizer, seq_len=64)
    n_tokens = sum(len(i) for i in tokenize_documents(docs, tokenizer))
    assert sum(len(r["input_ids"]) for r in rows) == n_tokens
    assert all(len(r["input_ids"]) == 64 for r in rows[:-1])
    assert sum(r["input_ids"].count(tokenizer.eos_token_id) for r in rows) == 10
