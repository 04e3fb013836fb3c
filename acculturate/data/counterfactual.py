"""Counterfactual data augmentation for bias: copies of examples with gendered (or other group)
terms swapped, e.g. "He is a doctor" -> "She is a doctor" (Lu et al., 2018; Zhao et al., 2018).

Swap lists are YAML under ``acculturate/resources/swaps/`` (``gender_en``, ``gender_id``) or any
file: ``pairs`` swap both ways, ``one_way`` settles ambiguous words ('her' -> 'his' or 'him'),
``groups`` names the two columns (for balancing by the detected attribute). Terms match as whole
words, case-insensitively, and the replacement keeps the original's case (He -> She, HIS -> HER).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


from acculturate.data.errors import DataError, describe, load_yaml_data
from acculturate.data.example import Example
from acculturate.data.summary import example_id
from acculturate.resources import ROOT as RESOURCES

SWAPS_DIR = RESOURCES / "swaps"
MODES = ("add", "replace")


@dataclass
class SwapList:
    """A compiled swap list. ``mapping`` is lower-case term -> lower-case replacement."""

    mapping: dict[str, str]
    groups: tuple[str, str] = ("a", "b")
    columns: dict[str, int] = field(default_factory=dict)
    """Term -> 0 or 1 (which group it names)."""
    name: str = ""

    def __post_init__(self):
        terms = sorted(self.mapping, key=len, reverse=True)  # longest first: 'grandfather' before 'father'
        self._regex = re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t in terms) + r")(?!\w)", re.IGNORECASE)

    def swap(self, text: str) -> tuple[str, int]:
        """``text`` with every term swapped, and how many were."""
        count = 0

        def replace(match: re.Match) -> str:
            nonlocal count
            count += 1
            return match_case(match.group(0), self.mapping[match.group(0).lower()])

        return self._regex.sub(replace, text), count

    def group_counts(self, text: str) -> tuple[int, int]:
        """How many terms of each column ``text`` contains."""
        counts = [0, 0]
        for match in self._regex.finditer(text):
            counts[self.columns[match.group(0).lower()]] += 1
        return counts[0], counts[1]


def match_case(original: str, replacement: str) -> str:
    """``replacement`` in the case pattern of ``original``: UPPER, Title or lower."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def swap_list_names() -> list[str]:
    return sorted(p.stem for p in SWAPS_DIR.glob("*.yaml"))


def load_swap_list(name_or_path: str) -> SwapList:
    """A shipped list by name (``gender_en``) or a YAML file.

    Raises:
        DataError: malformed pairs, or a term that maps to two different words with no ``one_way``
            entry to decide (the error names the file and both pairs).
    """
    path = Path(name_or_path).expanduser()
    if not path.exists():
        shipped = SWAPS_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            raise ValueError(f"swap list {name_or_path!r}: no such file and no shipped list; shipped: {swap_list_names()}")
        path = shipped
    data = load_yaml_data(path) or {}
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list) or not data["pairs"]:
        raise DataError(path, None, "pairs", "a non-empty list of [term, term] pairs", describe(data.get("pairs") if isinstance(data, dict) else data))
    one_way = data.get("one_way") or {}
    if not isinstance(one_way, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in one_way.items()):
        raise DataError(path, None, "one_way", "a mapping of term to replacement", describe(one_way))
    groups = data.get("groups") or ["a", "b"]
    if not (isinstance(groups, list) and len(groups) == 2 and all(isinstance(g, str) for g in groups)):
        raise DataError(path, None, "groups", "two group names, e.g. [male, female]", describe(groups))
    mapping: dict[str, str] = {}
    origin: dict[str, int] = {}
    columns: dict[str, int] = {}
    for i, pair in enumerate(data["pairs"]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            raise DataError(path, None, f"pairs[{i}]", "two non-empty strings", describe(pair))
        a, b = (t.strip().lower() for t in pair)
        for src, dst, column in ((a, b, 0), (b, a, 1)):
            columns[src] = column
            if src in mapping and mapping[src] != dst and src not in one_way:
                raise DataError(path, None, f"pairs[{i}]",
                                f"{src!r} to swap one way only (pairs[{origin[src]}] maps it to {mapping[src]!r}); "
                                f"settle it under one_way", f"{src!r} -> {dst!r}")
            mapping.setdefault(src, dst)
            origin.setdefault(src, i)
    for src, dst in one_way.items():
        mapping[src.lower()] = dst.lower()
        columns.setdefault(src.lower(), 0)
    return SwapList(mapping, tuple(groups), columns, path.stem)


@dataclass
class CounterfactualConfig:
    """How counterfactual copies are made."""

    swaps: str = "gender_en"
    """A shipped swap list name or a YAML file."""
    mode: str = "add"
    """'add': keep every original and add a swapped copy of each example that has a term;
    'replace': swap in place."""
    roles: tuple[str, ...] = ("user", "assistant")
    """Which messages are swapped (a system persona usually stays)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        self.roles = tuple(self.roles)


def counterfactual(examples: list[Example], config: CounterfactualConfig | None = None
                   ) -> tuple[list[Example], list[dict]]:
    """Counterfactual copies of ``examples``.

    Returns:
        ``(examples out, made)``: with mode 'add' the originals followed by the copies; every copy has
        ``meta["provenance"] = {"method": "counterfactual", "swaps": list name, "source_id", "swapped": n}``.
        ``made`` lists ``{"id", "swapped"}`` per swapped example.
    """
    config = config or CounterfactualConfig()
    swaps = load_swap_list(config.swaps)
    copies, made = [], []
    for ex in examples:
        messages, total = [], 0
        for m in ex.messages:
            if m["role"] in config.roles:
                text, n = swaps.swap(m["content"])
                total += n
                messages.append({"role": m["role"], "content": text})
            else:
                messages.append(dict(m))
        if not total:
            copies.append(None)
            continue
        meta = dict(ex.meta)
        for key in ("instruction", "input"):  # the Alpaca template renders these verbatim
            if isinstance(meta.get(key), str):
                meta[key] = swaps.swap(meta[key])[0]
        source = example_id(ex)
        meta["provenance"] = {"method": "counterfactual", "swaps": swaps.name, "source_id": source, "swapped": total}
        if "id" in meta:
            meta["id"] = f"{meta['id']}-cf"
        copies.append(Example(messages, meta))
        made.append({"id": source, "swapped": total})
    if config.mode == "replace":
        return [c if c is not None else ex for ex, c in zip(examples, copies)], made
    return list(examples) + [c for c in copies if c is not None], made
