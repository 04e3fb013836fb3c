"""Config field documentation, read from the dataclass source, for `--help` and the docs.

A field is documented by an attribute docstring right under it (the project's way, as LitGPT's)::

    max_length: int = 256
    \"\"\"Tokens per example (longer ones are truncated).\"\"\"

A comment on the field's line (and comment lines continuing it), or comment lines just above it,
are read too, so every config shows its meaning while older ones are converted.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from functools import lru_cache

from acculturate.config_loading import field_default


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its documentation}`` for a dataclass (own fields and inherited ones)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant) \
                and isinstance(after.value.value, str):
            docs[name] = " ".join(inspect.cleandoc(after.value.value).split())
            continue
        text = _trailing_comment(lines, node) or _leading_comment(lines, node.lineno - 1)
        if text:
            docs[name] = text
    return docs


def _comment_of(line: str) -> str | None:
    """The comment on a source line (a '#' outside quotes), or None."""
    quote = None
    for j, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[j + 1:].strip()
    return None


def _trailing_comment(lines: list[str], node: ast.AnnAssign) -> str | None:
    end = node.end_lineno - 1
    first = _comment_of(lines[end])
    if first is None or lines[end].lstrip().startswith("#"):
        return None
    column = lines[end].index("#", len(lines[end]) - len(lines[end].lstrip()))
    parts = [first]
    for line in lines[end + 1:]:   # comment-only lines aligned under the first continue it
        stripped = line.lstrip()
        if not stripped.startswith("#") or len(line) - len(stripped) < column - 2:
            break
        parts.append(stripped[1:].strip())
    return " ".join(p for p in parts if p)


def _leading_comment(lines: list[str], index: int) -> str | None:
    parts = []
    j = index - 1
    while j >= 0 and lines[j].lstrip().startswith("#"):
        parts.insert(0, lines[j].lstrip()[1:].strip())
        j -= 1
    return " ".join(p for p in parts if p) or None


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(tp))   # list[acculturate.x.DataSource] -> list[DataSource]


def describe_config(cls: type, prefix: str = "", defaults=None) -> list[str]:
    """One line per field (nested config dataclasses expanded as ``section.field``): name, type,
    default and meaning, e.g. ``train.lr (float, default 0.0002): peak learning rate``.

    A nested section shows the values of its parent's default (the adapt job's ``train.lr`` is its
    own 0.001, not ``TrainConfig``'s), as a config that leaves them out gets them (config_loading)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # an annotation that does not resolve here: show the raw text
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        default = getattr(defaults, f.name) if defaults is not None else field_default(f)
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            out.append(f"{prefix}{f.name}: {doc or _class_doc(tp)}".rstrip(": "))
            out.extend(describe_config(tp, f"{prefix}{f.name}.",
                                       default if dataclasses.is_dataclass(default) else None))
            continue
        shown = "required" if default is dataclasses.MISSING else f"default {default!r}"
        out.append(f"{prefix}{f.name} ({_type_name(tp)}, {shown})" + (f": {doc}" if doc else ""))
    return out


def _class_doc(cls: type) -> str:
    """The first line of a class's own docstring ('' for the signature dataclasses write in its place)."""
    text = cls.__doc__ or ""
    if not text or text.startswith(cls.__name__ + "("):
        return ""
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
