"""Adapter versions with lineage: the online loop's memory of what it served and why.

A version store is a directory::

    ROOT/
      state.json            {"current": "v3", "feedback_cursor": 57, "events": [...]}
      versions/
        v0/ adapter/ (a PEFT-format adapter)  meta.json
        v1/ adapter/  meta.json
        ...

``v0`` is the starting point, normally an untrained LoRA adapter (``B = 0``, so it answers exactly
as the base model) or an adapter the user already had; every later version names its ``parent``.
``meta.json`` records how a version was made (``method``: ``init``, ``sft``, ``ppo``, ``sft+ppo``,
the feedback ids it learned from, the guard metrics of it and its parent, whether the guard
``accepted`` it and why). Rejected candidates are kept too (their lineage is part of the record) but
never become ``current``.

Every write is atomic: a version is assembled in a temporary directory and renamed into place
(:func:`acculturate.io.atomic_dir`), ``state.json`` is replaced with :func:`acculturate.io.write_json`;
a kill at any moment leaves the previous state readable. One process writes at a time: writers hold
an exclusive ``fcntl`` lock on ``ROOT/.lock`` (readers need none).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from acculturate.io import atomic_dir, write_json

_NAME = re.compile(r"v(\d+)")
METHODS = ("init", "sft", "ppo", "sft+ppo")


class VersionError(ValueError):
    """A version that does not exist, cannot become current, or whose files are damaged."""


@dataclass
class VersionInfo:
    """What ``meta.json`` of one version says."""

    version: str
    """``v0``, ``v1``, ..."""
    parent: str | None
    """The version it was trained from (None for ``v0``)."""
    method: str
    """``init``, ``sft``, ``ppo`` or ``sft+ppo``."""
    accepted: bool
    """Whether the guard accepted it (only accepted versions can be served)."""
    created_at: float = 0.0
    """Unix time it was written."""
    feedback_ids: list[int] = field(default_factory=list)
    """The feedback rows it learned from."""
    guard: dict = field(default_factory=dict)
    """Guard metrics: ``{"candidate": {...}, "parent": {...}, "reasons": [...]}``."""
    reason: str = ""
    """Why it was accepted or rejected, in words."""
    training: dict = field(default_factory=dict)
    """Summaries of the SFT / PPO runs (steps, losses, reward means, wall time)."""
    base_model: str | None = None
    """The base model the adapter is for."""
    path: Path | None = None
    """The version's directory (not stored in meta.json)."""

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def to_json(self) -> dict:
        row = asdict(self)
        row.pop("path")
        return row


def version_number(name: str) -> int:
    m = _NAME.fullmatch(name or "")
    if m is None:
        raise VersionError(f"a version is named v0, v1, ...; got {name!r}")
    return int(m.group(1))


