"""What a strategy did: every prompt it sent, every completion, tokens and time; and what it answered."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from acculturate.decode import Completion, GenerationConfig, generate


@dataclass
class Call:
    """One completion requested from the model.

    Attributes:
        step: what the completion was for ("answer", "thought", "value", "critique", "revise", ...).
        prompt: the rendered prompt text exactly as the model saw it.
        completion: the generated text (stop strings cut off, special tokens dropped).
        prompt_tokens, completion_tokens: token counts (the EOS token counts as generated).
        finish_reason: "eos", "stop" or "length".
        cached_tokens: prompt tokens not prefilled for this completion (it shared the KV cache of
            an identical prompt in its batch, e.g. the other chains of self-consistency).
        batch: index of the generate() call this completion was part of; completions of one batch
            share ``seconds``.
        seconds: wall time of that whole batch.
    """

    step: str
    prompt: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    batch: int
    seconds: float
    cached_tokens: int = 0


@dataclass
class Trace:
    """The record of one strategy run. Create it when the run starts; ``finish()`` stamps the time.

    Attributes:
        calls: every completion, in the order requested.
        events: anything else the strategy did that is not a model call (a sandbox run, a vote).
        seconds: wall time from creation to ``finish()`` (model calls, sandbox runs, everything).
    """

    calls: list[Call] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)
    _batches: int = field(default=0, repr=False)

    def generate(self, model, tokenizer, prompts: Sequence[str], config: GenerationConfig,
                 step: str, n: int = 1) -> list[Completion]:
        """:func:`acculturate.decode.generate` that records each prompt and completion.

        Args:
            model, tokenizer: as for generate.
            prompts: rendered prompts, generated together as one batched call.
            config: decoding settings (``batch_size >= len(prompts) * n`` for one batch).
            step: label stored with each call.
            n: samples per prompt (they share the prompt's prefill, see ``generate``).

        Returns:
            The completions, ``n`` per prompt, in the order of ``prompts``.
        """
        start = time.perf_counter()
        outs = generate(model, tokenizer, list(prompts), config, n=n)
        seconds = time.perf_counter() - start
        for i, out in enumerate(outs):
            self.calls.append(Call(step, prompts[i // n], out.text, out.prompt_tokens, out.completion_tokens,
                                   out.finish_reason, self._batches, seconds, out.cached_tokens))
        self._batches += 1
        return outs

    def log(self, kind: str, **data: Any) -> None:
        """Record a non-model event (``kind`` plus JSON-able fields)."""
        self.events.append({"kind": kind, **data})

    def finish(self) -> "Trace":
        """Stamp the total wall time; returns self so a strategy can ``return StrategyResult(a, trace.finish())``."""
        self.seconds = time.perf_counter() - self._start
        return self

    @property
    def completion_tokens(self) -> int:
        """Tokens generated over all calls."""
        return sum(c.completion_tokens for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens over all calls (each sample of a repeated prompt counts, prefilled or not)."""
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens that were not prefilled: they reused an identical prompt's KV cache."""
        return sum(c.cached_tokens for c in self.calls)

    def to_dict(self) -> dict:
        """JSON-able form: calls, events, totals."""
        return {"seconds": round(self.seconds, 4), "completion_tokens": self.completion_tokens,
                "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens, "batches": self._batches,
                "calls": [asdict(c) for c in self.calls], "events": list(self.events)}


@dataclass
class StrategyResult:
    """A strategy's answer and how it got there.

    Attributes:
        answer: the extracted final answer (a float for numbers, a str for short answers and option
            letters), or None when the strategy could not find one.
        trace: every model call and the wall time.
        extra: strategy-specific detail: the vote distribution, the tree, the critique rounds,
            the program and its output.
    """

    answer: Any
    trace: Trace
    extra: dict = field(default_factory=dict)
