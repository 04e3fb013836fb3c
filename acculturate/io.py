"""Atomic file writes: a crash or a kill never leaves a half-written file behind.

Every writer goes to a temporary file in the same directory, fsyncs it, then ``os.replace``s it
over the target, which POSIX guarantees to be atomic on one file system.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(target: str | os.PathLike, rows: Iterable[Any]) -> None:
    write_text(target, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def append_jsonl(target: str | os.PathLike, row: Any) -> None:
    """Append one JSON line and flush it to disk (logs survive a kill)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    The swap is two renames (old -> backup, new -> target), so a reader sees either the old or the
    new directory complete; the backup is removed afterwards.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_appended_jsonl(path: str | os.PathLike) -> list[Any]:
    """The rows of a JSONL file this project appends to as work finishes (``append_jsonl``); none
    if it does not exist. A line cut short by a kill mid-write is skipped, so that work is redone.
    (Users' input files go through :func:`acculturate.data.jsonl.read_jsonl_objects`, which refuses
    bad lines instead.)"""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_jsonl_by_key(path: str | os.PathLike, key: str = "id") -> dict[Any, dict]:
    """Rows of a JSONL results file by ``row[key]`` (the last row wins), for resuming a run.

    A line cut short by a kill mid-write is skipped, so that row is simply redone.
    """
    return {row[key]: row for row in read_appended_jsonl(path)}
