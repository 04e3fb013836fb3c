"""The online loop's pure parts: splitting feedback into training data and a guard slice, the guard's
verdict, and the simulated user's rule."""

from __future__ import annotations

import pytest

from acculturate.evaluate.guard import GuardConfig, decide
from acculturate.feedback.online import split_round
from acculturate.feedback.simulated import SimulatedUser, strip_region


def fb(i, kind, completion="an answer", corrected=None, messages=True):
    reward = {"correct_cultural": 1.0, "inappropriate": -1.0, "adjustment": -0.5}[kind]
    return {"id": i, "completion_id": f"c{i}", "choice_index": 0, "kind": kind, "reward": reward,
            "corrected_text": corrected, "corrected_reward": 0.5 if corrected else None, "region": None,
            "completion_region": "Indonesia", "comment": None, "prompt": f"<|im_start|>user\nq{i}<|im_end|>\n",
            "messages": [{"role": "user", "content": f"q{i}"}] if messages else None,
            "completion": completion, "model": "online", "adapter": "online", "adapter_version": "online@v0",
            "sampling": {}, "endpoint": "chat.completions", "created_at": 0.0}


def test_split_round_builds_rewards_sft_and_a_held_apart_slice():
    feedback = [fb(1, "correct_cultural", "In Indonesia, rice."), fb(2, "inappropriate"),
                fb(3, "adjustment", corrected="In Indonesia, nasi goreng."), fb(4, "inappropriate"),
                fb(5, "adjustment", corrected="In Indonesia, sate.", messages=False)]
    data = split_round(feedback, guard_fraction=0.0)
    assert data.feedback_ids == [1, 2, 3, 4, 5] and data.guard == []
    # One reward row per judgement plus one per rewrite (+0.5 beside the original's -0.5).
    assert sorted((r["feedback_id"], r["reward"]) for r in data.rewards) == [
        (1, 1.0), (2, -1.0), (3, -0.5), (3, 0.5), (4, -1.0), (5, -0.5), (5, 0.5)]
    # SFT targets: the accepted answer and the chat rewrite; the raw prompt with chat markup is skipped.
    targets = [(ex.messages[0]["content"], ex.messages[-1]["content"]) for ex in data.sft]
    assert targets == [("q1", "In Indonesia, rice."), ("q3", "In Indonesia, nasi goreng.")]
    assert len(data.prompts) == 5 and data.last_feedback_id == 5
    assert data.summary()["kinds"] == {"correct_cultural": 1, "inappropriate": 2, "adjustment": 2}
    assert [ex.messages[-1]["content"] for ex in split_round(feedback, 0.0, positives=False).sft] == [
        "In Indonesia, nasi goreng."]


def test_the_guard_slice_is_held_apart_by_completion():
    feedback = [fb(i, "adjustment", corrected=f"fix {i}") for i in range(1, 11)]
    data = split_round(feedback, guard_fraction=0.3, seed=1)
    held = {r["completion_id"] for r in data.guard}
    trained = {r["completion_id"] for r in data.rewards}
    assert len(held) == 3 and not held & trained and len(trained) == 7
    # A held-apart completion keeps both rows (the judged answer and the user's rewrite) in the guard.
    assert len(data.guard) == 6 and {ex.meta["completion_id"] for ex in data.sft} == trained
    assert split_round(feedback, 0.3, seed=1).guard == data.guard   # seeded
    with pytest.raises(ValueError, match="guard_fraction"):
        split_round(feedback, 1.0)


def test_guard_accepts_within_tolerance_and_rejects_a_regression():
    config = GuardConfig(max_regression={"blend_accuracy": 0.05}, default_max_regression=0.0)
    ok = decide({"blend_accuracy": 0.30, "feedback_logp": -2.0}, {"blend_accuracy": 0.26, "feedback_logp": -1.5},
                config)
    assert ok.accepted and ok.deltas == {"blend_accuracy": -0.04, "feedback_logp": 0.5}
    bad = decide({"blend_accuracy": 0.30}, {"blend_accuracy": 0.24}, config)
    assert not bad.accepted and "REGRESSED" in bad.reasons[0] and "tolerance -0.05" in bad.reasons[0]
    # A metric with no tolerance of its own uses the default (0: any drop rejects).
    assert not decide({"feedback_logp": -1.0}, {"feedback_logp": -1.01}, config).accepted
    # A configured metric that could not be computed, for either side, rejects: the guard fails closed.
    lacking = decide({"blend_accuracy": 0.3}, {"blend_accuracy": 0.3, "feedback_logp": -3.0}, config)
    assert not lacking.accepted and "feedback_logp: could not be computed for the parent" in lacking.reasons[1]
    missing = decide({"blend_accuracy": 0.3, "feedback_logp": -1.0}, {"blend_accuracy": 0.3}, config)
    assert not missing.accepted and "could not be computed for the candidate" in missing.reasons[1]
    assert not decide({"blend_accuracy": 0.3}, {"blend_accuracy": float("nan")}, config).accepted
    # Held-apart feedback off: only blend_accuracy is expected.
    assert decide({"blend_accuracy": 0.3}, {"blend_accuracy": 0.3}, config, expected=config.metrics(False)).accepted
    with pytest.raises(ValueError, match=r"max_regression\['blend_accuracy'\]"):
        GuardConfig(max_regression={"blend_accuracy": -1})


def test_a_guard_with_no_metric_rejects_unless_told_otherwise():
    off = GuardConfig(blend_questions=0, feedback=False)
    assert off.metrics() == []
    refused = decide({}, {}, off)
    assert not refused.accepted and "no guard metric is configured" in refused.reasons[0]
    assert "allow_unguarded" in refused.reasons[0]
    allowed = decide({}, {}, GuardConfig(blend_questions=0, feedback=False, allow_unguarded=True))
    assert allowed.accepted and "accepted unchecked" in allowed.reasons[0]
    # Configured but not computed is not "unguarded": rejected even with allow_unguarded.
    assert not decide({}, {}, GuardConfig(blend_questions=4, allow_unguarded=True)).accepted


def test_simulated_user_rule():
    user = SimulatedUser(region="Indonesia", rule="mentions_region", adjust_probability=1.0)
    assert strip_region("What do people eat for breakfast in Indonesia?", "Indonesia") == \
        "What do people eat for breakfast?"
    assert user.questions and all("indonesia" not in q.text.lower() for q in user.questions)
    q = user.questions[0]
    assert user.judge(q.text, "Indonesian people love it.") == ("correct_cultural", None)
    kind, text = user.judge(q.text, "People eat bread.")
    assert kind == "adjustment" and text == f"In Indonesia, {q.answers[0]}."
    never = SimulatedUser(adjust_probability=0.0)
    assert never.judge(q.text, "People eat bread.") == ("inappropriate", None)
    score = user.reward_fn()
    assert score([f"<|im_start|>user\n{q.text}<|im_end|>"] * 2, ["In Indonesia, rice.", "Rice."]) == [1.0, -1.0]
    correct = SimulatedUser(rule="answers_correctly")
    assert correct.reward(q.text, f"It is {q.answers[0]}.") == 1.0 and correct.reward(q.text, "zzz") == -1.0
    asked, probe = user.split(probe=10)
    assert len(probe) == 10 and not {x.id for x in asked} & {x.id for x in probe}
    with pytest.raises(ValueError, match="rule must be one of"):
        SimulatedUser(rule="vibes")
