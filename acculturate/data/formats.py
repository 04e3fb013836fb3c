"""Read and write example files: Alpaca (JSON list or JSONL), chat JSONL, and CSV with a column map.

Every problem in the input becomes a ``DataError`` naming the file, the line where the bad record
starts, the field and what was expected, so a 50,000-line file can be fixed without a debugger.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from acculturate.data.errors import DataError, describe
from acculturate.data.example import ROLES, WEIGHT_EXPECTED, Example, loss_weight
from acculturate.io import write_jsonl

log = logging.getLogger(__name__)

FORMATS = ("auto", "alpaca", "chat", "csv")
# The canonical field names that ``columns`` may map to names used in a file.
FIELDS = ("instruction", "input", "output", "messages")
_MISSING = "nothing (the field is missing)"
_ROLE_WORDS = "one of " + ", ".join(repr(r) for r in ROLES)


def read_examples(
    path: str | os.PathLike,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    skip_invalid: bool = False,
    errors: list[DataError] | None = None,
    allow_no_response: bool = False,
) -> list[Example]:
    """Read a data file into Examples.

    Args:
        path: the file.
        format: ``"alpaca"`` (a JSON list or JSONL of ``instruction``, optional ``input``, ``output``),
            ``"chat"`` (JSON list or JSONL of ``{"messages": [{"role", "content"}, ...]}``),
            ``"csv"`` (a header row; ``.tsv`` files are tab-separated), or ``"auto"``: CSV from a
            ``.csv``/``.tsv`` extension, else chat when the first record has ``messages``, else Alpaca.
        columns: maps canonical field names (``instruction``, ``input``, ``output``, ``messages``) to the
            names used in the file, e.g. ``{"instruction": "question", "output": "answer"}``. Fields
            not mapped keep their canonical names; other fields/columns go to ``Example.meta``.
        skip_invalid: skip bad records (logging a warning with the count) instead of raising.
        errors: when given with ``skip_invalid``, the skipped records' DataErrors are appended to it.
        allow_no_response: accept prompt-only records (no ``output``; chat not ending with an
            assistant turn), e.g. evaluation prompts.

    Returns:
        The examples, in file order.

    Raises:
        DataError: malformed JSON/CSV, a missing field, a wrong type, an unknown role, an empty file,
            or (with ``skip_invalid``) no valid record at all. FileNotFoundError if ``path`` is missing.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"columns: keys must be among {FIELDS}, got {unknown}")
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, None, None, "at least one example", "an empty file")

    is_csv = format == "csv" or (format == "auto" and path.suffix.lower() in (".csv", ".tsv"))
    if is_csv:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        records = list(_csv_records(path, text, columns, delimiter, allow_no_response))
        kind = "alpaca"
    else:
        records = _json_records(path, text)
        kind = format if format != "auto" else _detect_kind(records, columns)
    if not records:
        raise DataError(path, None, None, "at least one example", "no records")

    examples: list[Example] = []
    found: list[DataError] = []
    for line, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            make = _chat_example if kind == "chat" else _alpaca_example
            example = make(record, columns, allow_no_response, path, line)
            try:
                loss_weight(example.meta)
            except ValueError:
                raise DataError(path, line, "meta.weight", WEIGHT_EXPECTED, describe(example.meta["weight"])) from None
            examples.append(example)
        except DataError as err:
            if not skip_invalid:
                raise
            found.append(err)
    if found:
        if errors is not None:
            errors.extend(found)
        log.warning("%s: skipped %d invalid record(s) of %d; first: %s", path, len(found), len(records), found[0])
    if not examples:
        raise DataError(path, None, None, "at least one valid example", f"none ({len(found)} invalid; first: {found[0]})")
    return examples


def write_examples(path: str | os.PathLike, examples: list[Example]) -> None:
    """Write examples atomically as chat JSONL (``{"messages": [...], "meta": {...}}`` per line);
    ``read_examples`` reads the file back into equal Examples."""
    write_jsonl(path, (ex.to_dict() for ex in examples))


# --- file -> (line, record) -------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, "UTF-8 text", f"the byte {e.object[e.start]:#04x}") from None


