"""critique_refine: answer, let the model critique its answer, revise; repeat until the critique
accepts or ``rounds`` revisions are spent (Madaan et al., 2023, "Self-Refine"). The first answer is
a chain of thought from :mod:`.cot`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting import cot
from acculturate.prompting.prompts import region_of, render, system_prompt
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace

CRITIQUE = ("Question: {question}\n\nProposed answer:\n{answer}\n\n"
            "Check the reasoning and the final answer. If both are right, reply with the single word "
            "CORRECT. Otherwise say what is wrong, in one or two sentences.")
REVISE = ("Question: {question}\n\nPrevious answer:\n{answer}\n\nFeedback:\n{critique}\n\n"
          "Write a corrected solution, step by step, and finish with a line \"The answer is ...\".")
# A critique accepts when it says "correct" and no negation of it ("not correct", "incorrect").
_REJECT = re.compile(r"\b(incorrect|not\s+correct|wrong|mistake|error|however)\b", re.IGNORECASE)
_ACCEPT = re.compile(r"\bcorrect\b", re.IGNORECASE)


@dataclass
class CritiqueRefineConfig:
    """Answer -> critique -> revise loop."""

    rounds: int = 2
    """Most critique+revise rounds."""
    critique_tokens: int = 64
    revise_tokens: int = 160
    answer: cot.CoTConfig = field(default_factory=cot.CoTConfig)
    """How the first answer is produced."""

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds: expected >= 1, got {self.rounds}")
        for name in ("critique_tokens", "revise_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


def accepts(critique: str) -> bool:
    """True when a critique approves the answer ("CORRECT", "The answer is correct.") and does not
    point out a problem ("incorrect", "not correct", "wrong", "mistake", "error", "however")."""
    return bool(_ACCEPT.search(critique)) and not _REJECT.search(critique)


def run(model, tokenizer, task: Task, example: Example,
        config: CritiqueRefineConfig | None = None) -> StrategyResult:
    """Answer, then critique and revise until accepted or out of rounds.

    Returns:
        StrategyResult with the last answer found; ``extra["rounds"]`` holds each round's critique,
        whether it accepted, and the revision; ``extra["stopped"]`` is ``"accepted"`` or ``"rounds"``.
    """
    config = config or CritiqueRefineConfig()
    trace = Trace()
    question = example.meta["question"]
    system = system_prompt(config.answer.persona, region_of(example, config.answer.region))
    prompt, _ = cot.build_prompt(tokenizer, task, example, config.answer)
    text = trace.generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=config.answer.max_new_tokens),
                          "answer")[0].text
    answer = task.extract(text, fallback="last")
    rounds, stopped = [], "rounds"
    for _ in range(config.rounds):
        critique_prompt = render(tokenizer, [{"role": "user", "content": CRITIQUE.format(
            question=question, answer=text.strip())}], system, config.answer.template)
        critique = trace.generate(model, tokenizer, [critique_prompt],
                                  GenerationConfig(max_new_tokens=config.critique_tokens), "critique")[0].text
        if accepts(critique):
            rounds.append({"critique": critique, "accepted": True})
            stopped = "accepted"
            break
        revise_prompt = render(tokenizer, [{"role": "user", "content": REVISE.format(
            question=question, answer=text.strip(), critique=critique.strip())}], system, config.answer.template)
        text = trace.generate(model, tokenizer, [revise_prompt],
                              GenerationConfig(max_new_tokens=config.revise_tokens), "revise")[0].text
        revised = task.extract(text, fallback="last")
        # A revision without a readable answer does not erase the previous one.
        answer = revised if revised is not None else answer
        rounds.append({"critique": critique, "accepted": False, "revision": text,
                       "answer": task.display(revised)})
    return StrategyResult(answer, trace.finish(), {"rounds": rounds, "stopped": stopped})
