"""Learning-rate schedule: linear warm-up, then cosine decay (pure functions of the step)."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """The LR multiplier for optimizer step ``step`` (0-based).

    Warm-up rises linearly to 1 so that the first step already moves (``(step + 1) / warmup_steps``,
    not HF's ``step / warmup_steps`` that spends step 0 at LR 0); then a half cosine falls from 1
    towards ``min_ratio``, which it would reach one step after the last (the last step keeps a small
    non-zero LR).

    Args:
        step: the optimizer step about to be taken, 0-based.
        warmup_steps: steps of linear warm-up (0 for none).
        total_steps: all optimizer steps of the run.
        min_ratio: the floor of the cosine, as a fraction of the peak LR.
    Returns:
        A multiplier in ``[min_ratio, 1]``.
    """
    if total_steps < 1:
        raise ValueError(f"warmup_cosine: total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_cosine: warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)   # in [0, 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine_lambda(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """:func:`warmup_cosine` with its shape fixed, for ``torch.optim.lr_scheduler.LambdaLR``."""
    warmup_cosine(0, warmup_steps, total_steps, min_ratio)   # validate now, not at the first step
    return partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)


def warmup_steps_for(ratio: float, total_steps: int) -> int:
    """Warm-up steps for a warm-up ``ratio`` of ``total_steps`` (rounded up, as HF does)."""
    return min(total_steps, math.ceil(ratio * total_steps))