def _json_records(path: Path, text: str) -> list[tuple[int, object]]:
    """A JSON list or JSON Lines -> [(line where the record starts, parsed value or DataError)]."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array(path, text)
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        # One pretty-printed object would otherwise fail as "malformed JSON on line 1".
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            raise DataError(path, 1, None, "a JSON list of examples or JSON Lines (one object per line)",
                            "a single multi-line JSON object")
    out: list[tuple[int, object]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append((lineno, json.loads(raw)))
        except json.JSONDecodeError as e:
            out.append((lineno, DataError(path, lineno, None, "one JSON object per line",
                                          f"malformed JSON ({e.msg} at column {e.colno})")))
    return out


def _json_array(path: Path, text: str) -> list[tuple[int, object]]:
    """Parse a JSON list element by element so each record knows the line it starts on."""
    decoder = json.JSONDecoder()
    n = len(text)
    line, counted = 1, 0  # line number of position ``counted`` (counting incrementally: O(n))

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip_ws(pos: int) -> int:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        return pos

    out: list[tuple[int, object]] = []
    pos = skip_ws(text.index("[") + 1)
    if pos < n and text[pos] == "]":
        return out
    while True:
        pos = skip_ws(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, None, "valid JSON", f"malformed JSON ({e.msg} at column {e.colno})") from None
        out.append((line_at(pos), value))
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            if skip_ws(pos + 1) != n:
                raise DataError(path, line_at(skip_ws(pos + 1)), None, "nothing after the closing ']'", "more text")
            return out
        else:
            got = repr(text[pos]) if pos < n else "the end of the file"
            raise DataError(path, line_at(min(pos, n)), None, "',' or ']' after a list element", got)


def _csv_records(path: Path, text: str, columns: dict, delimiter: str, allow_no_response: bool
                 ) -> Iterator[tuple[int, object]]:
    """CSV rows -> [(line, {column: value})], after checking the header has the mapped columns."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() or f"column{i}" for i, h in enumerate(next(reader))]
        need = {"instruction": columns.get("instruction", "instruction")}
        if "input" in columns:
            need["input"] = columns["input"]
        if not allow_no_response or "output" in columns:
            need["output"] = columns.get("output", "output")
        for canonical, name in need.items():
            if name not in header:
                hint = "" if canonical in columns else f" (or pass columns={{{canonical!r}: <column name>}})"
                raise DataError(path, 1, name, f"a column named {name!r} in the header{hint}", f"columns {header}")
        prev = reader.line_num
        for row in reader:
            start, prev = prev + 1, reader.line_num  # a quoted field may span several lines
            if not row:
                continue
            if len(row) != len(header):
                yield start, DataError(path, start, None, f"{len(header)} fields as in the header", f"{len(row)} fields")
                continue
            yield start, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(path, reader.line_num, None, "valid CSV", f"a CSV error ({e})") from None


def _detect_kind(records: list[tuple[int, object]], columns: dict) -> str:
    key = columns.get("messages", "messages")
    for _, record in records:
        if isinstance(record, dict):
            return "chat" if key in record else "alpaca"
    return "alpaca"


# --- record -> Example ------------------------------------------------------------------------


def _alpaca_example(record, columns: dict, allow_no_response: bool, path: Path, line: int) -> Example:
    if not isinstance(record, dict):
        raise DataError(path, line, None, "a JSON object with 'instruction' and 'output'", describe(record))
    names = {f: columns.get(f, f) for f in ("instruction", "input", "output")}

    def text_field(canonical: str, required: bool) -> str:
        name = names[canonical]
        if name not in record or record[name] is None:
            if required:
                raise DataError(path, line, name, "a non-empty string", _MISSING if name not in record else "null")
            return ""
        value = record[name]
        if not isinstance(value, str):
            raise DataError(path, line, name, "a string", describe(value))
        if required and not value.strip():
            raise DataError(path, line, name, "a non-empty string", "an empty string")
        return value

    instruction = text_field("instruction", required=True)
    input_text = text_field("input", required=False)
    output = text_field("output", required=not allow_no_response)
    example = Example.from_alpaca(instruction, input_text, output)
    example.meta = {**_extra_meta(record, names.values()), **example.meta}
    return example


def _extra_meta(record: dict, used) -> dict:
    """Fields not consumed by the format go to meta; a ``meta`` object is merged (write_examples' form)."""
    meta = {k: v for k, v in record.items() if k not in used and k != "meta"}
    if isinstance(record.get("meta"), dict):
        meta.update(record["meta"])
    elif "meta" in record:
        meta["meta"] = record["meta"]
    return meta


def _chat_example(record, columns: dict, allow_no_response: bool, path: Path, line: int) -> Example:
    name = columns.get("messages", "messages")
    if not isinstance(record, dict):
        raise DataError(path, line, None, f"a JSON object with {name!r}", describe(record))
    if name not in record:
        raise DataError(path, line, name, "a list of {role, content} messages", _MISSING)
    raw = record[name]
    if not isinstance(raw, list) or not raw:
        raise DataError(path, line, name, "a non-empty list of {role, content} messages", describe(raw))
    messages = []
    for i, m in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(path, line, where, "an object with 'role' and 'content'", describe(m))
        role = m.get("role")
        if role not in ROLES:
            raise DataError(path, line, f"{where}.role", _ROLE_WORDS, _MISSING if "role" not in m else describe(role))
        if role == "system" and i > 0:
            raise DataError(path, line, f"{where}.role", "'system' only as the first message", f"'system' at position {i}")
        content = m.get("content")
        if not isinstance(content, str):
            raise DataError(path, line, f"{where}.content", "a string", _MISSING if "content" not in m else describe(content))
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise DataError(path, line, name, "at least one 'user' message", f"roles {[m['role'] for m in messages]}")
    last = messages[-1]
    if not allow_no_response:
        where = f"{name}[{len(messages) - 1}]"
        if last["role"] != "assistant":
            raise DataError(path, line, f"{where}.role",
                            "'assistant' as the last message (the response to train on; "
                            "pass allow_no_response=True for prompt-only data)", repr(last["role"]))
        if not last["content"].strip():
            raise DataError(path, line, f"{where}.content", "a non-empty response", "an empty string")
    return Example(messages, _extra_meta(record, (name,)))
