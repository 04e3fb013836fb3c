"""cot: chain-of-thought. ``zero``: "Let's think step by step." as the start of the reply (Kojima et
al., 2022); ``exemplar``: worked solutions as earlier turns (Wei et al., 2022). Either way the reply
ends with "The answer is X.", from which the answer is read."""

from __future__ import annotations

from dataclasses import dataclass

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import SELECTIONS, exemplar_turns, region_of, render, select_exemplars, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace

MODES = ("zero", "exemplar")
INSTRUCTION = "{question}\nThink step by step, then finish with a line \"The answer is ...\"."
TRIGGER = "Let's think step by step."


@dataclass
class CoTConfig:
    """Reason first, then answer."""

    mode: str = "zero"
    """'zero' (trigger phrase) or 'exemplar' (k worked solutions)."""
    k: int = 2
    """Exemplars in 'exemplar' mode."""
    selection: str = "static"
    """'static' or 'similar' (as in few_shot)."""
    seed: int = 0
    persona: str | None = None
    region: str | None = None
    template: str = "chat"
    max_new_tokens: int = 160
    """Room for the reasoning."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection: expected one of {SELECTIONS}, got {self.selection!r}")
        if self.k < 0 or (self.mode == "exemplar" and self.k < 1):
            raise ValueError(f"k: expected >= 1 in exemplar mode, got {self.k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


def build_prompt(tokenizer, task: Task, example: Example, config: CoTConfig) -> tuple[str, list[str]]:
    """The chain-of-thought prompt for ``example`` (shared by self_consistency and critique_refine).

    Returns:
        (rendered prompt, exemplar ids).
    """
    exemplars = select_exemplars(task, example, config.k, config.selection, config.seed) \
        if config.mode == "exemplar" else []
    messages = exemplar_turns(exemplars, "question", "solution", INSTRUCTION.replace("{question}", "{}"))
    messages.append({"role": "user", "content": INSTRUCTION.format(question=example.meta["question"])})
    system = system_prompt(config.persona, region_of(example, config.region))
    prefill = TRIGGER + "\n" if config.mode == "zero" else ""
    return render(tokenizer, messages, system, config.template, prefill), [e.meta["id"] for e in exemplars]


def run(model, tokenizer, task: Task, example: Example, config: CoTConfig | None = None) -> StrategyResult:
    """Reason step by step (greedy) and read the final answer.

    Returns:
        StrategyResult; ``extra["reasoning"]`` is the full reply.
    """
    config = config or CoTConfig()
    trace = Trace()
    prompt, exemplar_ids = build_prompt(tokenizer, task, example, config)
    out = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens),
                         "reasoning")[0]
    return StrategyResult(task.extract(out.text, fallback="last"), trace.finish(),
                          {"reasoning": out.text, "exemplars": exemplar_ids})
