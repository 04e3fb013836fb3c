"""The online loop's guard: score a candidate adapter and its parent, accept only if nothing regresses
beyond a threshold.

Metrics (higher is better, each optional):

- ``blend_accuracy``: accuracy on a fixed, seeded slice of BLEnD questions (greedy answers, scored
  by :func:`acculturate.data.is_correct`): the candidate must not lose general cultural knowledge
  while it learns one user's preferences.
- ``feedback_logp``: on the round's held-apart feedback rows (never trained on), the mean of
  ``reward * log p(completion | prompt) / tokens``: it rises when the model makes answers the
  users liked (and their rewrites) more likely and answers they rejected less likely. Per-token
  log-probabilities are clamped to [-10, 0] per row so one very unlikely rejected answer cannot
  dominate the mean.

The guard fails closed: a metric it is configured to measure that could not be computed (for the
candidate or for the parent) rejects the candidate, and a guard with no metric at all rejects every
candidate unless ``allow_unguarded: true`` says that is meant.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from acculturate.data import load_blend
from acculturate.decode import GenerationConfig
from acculturate.decode.generate import encode_prompts
from acculturate.evaluate.qa import evaluate_qa

LOGP_FLOOR = -10.0


@dataclass
class GuardConfig:
    """What the guard measures and how much regression it tolerates."""

    blend_questions: int = 24
    """BLEnD questions in the accuracy slice (0: no ``blend_accuracy``)."""
    blend_countries: list[str] = field(default_factory=list)
    """Countries the slice is drawn from (empty: all)."""
    blend_seed: int = 0
    """Seed of the slice draw (a fixed slice keeps parent and candidate comparable across rounds)."""
    max_new_tokens: int = 24
    """Tokens per BLEnD answer."""
    batch_size: int = 8
    """Prompts generated together."""
    feedback: bool = True
    """Score ``feedback_logp`` on the held-apart feedback rows (when the round has any)."""
    max_regression: dict[str, float] = field(default_factory=lambda: {"blend_accuracy": 0.1,
                                                                      "feedback_logp": 0.05})
    """Largest drop (parent - candidate) tolerated per metric; a larger one rejects the candidate."""
    default_max_regression: float = 0.0
    """The tolerance for metrics not named in ``max_regression``."""
    compare_to_root: bool = True
    """Also hold ``blend_accuracy`` to the root version's (``v0``) with the same tolerance, so
    losses each within tolerance cannot add up over many rounds (seen in a real run: 0.25 -> 0.19
    -> 0.12 on 16 questions, every step "ok" against its parent)."""
    allow_unguarded: bool = False
    """Accept candidates when no metric is configured (``blend_questions: 0`` and ``feedback: false``).
    Off by default: a round with nothing to check it is rejected, with that as its reason."""

    def __post_init__(self):
        for name in ("blend_questions", "max_new_tokens", "batch_size", "blend_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in ("max_new_tokens", "batch_size") else 0):
                raise ValueError(f"GuardConfig.{name}: expected a non-negative integer, got {value!r}")
        for metric, value in {**self.max_regression, "default_max_regression": self.default_max_regression}.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"GuardConfig.max_regression[{metric!r}]: expected a number >= 0, got {value!r}")

    def metrics(self, held_apart: bool = True) -> list[str]:
        """The metrics this guard must compute: ``blend_accuracy`` when ``blend_questions`` > 0,
        ``feedback_logp`` when ``feedback`` is on and the round holds feedback apart (``held_apart``)."""
        return (["blend_accuracy"] if self.blend_questions else []) + (
            ["feedback_logp"] if self.feedback and held_apart else [])

    def fingerprint(self) -> dict:
        """What must match for a parent's cached ``blend_accuracy`` to be reused."""
        return {"blend_questions": self.blend_questions, "blend_countries": sorted(self.blend_countries),
                "blend_seed": self.blend_seed, "max_new_tokens": self.max_new_tokens}


@dataclass
class GuardDecision:
    accepted: bool
    reasons: list[str]
    deltas: dict[str, float]


