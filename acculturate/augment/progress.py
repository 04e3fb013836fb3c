"""The resumable part every generator shares: a ``<out>.partial.jsonl`` log of finished work."""

from __future__ import annotations

import json
import os
from pathlib import Path

from acculturate.io import append_jsonl, read_appended_jsonl


def partial_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial.jsonl")


def read_partial(output: str | os.PathLike, settings: dict) -> list[dict]:
    """The rows already logged for ``output``; the first row holds the ``settings`` they were made with.

    Raises:
        ValueError: the log was made with other settings (a rerun would mix two configurations);
            the message names the settings that differ.
    """
    path = partial_path(output)
    rows = read_appended_jsonl(path)   # a line cut short by a kill is skipped: that work is redone
    if not rows:
        append_jsonl(path, {"settings": settings})
        return []
    old = rows[0].get("settings", {})
    new = json.loads(json.dumps(settings, default=str))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{path} was made with different settings ({', '.join(changed)}); delete it "
                         f"(or choose another output) to start over")
    return rows[1:]


def log_row(output: str | os.PathLike, row: dict) -> None:
    append_jsonl(partial_path(output), row)
