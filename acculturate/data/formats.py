"""Read and write example files: Alpaca (JSON list or JSONL), chat (``messages``) and ShareGPT
(``conversations``) JSON/JSONL, CSV with a column map, and Parquet / Arrow files / ``save_to_disk``
folders holding any of these record shapes (see ``tables.py``).

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
from acculturate.data.tables import is_table, table_rows
from acculturate.io import write_jsonl

log = logging.getLogger(__name__)

FORMATS = ("auto", "alpaca", "chat", "sharegpt", "csv")
# The canonical field names that ``columns`` may map to names used in a file: Alpaca's fields, the
# chat / ShareGPT turn lists, a turn's role and content keys, and ShareGPT's top-level system prompt.
FIELDS = ("instruction", "input", "output", "messages", "conversations", "role", "content", "system")
# How each conversation kind names its turn list and a turn's keys (before ``columns``).
_TURN_KEYS = {"chat": ("messages", "role", "content"), "sharegpt": ("conversations", "from", "value")}
# Role names found in ShareGPT-style data -> ours; ``roles`` adds to or overrides these.
DEFAULT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_MISSING = "nothing (the field is missing)"


def read_examples(
    path: str | os.PathLike,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    skip_invalid: bool = False,
    errors: list[DataError] | None = None,
    allow_no_response: bool = False,
    roles: dict[str, str] | None = None,
    split: str = "train",
) -> list[Example]:
    """Read a data file into Examples.

    The container comes from the path: a ``.parquet`` or ``.arrow`` file or a ``save_to_disk``
    folder is read as a table (one record per row; errors name the row), a ``.csv``/``.tsv`` file
    as CSV, anything else as a JSON list or JSON Lines.

    Args:
        path: the file (or ``save_to_disk`` folder).
        format: the record shape: ``"alpaca"`` (``instruction``, optional ``input``, ``output``),
            ``"chat"`` (``{"messages": [{"role", "content"}, ...]}``), ``"sharegpt"``
            (``{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}``, optional
            top-level ``system``), ``"csv"`` (a header row of Alpaca columns; ``.tsv`` files are
            tab-separated), or ``"auto"``: CSV from a ``.csv``/``.tsv`` extension, else chat when the
            first record has ``messages``, ShareGPT when it has ``conversations``, else Alpaca.
        columns: maps canonical field names (``instruction``, ``input``, ``output``, ``messages``,
            ``conversations``, and a turn's ``role`` / ``content`` keys, ShareGPT's ``system``) to the
            names used in the file, e.g. ``{"instruction": "question", "output": "answer"}`` or
            ``{"conversations": "dialog", "role": "speaker", "content": "text"}``. Fields not mapped
            keep their canonical names; other fields/columns go to ``Example.meta``.
        roles: maps role names in the file to ``system``/``user``/``assistant``, added to
            ``DEFAULT_ROLES`` (``human`` -> user, ``gpt`` -> assistant), e.g. ``{"bot": "assistant"}``.
        split: the split to read from a ``save_to_disk`` folder of a ``DatasetDict``.
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
    role_map = {**DEFAULT_ROLES, **(roles or {})}
    bad = sorted(k for k, v in role_map.items() if v not in ROLES)
    if bad:
        raise ValueError(f"roles: values must be among {ROLES}, got {[(k, role_map[k]) for k in bad]}")
    path = Path(path)
    table = is_table(path)
    if path.is_dir() and not table:
        raise DataError(path, None, None, "a data file or a folder written by Dataset.save_to_disk "
                        "(with dataset_info.json or dataset_dict.json)", "a folder without them")
    text = "" if table else _read_text(path)
    if not table and not text.strip():
        raise DataError(path, None, None, "at least one example", "an empty file")

    is_csv = format == "csv" or (format == "auto" and path.suffix.lower() in (".csv", ".tsv"))
    if table:
        if format == "csv":
            raise ValueError(f"format: 'csv' is for CSV files; {path} is a table (use auto, alpaca, chat or sharegpt)")
        records = table_rows(path, split)
        kind = format if format != "auto" else _detect_kind(records, columns)
    elif is_csv:
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
    unit = "row" if table else "line"
    for line, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            if kind in _TURN_KEYS:
                example = _chat_example(record, kind, columns, role_map, allow_no_response, path, line, unit)
            else:
                example = _alpaca_example(record, columns, allow_no_response, path, line, unit)
            try:
                loss_weight(example.meta)
            except ValueError:
                raise DataError(path, line, "meta.weight", WEIGHT_EXPECTED, describe(example.meta["weight"]),
                                unit) from None
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
    for _, record in records:
        if isinstance(record, dict):
            for kind, (turns, _, _) in _TURN_KEYS.items():
                if columns.get(turns, turns) in record:
                    return kind
            return "alpaca"
    return "alpaca"


