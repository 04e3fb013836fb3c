"""Hyperparameter search pieces that know nothing about jobs: the search space, how a trial
samples it, how intermediate eval losses reach the pruner, and which GPU each worker gets.

The study itself (data, objective, storage, reports) is :mod:`acculturate.jobs.tune`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Param:
    """One searched field: a range (``low``/``high``, optionally ``log`` or ``step``) or ``choices``.

    Integers are searched as integers when both bounds are integers (``epochs: {low: 1, high: 3}``).
    """

    low: int | float | None = None
    """Lower bound (inclusive)."""
    high: int | float | None = None
    """Upper bound (inclusive)."""
    log: bool = False
    """Sample on a log scale (learning rates); needs ``low > 0``."""
    step: int | float | None = None
    """Grid step of a range (e.g. 0.05); not with ``log``."""
    choices: list[Any] | None = None
    """The values to choose from (batch sizes, ranks, methods); instead of a range."""

    def __post_init__(self):
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range or self.log or self.step is not None:
                raise ValueError("expected either choices or low/high, not both")
            if not isinstance(self.choices, list) or not self.choices:
                raise ValueError(f"choices: expected a non-empty list, got {self.choices!r}")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices: each value may appear once, got {self.choices!r}")
            return
        if self.low is None or self.high is None:
            raise ValueError("expected choices: [...] or both low and high")
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: a log-scale range needs low > 0, got low={self.low!r}")
        if self.log and self.step is not None:
            raise ValueError("step: not allowed with log: true")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step: expected a number > 0, got {self.step!r}")

    @property
    def is_int(self) -> bool:
        return (self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)
                and (self.step is None or isinstance(self.step, int)))

    def values(self) -> list[Any]:
        """Representative values, for validating the space: the choices, or both bounds."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.is_int else [float(self.low), float(self.high)]

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


def suggest(trial, space: dict[str, Param]) -> dict[str, Any]:
    """Sample every parameter of ``space`` from an Optuna trial; returns ``{dotted.field: value}``.

    A trial enqueued with fixed values (the default config, or a retried trial) gets those back.
    """
    values = {}
    for name, p in space.items():
        if p.choices is not None:
            values[name] = trial.suggest_categorical(name, p.choices)
        elif p.is_int:
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step)
    return values


def pruning_hook(trial, examples_per_step: int, *, maximize: bool = False) -> Callable[[int, float], None]:
    """An ``on_eval(step, eval_loss)`` callback for :func:`acculturate.train.train` that reports the
    loss to ``trial`` and stops the run (raises ``optuna.TrialPruned``) when the pruner says so.

    The loss is reported at the number of training examples seen, not the step, so trials with
    different batch sizes are compared after the same amount of data. For a study that maximizes
    (accuracy), the negated loss is reported so that, as for the objective, higher is better.
    """
    import optuna

    def on_eval(step: int, eval_loss: float) -> None:
        if not math.isfinite(eval_loss):
            raise optuna.TrialPruned(f"eval loss {eval_loss} at step {step} (diverged)")
        trial.report(-eval_loss if maximize else eval_loss, step * examples_per_step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({step * examples_per_step} examples): "
                                     f"eval loss {eval_loss:.4f}")

    return on_eval


def assign_devices(workers: int, visible: list[str]) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker: one GPU per trial, round robin.

    Args:
        workers: number of worker processes.
        visible: the GPUs this process may use (indices or UUIDs, in the order of its own
            ``CUDA_VISIBLE_DEVICES`` if set); empty on a CPU-only machine.
    Returns:
        one entry per worker: a single GPU id, or None (CPU: leave the environment as it is).
        With more workers than GPUs, GPUs are shared round robin (two trials on one GPU).
    """
    if workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if not visible:
        return [None] * workers
    return [visible[i % len(visible)] for i in range(workers)]


def visible_gpus(environ: dict[str, str], device_count: int) -> list[str]:
    """The GPU ids workers may be given: ``CUDA_VISIBLE_DEVICES`` when set (so a user's restriction
    is kept), else ``0 .. device_count - 1``."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(device_count)]


def default_workers(gpus: list[str]) -> int:
    """One worker per GPU when there are GPUs; one worker on a CPU machine."""
    return max(1, len(gpus))
