"""zero_shot: ask the question once, greedily, with an optional system persona ("You are a local of {region}")."""

from __future__ import annotations

from dataclasses import dataclass

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting.prompts import region_of, render, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace


@dataclass
class ZeroShotConfig:
    """Direct answer, no examples."""

    persona: str | None = None
    """A name in personas.yaml (e.g. 'local') or the persona's text."""
    region: str | None = None
    """Fills the persona's {region}; default: the question's region."""
    template: str = "chat"
    """'chat' (the model's chat template) or 'alpaca'."""
    max_new_tokens: int = 48
    """A direct answer is short."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")


def run(model, tokenizer, task: Task, example: Example, config: ZeroShotConfig | None = None) -> StrategyResult:
    """Answer ``example`` directly.

    Returns:
        StrategyResult whose answer is extracted from the reply (its first line for short answers).
    """
    config = config or ZeroShotConfig()
    trace = Trace()
    system = system_prompt(config.persona, region_of(example, config.region))
    prompt = render(tokenizer, [{"role": "user", "content": example.meta["prompt"]}], system, config.template)
    out = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.max_new_tokens), "answer")[0]
    return StrategyResult(task.extract(out.text, fallback="first"), trace.finish(), {"system": system})