class VersionStore:
    """The versions under ``root`` (created if missing).

    Args:
        root: the store's directory.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    # --- reading ----------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict:
        """``{"current": name or None, "feedback_cursor": int, "events": [...]}``."""
        if not self.state_path.exists():
            return {"current": None, "feedback_cursor": 0, "events": []}
        data = _read_json(self.state_path)
        for key, kind in (("feedback_cursor", int), ("events", list)):
            if not isinstance(data.get(key), kind):
                raise VersionError(f"{self.state_path}: field {key!r} must be of type {kind.__name__}, got "
                                   f"{data.get(key)!r:.60}; the file is damaged (restore it or delete it "
                                   f"and set the current version again with rollback)")
        if data.get("current") is not None and not isinstance(data["current"], str):
            raise VersionError(f"{self.state_path}: field 'current' must be a version name or null")
        return data

    def names(self) -> list[str]:
        """Every version's name, oldest first (half-written temporary directories are ignored)."""
        names = [p.name for p in (self.root / "versions").iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
        return sorted(names, key=version_number)

    def get(self, name: str) -> VersionInfo:
        """The version called ``name``; :class:`VersionError` if it is missing or its metadata is
        damaged (the message names the file and field)."""
        version_number(name)
        path = self.root / "versions" / name
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise VersionError(f"no version {name!r} in {self.root} (versions: {', '.join(self.names()) or 'none'})")
        data = _read_json(meta_path)
        fields = {"version": str, "method": str, "accepted": bool, "created_at": (int, float),
                  "feedback_ids": list, "guard": dict, "reason": str, "training": dict}
        for key, kind in fields.items():
            if not isinstance(data.get(key), kind):
                raise VersionError(f"{meta_path}: field {key!r} must be of type "
                                   f"{getattr(kind, '__name__', 'number')}, got {data.get(key)!r:.60}")
        if data["version"] != name:
            raise VersionError(f"{meta_path}: field 'version' is {data['version']!r} but the folder is {name!r}")
        if data.get("parent") is not None and not isinstance(data["parent"], str):
            raise VersionError(f"{meta_path}: field 'parent' must be a version name or null")
        if not (path / "adapter" / "adapter_config.json").is_file():
            raise VersionError(f"{path / 'adapter'}: the adapter of version {name!r} is missing")
        known = {f for f in VersionInfo.__dataclass_fields__ if f != "path"}
        return VersionInfo(**{k: v for k, v in data.items() if k in known}, path=path)

    def list(self) -> list[VersionInfo]:
        return [self.get(n) for n in self.names()]

    def table(self) -> str:
        """The versions, one a line, the current one marked '*': parent, method, accepted or not,
        feedback rows used, and the reason (`acculturate learn --list`)."""
        current = self.state()["current"]
        return "\n".join(
            f"{'*' if v.version == current else ' '} {v.version:<5} parent={v.parent or '-':<5} {v.method:<8} "
            f"{'accepted' if v.accepted else 'rejected'}  feedback={len(v.feedback_ids):<4} {v.reason[:90]}"
            for v in self.list())

    def current(self) -> VersionInfo | None:
        """The version being served (None before the first ``add``)."""
        name = self.state()["current"]
        return self.get(name) if name is not None else None

    def lineage(self, name: str) -> list[VersionInfo]:
        """``name``, its parent, its parent's parent ... back to the root."""
        chain, seen = [], set()
        while name is not None:
            if name in seen:
                raise VersionError(f"{self.root}: the lineage of versions loops at {name!r}")
            seen.add(name)
            info = self.get(name)
            chain.append(info)
            name = info.parent
        return chain

    # --- writing ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, write_adapter: Callable[[Path], object] | str | os.PathLike, *, parent: str | None,
            method: str, accepted: bool, feedback_ids: list[int] | None = None, guard: dict | None = None,
            reason: str = "", training: dict | None = None, base_model: str | None = None,
            make_current: bool | None = None, feedback_cursor: int | None = None) -> VersionInfo:
        """Write the next version ``v<N>``.

        Args:
            write_adapter: a function that saves the adapter into the directory it is given (e.g.
                ``lambda d: registry.save("candidate", d, base)``), or an adapter directory to copy.
            parent: the version it was trained from (must exist), None for a root.
            method: one of :data:`METHODS`.
            accepted: the guard's verdict.
            feedback_ids, guard, reason, training, base_model: recorded in ``meta.json``.
            make_current: serve it from now on (default: when ``accepted``); a rejected version
                can never be made current.
            feedback_cursor: with an accepted version, the last feedback id it consumed (the next
                round starts after it).
        Returns:
            The new :class:`VersionInfo`.
        """
        if method not in METHODS:
            raise VersionError(f"method must be one of {list(METHODS)}, got {method!r}")
        make_current = accepted if make_current is None else make_current
        if make_current and not accepted:
            raise VersionError("a version the guard rejected cannot be made current")
        with self._locked():
            if parent is not None:
                self.get(parent)
            names = self.names()
            name = f"v{version_number(names[-1]) + 1 if names else 0}"
            info = VersionInfo(version=name, parent=parent, method=method, accepted=accepted,
                               created_at=time.time(), feedback_ids=list(feedback_ids or []),
                               guard=guard or {}, reason=reason, training=training or {}, base_model=base_model)
            target = self.root / "versions" / name
            with atomic_dir(target) as tmp:
                if callable(write_adapter):
                    write_adapter(tmp / "adapter")
                else:
                    shutil.copytree(write_adapter, tmp / "adapter")
                if not (tmp / "adapter" / "adapter_config.json").is_file():
                    raise VersionError(f"version {name}: the adapter writer left no adapter_config.json")
                write_json(tmp / "meta.json", info.to_json())
            if make_current:
                event = "accept" if method != "init" else "init"
                self._set_state(name, event, feedback_cursor=feedback_cursor)
        return self.get(name)

    def set_current(self, name: str, event: str = "rollback") -> VersionInfo:
        """Make ``name`` (an accepted version) the current one; the event is logged in state.json."""
        with self._locked():
            info = self.get(name)
            if not info.accepted:
                raise VersionError(f"version {name} was rejected by the guard ({info.reason or 'no reason recorded'}); "
                                   f"only accepted versions can be served")
            self._set_state(name, event)
        return info

    def rollback(self, name: str) -> VersionInfo:
        """Serve the earlier version ``name`` again (its later versions stay, for the record)."""
        return self.set_current(name, "rollback")

    def _set_state(self, name: str, event: str, feedback_cursor: int | None = None) -> None:
        state = self.state()
        state["events"].append({"event": event, "version": name, "from": state["current"], "time": time.time()})
        state["current"] = name
        if feedback_cursor is not None:
            state["feedback_cursor"] = max(int(feedback_cursor), state["feedback_cursor"])
        write_json(self.state_path, state)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VersionError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); the file is damaged") from None
    if not isinstance(data, dict):
        raise VersionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
