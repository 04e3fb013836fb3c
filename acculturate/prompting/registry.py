"""The strategies by name: ``STRATEGIES[name] = Strategy(run, config class)``, and one entry point."""

from __future__ import annotations

from typing import Callable, NamedTuple

from acculturate.data import Example
from acculturate.prompting import (cot, critique_refine, few_shot, program, rag, self_consistency, tree_of_thought,
                                   zero_shot)
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult


class Strategy(NamedTuple):
    """``run(model, tokenizer, task, example, config) -> StrategyResult`` and its config dataclass."""

    run: Callable[..., StrategyResult]
    config: type


STRATEGIES: dict[str, Strategy] = {
    "zero_shot": Strategy(zero_shot.run, zero_shot.ZeroShotConfig),
    "few_shot": Strategy(few_shot.run, few_shot.FewShotConfig),
    "cot": Strategy(cot.run, cot.CoTConfig),
    "self_consistency": Strategy(self_consistency.run, self_consistency.SelfConsistencyConfig),
    "tree_of_thought": Strategy(tree_of_thought.run, tree_of_thought.TreeOfThoughtConfig),
    "critique_refine": Strategy(critique_refine.run, critique_refine.CritiqueRefineConfig),
    "program": Strategy(program.run, program.ProgramConfig),
    "rag": Strategy(rag.run, rag.RagConfig),
}


def strategy_config(name: str, values: dict | None = None):
    """The config of strategy ``name`` built from a plain dict (YAML), fields checked by name.

    Raises:
        ValueError: an unknown strategy; ConfigError: an unknown field or a bad value.
    """
    from acculturate.config_loading import from_dict

    if name not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {name!r}")
    return from_dict(STRATEGIES[name].config, dict(values or {}), where=name)


def run_strategy(name: str, model, tokenizer, task: Task, example: Example, config=None) -> StrategyResult:
    """Run strategy ``name``; ``config`` is its config object, a dict of its fields, or None (defaults)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {sorted(STRATEGIES)}, got {name!r}")
    if config is None or isinstance(config, dict):
        config = strategy_config(name, config)
    elif not isinstance(config, STRATEGIES[name].config):
        raise TypeError(f"strategy {name}: expected a {STRATEGIES[name].config.__name__}, "
                        f"got {type(config).__name__}")
    return STRATEGIES[name].run(model, tokenizer, task, example, config)