# --- record -> Example ------------------------------------------------------------------------


def _alpaca_example(record, columns: dict, allow_no_response: bool, path: Path, line: int, unit: str = "line"
                    ) -> Example:
    if not isinstance(record, dict):
        raise DataError(path, line, None, "a JSON object with 'instruction' and 'output'", describe(record), unit)
    names = {f: columns.get(f, f) for f in ("instruction", "input", "output")}

    def text_field(canonical: str, required: bool) -> str:
        name = names[canonical]
        if name not in record or record[name] is None:
            if required:
                raise DataError(path, line, name, "a non-empty string", _MISSING if name not in record else "null", unit)
            return ""
        value = record[name]
        if not isinstance(value, str):
            raise DataError(path, line, name, "a string", describe(value), unit)
        if required and not value.strip():
            raise DataError(path, line, name, "a non-empty string", "an empty string", unit)
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


def _chat_example(record, kind: str, columns: dict, role_map: dict, allow_no_response: bool, path: Path,
                  line: int, unit: str = "line") -> Example:
    """A chat (``messages`` of role/content) or ShareGPT (``conversations`` of from/value) record."""
    turns_key, role_key, content_key = _TURN_KEYS[kind]
    name = columns.get(turns_key, turns_key)
    role_key, content_key = columns.get("role", role_key), columns.get("content", content_key)
    shape = f"{{{role_key}, {content_key}}} turns"

    def error(field, expected, got):
        return DataError(path, line, field, expected, got, unit)

    if not isinstance(record, dict):
        raise error(None, f"a JSON object with {name!r}", describe(record))
    if name not in record:
        raise error(name, f"a list of {shape}", _MISSING)
    raw = record[name]
    if not isinstance(raw, list) or not raw:
        raise error(name, f"a non-empty list of {shape}", describe(raw))
    messages = []
    used = [name]
    system_key = columns.get("system", "system")
    if kind == "sharegpt" and record.get(system_key) is not None:
        used.append(system_key)
        if not isinstance(record[system_key], str):
            raise error(system_key, "a string (the system prompt)", describe(record[system_key]))
        if record[system_key].strip():
            messages.append({"role": "system", "content": record[system_key]})
    aliases = [r for r in role_map if r not in ROLES]
    role_words = "one of " + ", ".join(repr(r) for r in ROLES)
    if aliases:
        role_words += " (or a name that roles maps: " + ", ".join(repr(r) for r in aliases) + ")"
    for i, m in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise error(where, f"an object with {role_key!r} and {content_key!r}", describe(m))
        found = m.get(role_key)
        role = role_map.get(found) if isinstance(found, str) else None
        if role is None:
            raise error(f"{where}.{role_key}", role_words, _MISSING if role_key not in m else describe(found))
        if role == "system" and messages:
            raise error(f"{where}.{role_key}", "'system' only as the first message", f"{found!r} at position {i}")
        content = m.get(content_key)
        if not isinstance(content, str):
            raise error(f"{where}.{content_key}", "a string", _MISSING if content_key not in m else describe(content))
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise error(name, "at least one 'user' message", f"roles {[m['role'] for m in messages]}")
    last = messages[-1]
    if not allow_no_response:
        where = f"{name}[{len(raw) - 1}]"
        if last["role"] != "assistant":
            raise error(f"{where}.{role_key}", "'assistant' as the last message (the response to train on; "
                        "pass allow_no_response=True for prompt-only data)", repr(raw[-1].get(role_key)))
        if not last["content"].strip():
            raise error(f"{where}.{content_key}", "a non-empty response", "an empty string")
    return Example(messages, _extra_meta(record, used))
