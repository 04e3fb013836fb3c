"""Raw text for continued pre-training: read documents, tokenize with EOS separators, pack into
fixed-length sequences with a loss on every token.

A *document* is one string: a paragraph of a ``.txt`` file (documents are separated by blank lines),
the text field of a JSONL line, or one cell of a CSV column (e.g. one NusaX language column).

Two packings (``pack_documents``):

- ``"stream"`` (default; GPT-2 and Hugging Face ``run_clm.py``'s ``group_texts``): every document
  is followed by EOS, all are concatenated and cut into rows of exactly ``seq_len`` tokens (the
  last, shorter row is kept). Every token is a target, a document's first token is predicted from
  the previous document's EOS, and a long document continues into the next row instead of being
  truncated. Attention crosses documents at EOS, as in those recipes.
- ``"document"``: one feature per document (split into ``seq_len`` pieces when longer), every token
  a target; train with ``train.packing: true`` so :func:`acculturate.data.batching.pack_features`
  packs them with attention kept inside each document (its first token then has no target).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from acculturate.data.errors import DataError
from acculturate.data.jsonl import read_jsonl_objects

TEXT_FORMATS = ("auto", "txt", "jsonl", "csv")
PACKINGS = ("stream", "document")


@dataclass
class Document:
    """One document of raw text and the group (language, region) it belongs to."""

    text: str
    group: str


def _format_of(path: Path, format: str) -> str:
    if format != "auto":
        if format not in TEXT_FORMATS:
            raise DataError(path, None, "format", f"one of {list(TEXT_FORMATS)}", format)
        return format
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md", ""):
        return "txt"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(path, None, "format", "a .txt, .jsonl or .csv file (or name the format)", suffix)


def read_documents(path: str | Path, *, format: str = "auto", field: str | None = None,
                   group: str | None = None) -> list[Document]:
    """Read raw-text documents from one file.

    Args:
        path: a ``.txt`` (documents separated by blank lines), ``.jsonl`` (one object per line) or
            ``.csv`` file (one document per row).
        format: ``"auto"`` (from the suffix), ``"txt"``, ``"jsonl"`` or ``"csv"``.
        field: the JSONL key or CSV column holding the text (JSONL default ``"text"``; CSV needs it).
        group: the documents' group (default: the CSV column, else the file's stem).
    Returns:
        The non-empty documents, in file order.
    Raises:
        FileNotFoundError; DataError naming the file, line and field for malformed input.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    kind = _format_of(path, format)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, raw.count(b"\n", 0, e.start) + 1, None, "UTF-8 text",
                        f"undecodable bytes ({e.reason})") from None
    if kind == "txt":
        name = group or path.stem
        return [Document(p.strip(), name) for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if kind == "jsonl":
        key = field or "text"
        docs = []
        for line_no, row in read_jsonl_objects(path):
            if not isinstance(row.get(key), str):
                raise DataError(path, line_no, key, "a string of text", type(row.get(key)).__name__)
            if row[key].strip():
                docs.append(Document(row[key].strip(), group or str(row.get("group", path.stem))))
        return docs
    if not field:
        raise DataError(path, None, "column", "the name of the CSV column holding the text", None)
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if field not in (reader.fieldnames or []):
        raise DataError(path, 1, field, f"a column of the header {reader.fieldnames}", "no such column")
    docs = []
    for line_no, row in enumerate(reader, 2):
        value = row.get(field)
        if value is None:
            raise DataError(path, line_no, field, "a value in every row", "a short row")
        if value.strip():
            docs.append(Document(value.strip(), group or field))
    return docs


def tokenize_documents(documents: Sequence[Document | str], tokenizer, *, eos: bool = True) -> list[list[int]]:
    """Token ids of each document (no special tokens), followed by the tokenizer's EOS when ``eos``."""
    if eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenize_documents: the tokenizer has no eos_token_id to separate documents")
    texts = [d.text if isinstance(d, Document) else d for d in documents]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [ids + [tokenizer.eos_token_id] if eos else list(ids) for ids in encoded]


def pack_documents(token_ids: Sequence[Sequence[int]], seq_len: int, packing: str = "stream",
                   group: str | None = None) -> list[dict]:
    """Features with a loss on every token (``labels == input_ids``).

    Args:
        token_ids: each document's ids (from :func:`tokenize_documents`, EOS included).
        seq_len: tokens per row (``"stream"``) or the most per feature (``"document"``).
        packing: ``"stream"`` or ``"document"`` (see the module docstring).
        group: stored as ``feature["group"]`` (used by group DRO) when given.
    Returns:
        ``{"input_ids", "labels"[, "group"]}`` dicts. ``"stream"``: every row has ``seq_len`` tokens
        except possibly the last; the rows, concatenated, are exactly the documents concatenated.
    """
    if packing not in PACKINGS:
        raise ValueError(f"packing: expected one of {list(PACKINGS)}, got {packing!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len: expected at least 2 tokens, got {seq_len}")
    if packing == "stream":
        stream = [t for ids in token_ids for t in ids]
        pieces = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
    else:
        pieces = [list(ids[i:i + seq_len]) for ids in token_ids for i in range(0, len(ids), seq_len)]
    pieces = [p for p in pieces if len(p) >= 2]   # a 1-token row has no next-token target
    extra = {"group": group} if group is not None else {}
    return [{"input_ids": list(p), "labels": list(p), **extra} for p in pieces]


def text_features(documents: Sequence[Document], tokenizer, seq_len: int, packing: str = "stream") -> list[dict]:
    """Tokenize and pack documents group by group (a row never mixes two groups), in group order
    of first appearance."""
    groups: dict[str, list[Document]] = {}
    for d in documents:
        groups.setdefault(d.group, []).append(d)
    return [f for name, docs in groups.items()
            for f in pack_documents(tokenize_documents(docs, tokenizer), seq_len, packing, group=name)]


def words(text: str) -> int:
    """Whitespace-separated words in ``text`` (the denominator of fertility)."""
    return len(text.split())
