"""Read a JSON-lines file of user data: one JSON object per non-blank line, or a :class:`DataError`
that names the file, the line and, for a field, the field.

Every reader of a user's JSONL (documents for RAG, BLEnD rows, raw text, preference pairs, seed
tasks) goes through :func:`read_jsonl_objects`, so a bad line reads the same everywhere:
``docs.jsonl:7: expected one JSON object per line, got malformed JSON (Expecting ',' delimiter)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from acculturate.data.errors import DataError, describe

MISSING = "nothing (the field is missing)"


def read_jsonl_objects(path: str | os.PathLike, encoding: str = "utf-8") -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of ``path``, in order.

    Args:
        path: a JSON-lines file.
        encoding: ``"utf-8"``, or ``"utf-8-sig"`` to accept a leading byte-order mark.
    Raises:
        DataError: bytes that are not UTF-8, a line that is not JSON, or one that is not an object.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, line, None, "UTF-8 text", f"undecodable bytes ({e.reason})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, lineno, None, "one JSON object per line", f"malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(path, lineno, None, "a JSON object", describe(row))
        rows.append((lineno, row))
    return rows


def text_field(path: str | os.PathLike, lineno: int, row: dict, name: str, allow_empty: bool = False) -> str:
    """``row[name]``, checked to be a string (non-blank unless ``allow_empty``).

    Raises:
        DataError: naming the file, line and field, and what was there instead.
    """
    value = row.get(name)
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        expected = "a string" if allow_empty else "a non-empty string"
        raise DataError(path, lineno, name, expected, MISSING if name not in row else describe(value))
    return value


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a JSON-lines file: each non-blank line a ``{"prompt": ...}`` object (other
    fields ignored) or a bare JSON string, in order (`acculturate generate --file`).

    Raises:
        DataError: naming the file and line of a line that is neither.
    """
    path = Path(path)
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, lineno, None, "a JSON object with a 'prompt' string",
                            f"malformed JSON ({e.msg})") from None
        if isinstance(row, dict):
            prompts.append(text_field(path, lineno, row, "prompt", allow_empty=True))
        elif isinstance(row, str):
            prompts.append(row)
        else:
            raise DataError(path, lineno, None, "a JSON object with a 'prompt' string", describe(row))
    return prompts
