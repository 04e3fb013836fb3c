"""self_consistency: sample k chains of thought for one prompt as ONE batch, read each chain's
answer, return the majority (Wang et al., 2023). Composes :mod:`.cot` (the prompt), sampling
(temperature / top-p in :func:`acculturate.decode.generate`) and :func:`.voting.majority_vote`.

The prompt is prefilled once and its KV cache copied to the k rows (``generate(..., n=k)``), so k
chains cost one prefill plus k-row decoding steps; ``bench/self_consistency.py`` measures it
against k separate calls (docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from acculturate.data import Example
from acculturate.decode import GenerationConfig
from acculturate.prompting import cot
from acculturate.prompting.tasks import Task
from acculturate.prompting.trace import StrategyResult, Trace
from acculturate.prompting.voting import majority_vote


@dataclass
class SelfConsistencyConfig:
    """k sampled chains and a vote."""

    samples: int = 5
    """Chains (k)."""
    temperature: float = 0.7
    """Wang et al. sample with T=0.5-0.7."""
    top_p: float = 0.95
    top_k: int = 0
    seed: int | None = 0
    """None: torch's global RNG (not reproducible)."""
    cot: cot.CoTConfig = field(default_factory=cot.CoTConfig)
    """How each chain is prompted."""

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"samples: expected >= 1, got {self.samples}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0 (sampling), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p}")


def run(model, tokenizer, task: Task, example: Example,
        config: SelfConsistencyConfig | None = None) -> StrategyResult:
    """Sample ``config.samples`` chains in one batch and vote.

    Returns:
        StrategyResult; ``extra["votes"]`` is ``{answer: count}`` (most votes first),
        ``extra["chains"]`` each chain's answer (None where a chain gave none).
    """
    config = config or SelfConsistencyConfig()
    trace = Trace()
    prompt, exemplar_ids = cot.build_prompt(tokenizer, task, example, config.cot)
    generation = GenerationConfig(max_new_tokens=config.cot.max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p, top_k=config.top_k, seed=config.seed,
                                  batch_size=config.samples)
    outs = trace.generate(model, tokenizer, [prompt], generation, "chain", n=config.samples)
    answers = [task.extract(o.text, fallback="last") for o in outs]
    winner, votes = majority_vote(answers, task.vote_key)
    trace.log("vote", votes=votes)
    return StrategyResult(winner, trace.finish(), {"votes": votes, "chains": [task.display(a) for a in answers],
                                                  "exemplars": exemplar_ids})
