"""Feedback from users: the durable store of served completions and judgements on them, its export
as reward-labelled rows and preference pairs, reward functions, reward models, and PPO."""

from acculturate.feedback.store import (
    DEFAULT_DB, FEEDBACK_KINDS, CompletionRecord, FeedbackError, FeedbackKind, FeedbackStore,
    database_url, export_feedback, preference_pairs, reward_rows,
)
from acculturate.feedback.rewards import (
    REWARD_KINDS, RewardError, RewardFn, RewardRule, RulesConfig, feedback_rewards, http_reward, import_reward,
    lookup_reward, reward_function, rules_reward,
)
from acculturate.feedback.reward_model import (
    RewardModel, RewardModelConfig, RewardModelResult, load_reward_model, read_preference_pairs,
    save_reward_model, train_reward_model,
)
from acculturate.feedback.ppo import PPOConfig, PPOResult, train_ppo

__all__ = [
    "DEFAULT_DB", "FEEDBACK_KINDS", "CompletionRecord", "FeedbackError", "FeedbackKind", "FeedbackStore",
    "database_url", "export_feedback", "preference_pairs", "reward_rows",
    # rewards
    "REWARD_KINDS", "RewardError", "RewardFn", "RewardRule", "RulesConfig", "feedback_rewards", "http_reward",
    "import_reward", "lookup_reward", "reward_function", "rules_reward",
    # reward model
    "RewardModel", "RewardModelConfig", "RewardModelResult", "load_reward_model", "read_preference_pairs",
    "save_reward_model", "train_reward_model",
    # PPO
    "PPOConfig", "PPOResult", "train_ppo",
]
