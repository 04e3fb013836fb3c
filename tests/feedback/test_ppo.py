"""train_ppo: mechanics on a tiny random Llama (config errors, references, resume after a crash), and
on the real default model: a rule reward the base model rarely meets is learned in a few steps."""

import pytest
import torch

from acculturate.adapters import LoRAConfig, adapter_registry, apply_lora, lora_state_dict
from acculturate.config_loading import ConfigError, from_dict
from acculturate.feedback.ppo import REFERENCE_COPY, PPOConfig, train_ppo
from acculturate.feedback.rewards import RewardError
from acculturate.io import read_jsonl_by_key

QUESTIONS = ["Name a fruit.", "What colour is the sky?", "Give me a synonym for happy.", "What is the capital of Italy?",
             "Name an animal that lives in the sea.", "Suggest a name for a cat.", "What do bees make?",
             "Name a musical instrument."]


def tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer random Llama with the default model's vocabulary: mechanics only, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=2, bos_token_id=1, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")))
    return model


def length_reward(prompts, completions):
    return [min(len(c), 40) / 40 for c in completions]


SMALL = dict(steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=4, generation_batch_size=4)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    from acculturate.data.templates import render_prompt

    return [render_prompt(q, tokenizer, "chat") for q in QUESTIONS]


@pytest.mark.parametrize("fields, message", [
    ({"batch_size": 8, "mini_batch_size": 3}, "PPOConfig.mini_batch_size: expected a divisor of batch_size=8"),
    ({"gamma": 1.5}, "PPOConfig.gamma: expected a number in [0, 1]"),
    ({"lr": 0}, "PPOConfig.lr: expected a number > 0"),
    ({"steps": 0}, "PPOConfig.steps: expected an integer >= 1"),
    ({"target_kl": -1}, "PPOConfig.target_kl: expected None or a number >= 0"),
    ({"top_p": 0}, "PPOConfig.top_p: expected a number in (0, 1]"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError) as e:
        PPOConfig(**fields)
    assert message in str(e.value)


def test_config_from_yaml_dicts_names_the_field():
    with pytest.raises(ConfigError, match="kl_coef: expected a number, got str"):
        from_dict(PPOConfig, {"kl_coef": "lots"})
    with pytest.raises(ConfigError, match="clip: unknown field"):
        from_dict(PPOConfig, {"clip": 0.2})
    assert from_dict(PPOConfig, {"stop": ["\n"], "lr": "1e-4"}).lr == 1e-4


def test_needs_an_active_adapter_and_a_well_formed_reward(tokenizer, prompts):
    from transformers import LlamaConfig, LlamaForCausalLM

    bare = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="no active LoRA adapter"):
        train_ppo(bare, tokenizer, prompts, length_reward, PPOConfig(**SMALL), progress=False)
    model = tiny_model(len(tokenizer))
    with pytest.raises(RewardError, match="returned 1 rewards for 4 completions"):
        train_ppo(model, tokenizer, prompts, lambda p, c: [1.0], PPOConfig(**SMALL), progress=False)
    assert REFERENCE_COPY not in adapter_registry(model)   # cleaned up after the failure too


def test_initial_reference_starts_at_zero_kl_and_base_reference_does_not(tokenizer, prompts):
    model = tiny_model(len(tokenizer))
    with torch.no_grad():   # move the adapter off B = 0 so that it differs from the base model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in lora_state_dict(model).items()}
    initial = train_ppo(model, tokenizer, prompts, length_reward, PPOConfig(**{**SMALL, "steps": 1}), progress=False)
    # Before the first update the policy is its own frozen copy: logp == logp_ref token for token.
    assert initial.history[0]["kl"] == 0.0 and initial.reference == "initial"
    assert REFERENCE_COPY not in adapter_registry(model)
    after = lora_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)   # the update moved the adapter
    base = train_ppo(model, tokenizer, prompts, length_reward, PPOConfig(**{**SMALL, "steps": 1}),
                     reference="base", progress=False)
    assert base.history[0]["kl"] != 0.0 and base.reference is None
    for key in ("reward_mean", "reward_std", "clip_fraction", "approx_kl", "entropy", "value_loss", "policy_loss"):
        assert key in base.history[0]


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(tokenizer, prompts, tmp_path):
    config = PPOConfig(**{**SMALL, "steps": 4, "save_every": 2})
    whole = tiny_model(len(tokenizer))
    straight = train_ppo(whole, tokenizer, prompts, length_reward, config, tmp_path / "a", progress=False)

    def crash_at_step_3(row):
        if row["step"] == 3:
            raise KeyboardInterrupt("simulated kill")

    crashed = tiny_model(len(tokenizer))
    with pytest.raises(KeyboardInterrupt):
        train_ppo(crashed, tokenizer, prompts, length_reward, config, tmp_path / "b", progress=False,
                  on_step=crash_at_step_3)
    resumed_model = tiny_model(len(tokenizer))     # a new process: fresh model, new random adapter
    resumed = train_ppo(resumed_model, tokenizer, prompts, length_reward, config, tmp_path / "b", resume=True,
                        progress=False)
    assert resumed.resumed_from_step == 2
    a, b = lora_state_dict(whole), lora_state_dict(resumed_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = {"step_time_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.history] == \
           [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]
    logged = read_jsonl_by_key(tmp_path / "b" / "metrics.jsonl", key="step")
    assert sorted(logged) == [1, 2, 3, 4]
    # A different config does not silently continue.
    with pytest.raises(ValueError, match="PPOConfig.kl_coef was 0.05 there and is 0.5 now"):
        train_ppo(tiny_model(len(tokenizer)), tokenizer, prompts, length_reward,
                  PPOConfig(**{**SMALL, "steps": 4, "save_every": 2, "kl_coef": 0.5}), tmp_path / "b",
                  resume=True, progress=False)


@pytest.mark.slow
def test_ppo_on_the_real_model_learns_a_first_word_rule(fresh_model, prompts):
    """Reward 1 when the answer starts with "The": the base model does so with mean probability
    ~0.26 on these prompts. Three PPO steps (8 rollouts each, 3 tokens) must raise that probability,
    measured exactly (a forward pass, no sampling), and raise the rollouts' reward."""
    model, tokenizer = fresh_model
    the = tokenizer("The", add_special_tokens=False)["input_ids"][0]

    @torch.no_grad()
    def p_the() -> float:
        rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return sum(float(model(torch.tensor([r])).logits[0, -1].softmax(-1)[the]) for r in rows) / len(rows)

    torch.manual_seed(0)
    apply_lora(model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj")))
    before_p = p_the()
    before = {k: v.clone() for k, v in lora_state_dict(model).items()}
    config = PPOConfig(steps=3, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=3, lr=2e-3, kl_coef=0.05)
    result = train_ppo(model, tokenizer, prompts, lambda p, c: [1.0 if x.startswith("The") else 0.0 for x in c],
                       config, progress=False)
    after_p = p_the()
    assert any(not torch.equal(before[k], v) for k, v in lora_state_dict(model).items())
    # Measured here (shared machine, seed 0): P(The) 0.26 -> 0.50; rollout reward 0.125, 0.5, 0.625.
    assert after_p > before_p + 0.1, (before_p, after_p)
    rewards = result.reward_means()
    assert rewards[-1] > rewards[0], rewards
    assert result.history[-1]["kl"] > 0      # it moved away from the reference, and the penalty sees it
