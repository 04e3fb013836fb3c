"""Feedback from users: the durable store of served completions and judgements on them, and its
export as reward-labelled rows and preference pairs."""

from acculturate.feedback.store import (
    DEFAULT_DB, FEEDBACK_KINDS, CompletionRecord, FeedbackError, FeedbackKind, FeedbackStore,
    database_url, export_feedback, preference_pairs, reward_rows,
)

__all__ = [
    "DEFAULT_DB", "FEEDBACK_KINDS", "CompletionRecord", "FeedbackError", "FeedbackKind", "FeedbackStore",
    "database_url", "export_feedback", "preference_pairs", "reward_rows",
]
