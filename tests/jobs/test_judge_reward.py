"""The judge-model reward (jobs/rewards.py): a real judge run on the default model, and its errors."""

import pytest

from acculturate.config_loading import ConfigError
from acculturate.jobs.rewards import build_reward


def test_judge_needs_a_model_and_valid_fields(tokenizer):
    with pytest.raises(ConfigError, match="reward.kind judge: needs a loaded model"):
        build_reward({"kind": "judge", "region": "UK"})
    with pytest.raises(ConfigError, match="reward.regoin: unknown field"):
        build_reward({"kind": "judge", "regoin": "UK"}, model=object(), tokenizer=tokenizer)
    # Other kinds fall through to feedback.rewards.reward_function.
    assert build_reward({"kind": "rules", "rules": [{"regex": "x"}]})(["p"], ["xyz"]) == [1.0]


@pytest.mark.slow
def test_judge_reward_on_the_real_model(fresh_model):
    from acculturate.adapters import LoRAConfig, adapter_registry
    from acculturate.data import render_prompt

    model, tokenizer = fresh_model
    registry = adapter_registry(model)
    registry.create("policy", LoRAConfig(r=2, alpha=4, dropout=0.0, targets=("q_proj",)))
    reward = build_reward({"kind": "judge", "region": "UK", "max_new_tokens": 6, "unparsed_reward": -7.0},
                          model=model, tokenizer=tokenizer)
    prompt = render_prompt("What do people in the UK usually drink in the afternoon?", tokenizer, "chat")
    scores = reward([prompt, prompt], ["Tea, often with milk.", "Tea, often with milk."])
    # (score - 3) / 2 for a parsed 1-5 score; unparsed_reward (-7) would mean the judge's reply was not
    # read, which is a failure here. Greedy: the same answer, the same score.
    assert all(s in (-1.0, -0.5, 0.0, 0.5, 1.0) for s in scores), scores
    assert scores[0] == scores[1]
    assert registry.active() == "policy"     # the base model judged, and the policy is back
