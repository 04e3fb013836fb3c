"""Seeded data order for loops that take a fixed number of steps over a list of any length."""

from __future__ import annotations

import torch


def cycle_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The ``batch_size`` item indices of step ``step`` (0-based) when batches walk through a fresh
    seeded shuffle of ``range(n)`` on every pass, wrapping into the next pass as needed.

    A pure function of ``(n, batch_size, seed, step)``, so a resumed loop sees the same items.
    """
    if n < 1:
        raise ValueError("cycle_indices: no items to draw from")
    indices: list[int] = []
    position = step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        take = min(batch_size - len(indices), n - offset)
        indices += order[offset:offset + take]
        position += take
    return indices
