"""One error type for bad input data, naming the file, line, field and what was expected."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data, e.g. ``data/x.jsonl:17: field 'output': expected a string, got int (42)``.

    Attributes:
        path: the file (str), or None for in-memory data.
        line: 1-based line number where the bad record starts (a row number for Parquet/Arrow
            tables, see ``unit``), or None.
        field: the offending field (``"output"``, ``"messages[2].role"``), or None for the whole record.
        expected: what was expected, as words (``"a string"``).
        got: what was found, as words (``"int (42)"``); see ``describe``.
        unit: what ``line`` counts: ``"line"`` (text files: ``x.jsonl:17``) or ``"row"`` (tables:
            ``x.parquet: row 17``).
    """

    def __init__(self, path: str | os.PathLike | None, line: int | None, field: str | None, expected: str, got: str,
                 unit: str = "line"):
        self.path = None if path is None else str(path)
        self.line = line
        self.unit = unit
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.path if self.path is not None else "<data>"
        if self.line is not None:
            where += f":{self.line}" if self.unit == "line" else f": {self.unit} {self.line}"
        what = f"field {self.field!r}: " if self.field is not None else ""
        return f"{where}: {what}expected {self.expected}, got {self.got}"

    def __reduce__(self):
        # Exceptions pickle as cls(*args); ours has five arguments, not the message (multiprocessing).
        return (type(self), (self.path, self.line, self.field, self.expected, self.got, self.unit))


_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict", type(None): "null"}


def describe(value, limit: int = 40) -> str:
    """A short description of a value for an error message: ``int (42)``, ``list ([1, 2])``, ``null``."""
    if value is None:
        return "null"
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{name} ({text})"


def load_yaml_data(path) -> object:
    """Parse a YAML data file (blocklist, swap list...); a syntax error becomes a DataError with its line."""
    import yaml

    from pathlib import Path

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, "valid YAML",
                        f"a YAML error ({getattr(e, 'problem', None) or e})") from None
