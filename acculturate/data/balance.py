"""Balancing by a group field: report the distribution, then down-sample, up-sample or up-weight
to a target distribution.

The group is a ``meta`` field (``country``, ``topic``, ``lang``...) or a detected attribute from
``ATTRIBUTES``: ``gender`` counts the gendered terms of a swap list (male / female / mixed / none).

Modes:
- ``downsample``: the largest data set with the target proportions that every group can fill.
- ``upsample``: repeat rows of small groups (seeded draws) until the target proportions hold at the
  size of the largest group. Copies carry ``meta["copy_of"]``.
- ``weight``: keep every row and record ``meta["weight"]`` = target share / observed share, so the
  weighted counts follow the target. ``acculturate train`` multiplies each example's token losses
  by its weight (:func:`acculturate.train.loss.loss_sum`).
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from acculturate.data.example import Example
from acculturate.data.counterfactual import load_swap_list
from acculturate.data.summary import example_id, text_of

MODES = ("downsample", "upsample", "weight")


def detect_gender(example: Example, swaps: str = "gender_en") -> str:
    """``male``/``female`` when only that column's terms of the swap list occur, ``mixed`` for both,
    ``none`` for neither (group names come from the list's ``groups``)."""
    swap_list = _swap_list(swaps)
    a, b = swap_list.group_counts(text_of(example))
    if a and b:
        return "mixed"
    if a or b:
        return swap_list.groups[0 if a else 1]
    return "none"


@functools.lru_cache(maxsize=8)
def _swap_list(name: str):
    return load_swap_list(name)


# Detected attributes, by the name a user gives as the group field.
ATTRIBUTES = {"gender": detect_gender}


def group_value(example: Example, group: str) -> str:
    """The example's group: a detected attribute of ``ATTRIBUTES`` or ``meta[group]`` ("None" if absent)."""
    if group in ATTRIBUTES and group not in example.meta:
        return ATTRIBUTES[group](example)
    return str(example.meta.get(group))


@dataclass
class BalanceConfig:
    """What to balance and towards what."""

    group: str = "country"
    """A meta field or a detected attribute (``gender``)."""
    mode: str = "downsample"
    """'downsample', 'upsample' or 'weight' (see the module docstring)."""
    target: dict[str, float] = field(default_factory=dict)
    """Target share per group (normalized to sum to 1); empty: every observed group equally.
    Observed groups missing from a non-empty target are dropped (downsample/upsample) or weighted 0."""
    seed: int = 0
    """Seed of the sampling."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for name, share in self.target.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
                raise ValueError(f"target[{name!r}]: expected a share >= 0, got {share!r}")
        if self.target and not sum(self.target.values()) > 0:
            raise ValueError("target: the shares must not all be 0")


def target_shares(counts: dict[str, int], target: dict[str, float]) -> dict[str, float]:
    """The target as shares summing to 1 over groups (uniform over observed groups when empty)."""
    if not target:
        return {g: 1 / len(counts) for g in counts}
    total = sum(target.values())
    return {str(g): s / total for g, s in target.items()}


def balance(examples: list[Example], config: BalanceConfig) -> tuple[list[Example], dict]:
    """Balance ``examples`` by ``config.group``.

    Returns:
        ``(examples out, report)``; the report has ``observed``, ``target`` (shares), ``result``
        (counts, or weighted counts for 'weight') per group, and ``mode``.

    Raises:
        ValueError: a target group that no example has (nothing to sample it from), with the observed groups.
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_group[group_value(ex, config.group)].append(i)
    counts = {g: len(ix) for g, ix in by_group.items()}
    shares = target_shares(counts, config.target)
    missing = sorted(g for g, s in shares.items() if s > 0 and g not in counts)
    if missing and config.mode != "weight":
        raise ValueError(f"target: groups {missing} have no examples to sample from; observed groups: {sorted(counts)}")
    rng = random.Random(config.seed)
    report = {"group": config.group, "mode": config.mode, "observed": dict(sorted(counts.items())),
              "target": {g: round(s, 4) for g, s in sorted(shares.items())}}
    if config.mode == "weight":
        total = len(examples)
        weights = {g: (shares.get(g, 0.0) * total / n) for g, n in counts.items()}
        out = []
        for ex in examples:
            w = weights[group_value(ex, config.group)]
            out.append(Example(ex.messages, {**ex.meta, "weight": round(w * float(ex.meta.get("weight", 1.0)), 6)}))
        report["result"] = {g: round(weights[g] * counts[g], 3) for g in sorted(counts)}
        return out, report
    active = {g: s for g, s in shares.items() if s > 0}
    if config.mode == "downsample":
        size = min(counts[g] / s for g, s in active.items())        # the largest set every group can fill
    else:
        size = max(counts[g] / s for g, s in active.items())        # the smallest set no group must shrink in
    chosen: list[tuple[int, bool]] = []   # (row, is a copy)
    for g, s in active.items():
        want = int(math.floor(size * s + 1e-9))
        ix = by_group[g]
        if want <= len(ix):
            chosen += [(i, False) for i in sorted(rng.sample(ix, want))]
        else:
            chosen += [(i, False) for i in ix]
            chosen += [(i, True) for i in sorted(rng.choices(ix, k=want - len(ix)))]
    chosen.sort()   # file order, copies after originals
    out = []
    for i, is_copy in chosen:
        ex = examples[i]
        if is_copy:
            ex = Example([dict(m) for m in ex.messages], {**ex.meta, "copy_of": example_id(ex)})
        out.append(ex)
    report["result"] = dict(sorted(Counter(group_value(ex, config.group) for ex in out).items()))
    return out, report
