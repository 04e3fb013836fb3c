"""Prompting strategies: each takes the model explicitly and returns an answer plus a trace.

``run(model, tokenizer, task, example, config) -> StrategyResult``; ``STRATEGIES`` maps names to
(run, config class): zero_shot, few_shot, cot, self_consistency, tree_of_thought, critique_refine,
program (model-written Python run in :mod:`.sandbox`), rag (passages retrieved from an
:mod:`acculturate.rag` index, with citations).
"""

from acculturate.prompting.extract import (ANSWER_KINDS, extract_choice, extract_number, extract_short_answer,
                                           format_number, numbers_match, parse_number)
from acculturate.prompting.registry import STRATEGIES, Strategy, run_strategy, strategy_config
from acculturate.prompting.tasks import TASKS, Task, load_blend_task, load_svamp, load_task
from acculturate.prompting.trace import Call, StrategyResult, Trace
from acculturate.prompting.voting import majority_vote

__all__ = [
    "ANSWER_KINDS", "Call", "STRATEGIES", "Strategy", "StrategyResult", "TASKS", "Task", "Trace",
    "extract_choice", "extract_number", "extract_short_answer", "format_number", "load_blend_task",
    "load_svamp", "load_task", "majority_vote", "numbers_match", "parse_number", "run_strategy",
    "strategy_config",
]
