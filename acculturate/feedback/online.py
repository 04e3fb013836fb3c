"""The online loop's data: feedback rows since the last update -> rewards, SFT examples and a guard slice.

One learning round (``acculturate learn``, :func:`acculturate.jobs.learn.learn_round`) reads the
feedback stored since the current version was made, and splits it here:

- ``rewards``: one reward-labelled (prompt, completion) row per judgement (+1 ``correct_cultural``,
  -1 ``inappropriate``, -0.5 for a completion the user adjusted) and one for each user rewrite
  (+0.5), from :func:`acculturate.feedback.store.reward_rows`;
- ``sft``: supervised examples, the user's corrected text as the target of an ``adjustment``
  (and, with ``positives``, answers the user marked ``correct_cultural``: filtered behaviour
  cloning, as in rejection-sampling fine-tuning, Dong et al. 2023, arXiv:2304.06767);
- ``guard``: a held-apart slice of the rows (by completion, so one answer's judgement and its
  rewrite stay together), never trained on, on which the candidate is checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from acculturate.data import Example
from acculturate.feedback.store import reward_rows


@dataclass
class RoundData:
    """What one learning round learns from."""

    feedback_ids: list[int]
    """Every feedback row the round consumed (train and guard)."""
    rewards: list[dict]
    """Reward-labelled rows to learn from (see :func:`reward_rows`)."""
    sft: list[Example]
    """Supervised examples (user rewrites, optionally accepted answers)."""
    guard: list[dict] = field(default_factory=list)
    """Held-apart reward rows (never trained on)."""
    prompts: list[str] = field(default_factory=list)
    """The distinct rendered prompts of the training rows (what PPO rolls out on)."""

    @property
    def last_feedback_id(self) -> int:
        return max(self.feedback_ids, default=0)

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for row in self.rewards + self.guard:
            if row["source"] == "model":
                kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        return {"feedback": len(self.feedback_ids), "kinds": kinds, "reward_rows": len(self.rewards),
                "sft_examples": len(self.sft), "guard_rows": len(self.guard), "prompts": len(self.prompts),
                "mean_reward": round(sum(r["reward"] for r in self.rewards if r["source"] == "model")
                                     / max(1, sum(r["source"] == "model" for r in self.rewards)), 4)}


def messages_of(row: dict) -> list[dict] | None:
    """The request's chat messages without a trailing assistant turn, or None for a raw completion."""
    messages = row.get("messages")
    if not messages:
        return None
    return [m for m in messages if isinstance(m, dict) and "role" in m and "content" in m]


def sft_example(row: dict, target: str) -> Example | None:
    """A supervised example that answers the row's request with ``target``.

    A chat request keeps its messages (system persona included) and gets ``target`` as the
    assistant turn; a raw ``/v1/completions`` prompt cannot be re-rendered, so it becomes a single
    user turn only when it has no chat markup. Returns None when neither is possible.
    """
    messages = messages_of(row)
    meta = {"feedback_id": row["feedback_id"], "completion_id": row["completion_id"], "kind": row["kind"]}
    if messages:
        return Example([*messages, {"role": "assistant", "content": target}], meta)
    prompt = row.get("prompt") or ""
    if prompt.strip() and "<|" not in prompt:
        return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": target}], meta)
    return None


def split_round(feedback: list[dict], guard_fraction: float = 0.2, positives: bool = True,
                seed: int = 0) -> RoundData:
    """Turn feedback rows (``FeedbackStore.feedback()``) into a round's training data and guard slice.

    Args:
        feedback: the rows since the last update, oldest first.
        guard_fraction: share of the completions held apart for the guard (0 keeps none).
        positives: also imitate answers marked ``correct_cultural``.
        seed: the hold-out draw.
    Returns:
        :class:`RoundData`.
    """
    if not 0 <= guard_fraction < 1:
        raise ValueError(f"guard_fraction must be in [0, 1), got {guard_fraction!r}")
    rows = list(reward_rows(feedback))
    completions = sorted({(r["completion_id"], r["choice_index"]) for r in rows})
    random.Random(seed).shuffle(completions)
    held = set(completions[:round(guard_fraction * len(completions))]) if len(completions) > 1 else set()
    train = [r for r in rows if (r["completion_id"], r["choice_index"]) not in held]
    guard = [r for r in rows if (r["completion_id"], r["choice_index"]) in held]
    sft = []
    for r in train:
        if r["source"] == "user" or (positives and r["kind"] == "correct_cultural"):
            example = sft_example(r, r["completion"])
            if example is not None:
                sft.append(example)
    prompts = list(dict.fromkeys(r["prompt"] for r in train))
    return RoundData(feedback_ids=sorted({fb["id"] for fb in feedback}), rewards=train, sft=sft,
                     guard=guard, prompts=prompts)
