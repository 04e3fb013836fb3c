"""Deterministic train/test split, optionally stratified by a meta key or a function."""

from __future__ import annotations

import random
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")


def train_test_split(
    items: Sequence[T],
    test_fraction: float = 0.1,
    seed: int = 0,
    stratify: str | Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Split ``items`` into (train, test); the same seed always gives the same split.

    Args:
        items: the items (Examples, dicts, anything).
        test_fraction: share of items in the test set, 0 < f < 1. Rounded per group; a group (or the
            whole list, unstratified) of at least 2 items gets at least one test item and keeps at
            least one training item.
        seed: seeds the shuffle.
        stratify: group key: the name of a ``meta`` key (or a dict key, for dict items), or a
            function ``item -> key``. Each group is split with the same fraction.

    Returns:
        ``(train, test)``, each in the original order of ``items``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number strictly between 0 and 1, got {test_fraction!r}")
    key = _key_function(stratify)
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    rng = random.Random(seed)
    test_index: set[int] = set()
    for indices in groups.values():  # insertion order: deterministic for a given item order
        n_test = _test_count(len(indices), test_fraction)
        test_index.update(rng.sample(indices, n_test))
    train = [item for i, item in enumerate(items) if i not in test_index]
    test = [item for i, item in enumerate(items) if i in test_index]
    return train, test


def _test_count(n: int, fraction: float) -> int:
    if n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def _key_function(stratify) -> Callable:
    if stratify is None:
        return lambda item: None
    if callable(stratify):
        return stratify
    if isinstance(stratify, str):
        def key(item):
            source = item.meta if hasattr(item, "meta") else item
            try:
                return source[stratify]
            except (KeyError, TypeError):
                raise KeyError(f"stratify: item has no meta key {stratify!r}: {item!r:.200}") from None
        return key
    raise TypeError(f"stratify: expected a meta key name, a function or None, got {type(stratify).__name__}")