def blend_slice(config: GuardConfig):
    """The fixed BLEnD examples of ``blend_accuracy``."""
    examples = load_blend(countries=config.blend_countries or None)
    random.Random(config.blend_seed).shuffle(examples)
    return examples[:config.blend_questions]


def blend_accuracy(model, tokenizer, config: GuardConfig) -> float:
    if not config.blend_questions:
        raise ValueError("GuardConfig.blend_questions is 0: blend_accuracy is off")
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    return evaluate_qa(model, tokenizer, blend_slice(config), generation, progress=False).accuracy


@torch.no_grad()
def mean_token_logp(model, tokenizer, prompt: str, completion: str) -> float | None:
    """Mean log-probability per token of ``completion`` after ``prompt`` (None if it has no tokens)."""
    prompt_ids = encode_prompts(tokenizer, [prompt])[0]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)                    # (1, P + C)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()              # (C, V)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids):, None])      # (C, 1)
    return float(logp.mean())


def feedback_logp(model, tokenizer, rows: list[dict]) -> float:
    """``mean(reward * clamp(mean token log p))`` over reward rows (see the module docstring)."""
    if not rows:
        raise ValueError("feedback_logp needs at least one held-apart feedback row")
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for row in rows:
        value = mean_token_logp(model, tokenizer, row["prompt"], row["completion"])
        if value is not None:
            total += row["reward"] * max(LOGP_FLOOR, min(0.0, value))
            n += 1
    model.train(was_training)
    if not n:
        raise ValueError("feedback_logp: no held-apart completion has any token")
    return total / n


def guard_metrics(model, tokenizer, config: GuardConfig, guard_rows: list[dict],
                  skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Every metric ``config`` turns on, for the model as it is now (its active adapter)."""
    metrics = {}
    if config.blend_questions and "blend_accuracy" not in skip:
        metrics["blend_accuracy"] = blend_accuracy(model, tokenizer, config)
    if config.feedback and guard_rows and "feedback_logp" not in skip:
        try:
            metrics["feedback_logp"] = feedback_logp(model, tokenizer, guard_rows)
        except ValueError:   # left out: decide() rejects a configured metric that is missing
            pass
    return metrics


def decide(parent: dict[str, float], candidate: dict[str, float], config: GuardConfig,
           expected: list[str] | None = None) -> GuardDecision:
    """Accept ``candidate`` only if every metric was computed for both and none fell below the
    parent's by more than its tolerance.

    Args:
        parent, candidate: metric name -> value (higher is better).
        config: the tolerances and ``allow_unguarded``.
        expected: the metrics that must be there (default ``config.metrics()``); any other metric
            given is checked too.
    Returns:
        :class:`GuardDecision` with one reason per metric (kept, improved, regressed or missing) and
        the deltas ``candidate - parent``.
    """
    names = sorted(set(config.metrics() if expected is None else expected) | set(candidate) | set(parent))
    if not names:
        if config.allow_unguarded:
            return GuardDecision(True, ["no guard metric is configured; accepted unchecked because "
                                        "guard.allow_unguarded is true"], {})
        return GuardDecision(False, ["no guard metric is configured (guard.blend_questions is 0 and "
                                     "guard.feedback is off or no feedback is held apart); set "
                                     "guard.allow_unguarded: true to accept candidates unchecked"], {})
    reasons, deltas, accepted = [], {}, True
    for name in names:
        missing = [who for who, values in (("candidate", candidate), ("parent", parent))
                   if not isinstance(values.get(name), (int, float)) or not math.isfinite(values[name])]
        if missing:
            accepted = False
            reasons.append(f"{name}: could not be computed for the {' and the '.join(missing)} REJECTED")
            continue
        delta = candidate[name] - parent[name]
        deltas[name] = round(delta, 6)
        tolerance = config.max_regression.get(name, config.default_max_regression)
        verdict = "ok" if delta >= -tolerance else "REGRESSED"
        if verdict != "ok":
            accepted = False
        reasons.append(f"{name}: {parent[name]:.4f} -> {candidate[name]:.4f} ({delta:+.4f}, "
                       f"tolerance -{tolerance:g}) {verdict}")
    return GuardDecision(accepted, reasons, deltas)
