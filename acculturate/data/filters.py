"""Length filters and blocklist/regex filters.

Blocklists are data, one YAML file per region under ``acculturate/resources/blocklists/`` (or any
file), so a team adds a region's terms without touching code::

    inherit: [default]        # other lists to include (names or paths)
    words: [damn, ...]        # whole words or phrases, matched case-insensitively at word boundaries
    patterns: ['\\b\\d{16}\\b']  # regular expressions (Python syntax), case-insensitive

The same :class:`Blocklist` filters training data here and model outputs at generation time
(:mod:`acculturate.decode.postprocess`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


from acculturate.data.errors import DataError, describe, load_yaml_data
from acculturate.data.example import Example
from acculturate.data.summary import PARTS, example_id, text_of
from acculturate.resources import ROOT as RESOURCES

BLOCKLIST_DIR = RESOURCES / "blocklists"


@dataclass
class Blocklist:
    """Compiled words and patterns. ``find(text)`` returns what matched (empty: the text is clean)."""

    words: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        parts = []
        if self.words:
            # Longest first so a phrase wins over a word inside it; (?<!\w)...(?!\w) is a word boundary
            # that also works for terms starting or ending with punctuation, unlike \b.
            alternatives = "|".join(re.escape(w) for w in sorted(set(self.words), key=len, reverse=True))
            parts.append(rf"(?<!\w)(?:{alternatives})(?!\w)")
        parts += [f"(?:{p})" for p in self.patterns]
        self._regex = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def find(self, text: str) -> list[str]:
        if self._regex is None:
            return []
        return [m.group(0) for m in self._regex.finditer(text)]

    def find_settled(self, text: str, start: int = 0) -> list[str]:
        """The matches of ``text`` that end before its last character, for text still being written:
        a word's boundary check looks one character ahead, so a match touching the end may still
        vanish ("ass" in "assess"), while one followed by a character stays whatever comes next.
        ``start``: only matches beginning there or later (the boundary check still sees the
        characters before it)."""
        if self._regex is None:
            return []
        return [m.group(0) for m in self._regex.finditer(text, start) if m.end() < len(text)]


def blocklist_names() -> list[str]:
    """The shipped blocklists (file names without ``.yaml``)."""
    return sorted(p.stem for p in BLOCKLIST_DIR.glob("*.yaml"))


def resolve_blocklist(name: str) -> Path:
    """A path as given, or a shipped list by region name (``Indonesia``, ``north_korea``...)."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"blocklist file {path} does not exist")
        return path
    shipped = BLOCKLIST_DIR / (name.strip().lower().replace(" ", "_").replace("-", "_") + ".yaml")
    if not shipped.exists():
        raise ValueError(f"blocklist {name!r}: no such file and no shipped list; shipped: {blocklist_names()}")
    return shipped


def load_blocklist(names: list[str] | str, extra_words: list[str] = (), extra_patterns: list[str] = ()) -> Blocklist:
    """Load and merge blocklists (region names or YAML paths), following ``inherit``.

    Raises:
        DataError: a file that is not a mapping, a field of the wrong type, or a pattern that is not
            a valid regular expression (the error names the file, the field and the pattern).
    """
    if isinstance(names, str):
        names = [names]
    words, patterns, sources = list(extra_words), list(extra_patterns), []
    for name in names:
        w, p, s = _parse(str(resolve_blocklist(name)), ())
        words += w
        patterns += p
        sources += s
    for i, pattern in enumerate(extra_patterns):
        _check_pattern(None, f"patterns[{i}]", pattern)
    return Blocklist(words, patterns, sources)


def _parse(path: str, chain: tuple[str, ...]):
    if path in chain:
        raise DataError(path, None, "inherit", "no cycle of inherited blocklists", " -> ".join(chain + (path,)))
    data = load_yaml_data(path) or {}
    if not isinstance(data, dict):
        raise DataError(path, None, None, "a mapping with 'words' and/or 'patterns'", describe(data))
    unknown = sorted(set(data) - {"inherit", "words", "patterns", "description"})
    if unknown:
        raise DataError(path, None, unknown[0], "one of 'inherit', 'words', 'patterns', 'description'", "an unknown key")
    words, patterns, sources = [], [], [path]
    for parent in _string_list(path, data, "inherit"):
        # A file name is relative to this file's folder; anything else is a shipped list's name.
        local = Path(path).parent / parent
        w, p, s = _parse(str(local if local.is_file() else resolve_blocklist(parent)), chain + (path,))
        words, patterns, sources = words + w, patterns + p, sources + s
    words += _string_list(path, data, "words")
    for i, pattern in enumerate(_string_list(path, data, "patterns")):
        _check_pattern(path, f"patterns[{i}]", pattern)
        patterns.append(pattern)
    return words, patterns, sources


def _string_list(path: str, data: dict, key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise DataError(path, None, key, "a list of strings", describe(value))
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(path, None, f"{key}[{i}]", "a non-empty string", describe(item))
    return [v.strip() if key != "patterns" else v for v in value]


def _check_pattern(path, where: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise DataError(path, None, where, "a valid regular expression", f"{pattern!r} ({e})") from None


# --- filters over examples --------------------------------------------------------------------


@dataclass
class LengthFilterConfig:
    """Keep examples whose length (in words of ``part``) is within bounds."""

    min_words: int = 1
    """Fewest words kept."""
    max_words: int | None = None
    """Most words kept (None: no bound)."""
    min_chars: int = 0
    """Fewest characters kept."""
    max_chars: int | None = None
    """Most characters kept (None: no bound)."""
    part: str = "all"
    """'all' messages, the 'prompt' turns or the 'response'."""

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {self.part!r}")
        for name in ("min_words", "min_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(f"max_words: expected >= min_words ({self.min_words}), got {self.max_words}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars: expected >= min_chars ({self.min_chars}), got {self.max_chars}")


def length_filter(examples: list[Example], config: LengthFilterConfig) -> tuple[list[Example], list[dict]]:
    """Returns ``(kept, removed)``; removed entries say why (``{"id", "reason"}``)."""
    kept, removed = [], []
    for ex in examples:
        text = text_of(ex, config.part)
        words, chars = len(text.split()), len(text)
        reason = None
        if words < config.min_words:
            reason = f"{words} words < min_words {config.min_words}"
        elif config.max_words is not None and words > config.max_words:
            reason = f"{words} words > max_words {config.max_words}"
        elif chars < config.min_chars:
            reason = f"{chars} chars < min_chars {config.min_chars}"
        elif config.max_chars is not None and chars > config.max_chars:
            reason = f"{chars} chars > max_chars {config.max_chars}"
        if reason:
            removed.append({"id": example_id(ex), "reason": reason})
        else:
            kept.append(ex)
    return kept, removed


def blocklist_filter(examples: list[Example], blocklist: Blocklist, part: str = "all"
                     ) -> tuple[list[Example], list[dict]]:
    """Drop examples whose ``part`` matches the blocklist. Returns ``(kept, removed)``; removed
    entries list the matches (``{"id", "reason", "matches"}``)."""
    kept, removed = [], []
    for ex in examples:
        matches = blocklist.find(text_of(ex, part))
        if matches:
            removed.append({"id": example_id(ex), "reason": "blocklist", "matches": sorted(set(matches))})
        else:
            kept.append(ex)
    return kept, removed
