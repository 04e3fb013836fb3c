"""few_shot: k solved questions as earlier chat turns, then the question (Brown et al., 2020).
Exemplars are a fixed seeded choice or the pool questions nearest in meaning."""

from __future__ import annotations

from dataclasses import dataclass

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import SELECTIONS, exemplar_turns, region_of, render, select_exemplars, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace


@dataclass
class FewShotConfig:
    """k exemplars with their direct answers."""

    k: int = 3
    """Exemplars."""
    selection: str = "static"
    """'static' (seeded, same for every question) or 'similar' (embeddings)."""
    seed: int = 0
    """Seed of the static choice."""
    persona: str | None = None
    """As in zero_shot."""
    region: str | None = None
    template: str = "chat"
    max_new_tokens: int = 48

    def __post_init__(self):
        if self.k < 0:
            raise ValueError(f"k: expected >= 0, got {self.k}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection: expected one of {SELECTIONS}, got {self.selection!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


def run(model, tokenizer, task: Task, example: Example, config: FewShotConfig | None = None) -> StrategyResult:
    """Answer ``example`` after ``config.k`` solved exemplars.

    Returns:
        StrategyResult; ``extra["exemplars"]`` lists the exemplar ids.
    """
    config = config or FewShotConfig()
    trace = Trace()
    exemplars = select_exemplars(task, example, config.k, config.selection, config.seed)
    messages = exemplar_turns(exemplars, "prompt", "answer_text") + [{"role": "user", "content": example.meta["prompt"]}]
    system = system_prompt(config.persona, region_of(example, config.region))
    prompt = render(tokenizer, messages, system, config.template)
    out = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens), "answer")[0]
    return StrategyResult(task.extract(out.text, fallback="first"), trace.finish(),
                          {"exemplars": [e.meta["id"] for e in exemplars], "system": system})
