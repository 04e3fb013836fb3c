"""Rewards that need a stage to the right of ``feedback``: a judge model's rubric score
(``evaluate.judge``), and :func:`build_reward`, the reward factory of jobs and the CLI over
:data:`REWARD_KINDS` (the kinds of ``feedback.rewards.REWARD_KINDS`` plus ``judge``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acculturate.adapters import adapter_registry
from acculturate.config_loading import ConfigError, from_dict
from acculturate.data.templates import render_prompt
from acculturate.decode import GenerationConfig, generate
from acculturate.evaluate.judge import REPLY_PREFIX, judge_messages, load_rubrics, parse_judgement
from acculturate.feedback.rewards import REWARD_KINDS as FEEDBACK_REWARD_KINDS
from acculturate.feedback.rewards import RewardFn, checked, last_user_turn, reward_function


@dataclass
class JudgeRewardConfig:
    """``{kind: judge, region: UK}``: a model rates each answer 1-5 on the region's rubric; the
    reward is ``(score - 3) / 2`` in [-1, 1]."""

    region: str = "default"
    """Whose rubric (``resources/rubrics.yaml``); ``default`` for the generic one."""
    rubrics: str | None = None
    """A rubrics YAML of your own (default: the shipped one)."""
    judge_adapter: str | None = None
    """Which adapter of the model judges (None: the base model, so the policy never grades itself)."""
    unparsed_reward: float = 0.0
    """The reward when no score 1-5 can be read from the judge's reply."""
    max_new_tokens: int = 24
    """Tokens the judge may write."""
    batch_size: int = 8
    """Answers judged per generate call."""


def judge_reward(model, tokenizer, config: JudgeRewardConfig | None = None) -> RewardFn:
    """A reward from a judge model's 1-5 rubric score, mapped to ``(score - 3) / 2``.

    The question is the last user turn of the rendered prompt (ChatML or Alpaca), so any prompt
    ``train_ppo`` sees can be judged. Greedy decoding: the same answer always gets the same score.
    """
    config = config or JudgeRewardConfig()
    rubrics = load_rubrics(config.rubrics)
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        judge_prompts = [render_prompt(judge_messages(last_user_turn(p), c, config.region, rubrics), tokenizer, "chat")
                         + REPLY_PREFIX for p, c in zip(prompts, completions)]
        with adapter_registry(model).using(config.judge_adapter):
            replies = generate(model, tokenizer, judge_prompts, gen)
        out = []
        for reply in replies:
            score, _ = parse_judgement(REPLY_PREFIX + reply.text)
            out.append(config.unparsed_reward if score is None else (score - 3) / 2)
        return out

    return checked(reward, f"judge reward ({config.region})")


def _build_judge(spec: dict, model=None, tokenizer=None, **_) -> RewardFn:
    if model is None or tokenizer is None:
        raise ConfigError("reward.kind judge: needs a loaded model to judge with")
    return judge_reward(model, tokenizer, from_dict(JudgeRewardConfig, spec, "reward"))


REWARD_KINDS = {**FEEDBACK_REWARD_KINDS, "judge": _build_judge}
"""Every reward kind a job config can name: ``feedback.rewards.REWARD_KINDS`` plus ``judge``."""


def build_reward(spec, *, model=None, tokenizer=None, base_dir: Path | None = None) -> RewardFn:
    """:func:`acculturate.feedback.rewards.reward_function` over :data:`REWARD_KINDS` (``{kind: judge,
    ...}``, :class:`JudgeRewardConfig`, judges with ``model``)."""
    return reward_function(spec, model=model, tokenizer=tokenizer, base_dir=base_dir, kinds=REWARD_KINDS)
