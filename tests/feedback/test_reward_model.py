"""Reward model: losses on hand values, reading preference data, train/save/load mechanics on a tiny
Llama, and training on real shipped preference pairs with the real default model."""

import json
import math

import pytest
import torch

from acculturate.adapters import LoRAConfig, adapter_registry, apply_lora
from acculturate.data import DataError
from acculturate.feedback.reward_model import (RewardModelConfig, bradley_terry_loss, load_reward_model, pair_scores,
                                               read_preference_pairs, regression_loss, save_reward_model,
                                               train_reward_model)
from acculturate.resources import resource_path

PREFERENCES = "data/preference/instruction-data-with-preference.json"


def test_bradley_terry_and_regression_losses_on_hand_values():
    # -log sigmoid(2 - 1) = log(1 + e^-1) = 0.3132617; -log sigmoid(0) = log 2; mean of the two
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    # A pair ranked the wrong way costs more than the same pair ranked right.
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])) > bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))
    # ((1 - 0.5)^2 + (-1 + 0.5)^2) / 2 = 0.25
    assert regression_loss(torch.tensor([1.0, -1.0]), torch.tensor([0.5, -0.5])).item() == pytest.approx(0.25)


def test_read_the_shipped_pairs_and_the_export_format(tokenizer, tmp_path):
    pairs = read_preference_pairs(resource_path(PREFERENCES), tokenizer)
    assert len(pairs) == 1100
    assert pairs[1]["prompt"].endswith("<|im_start|>assistant\n") and "He go to the park" in pairs[1]["prompt"]
    assert pairs[1]["chosen"] == "He goes to the park every day." and "stupid" in pairs[1]["rejected"]
    export = tmp_path / "preferences.jsonl"
    export.write_text(json.dumps({"prompt": "P", "chosen": "good", "rejected": "bad", "region": None}) + "\n"
                      + json.dumps({"prompt": "P", "chosen": "", "rejected": "bad"}) + "\n")
    with pytest.raises(DataError, match=r"preferences.jsonl:2: field 'chosen': expected a non-empty string"):
        read_preference_pairs(export, tokenizer)
    export.write_text(json.dumps({"prompt": "P", "chosen": "good", "rejected": "bad"}) + "\n")
    assert read_preference_pairs(export, tokenizer) == [{"prompt": "P", "chosen": "good", "rejected": "bad"}]
    shipped_like = tmp_path / "pairs.json"
    shipped_like.write_text(json.dumps([{"instruction": "Say hi", "chosen": "Hello!"}]))
    with pytest.raises(DataError, match="field 'rejected': expected a non-empty string in record 1"):
        read_preference_pairs(shipped_like, tokenizer)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="RewardModelConfig.batch_size: expected an integer >= 1"):
        RewardModelConfig(batch_size=0)
    with pytest.raises(ValueError, match="RewardModelConfig.pair_weight: expected a number > 0 when regression_weight is 0"):
        RewardModelConfig(pair_weight=0, regression_weight=0)


def _tiny(vocab_size: int, lora: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    if lora:
        apply_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")))
    else:
        model.requires_grad_(False)
    return model


PAIRS = [{"prompt": f"Q{i}: ", "chosen": "Thank you, here it is.", "rejected": "Whatever, figure it out."}
         for i in range(6)]
SCORED = [{"prompt": "Q: ", "completion": "Thanks!", "reward": 1.0}, {"prompt": "Q: ", "completion": "No.", "reward": -1.0}]


@pytest.mark.parametrize("with_lora", [True, False])
def test_train_save_load_as_a_reward_function(tokenizer, tmp_path, with_lora):
    model = _tiny(len(tokenizer), with_lora)
    config = RewardModelConfig(max_steps=8, batch_size=4, lr=5e-3, head_lr=5e-2, log_every=2, save_every=4)
    result = train_reward_model(model, tokenizer, PAIRS, SCORED, config, tmp_path / "run", eval_pairs=PAIRS[:2],
                                progress=False)
    assert result.steps == 8 and result.eval_accuracy == 1.0
    assert {"pair_loss", "regression_loss", "train_pair_accuracy"} <= set(result.history[0])
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")) if with_lora else None
    out = save_reward_model(model, result.head, tmp_path / "rm", "tiny", lora, result.score_offset, 64)
    assert (out / "adapter" / "adapter_config.json").exists() == with_lora
    # Load into a fresh copy of the same base (same seed): the adapter joins its registry, scores match.
    fresh = _tiny(len(tokenizer), lora=False)
    reward = load_reward_model(out, fresh, tokenizer)
    scores = reward(["Q0: ", "Q0: "], [PAIRS[0]["chosen"], PAIRS[0]["rejected"]])
    chosen, rejected = pair_scores(model, result.head, tokenizer, PAIRS[:1], 64)
    assert scores == pytest.approx([chosen.item() - result.score_offset, rejected.item() - result.score_offset], abs=1e-5)
    assert scores[0] > scores[1]
    assert (reward.adapter in adapter_registry(fresh)) == with_lora and adapter_registry(fresh).active() is None


def test_load_refuses_a_head_of_another_width(tokenizer, tmp_path):
    from acculturate.feedback.heads import ScalarHead

    model = _tiny(len(tokenizer), lora=False)
    save_reward_model(model, ScalarHead(16), tmp_path / "rm", "tiny", None)
    with pytest.raises(ValueError, match="the head expects hidden size 16, the model has 32"):
        load_reward_model(tmp_path / "rm", model, tokenizer)
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        load_reward_model(tmp_path, model, tokenizer)


@pytest.mark.slow
def test_real_model_learns_the_shipped_preference_pairs(fresh_model):
    """Eight real pairs (polite chosen, impolite rejected), six steps with a LoRA on the real default
    model: the Bradley-Terry loss on those pairs, measured exactly before and after, must fall."""
    model, tokenizer = fresh_model
    pairs = read_preference_pairs(resource_path(PREFERENCES), tokenizer)[:8]
    torch.manual_seed(0)
    apply_lora(model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj")))
    config = RewardModelConfig(max_steps=6, batch_size=4, lr=1e-3, head_lr=5e-3, max_length=128, warmup_ratio=0.0)
    from acculturate.feedback.heads import hidden_size, ScalarHead

    torch.manual_seed(config.seed)
    head = ScalarHead(hidden_size(model))
    before = bradley_terry_loss(*pair_scores(model, head, tokenizer, pairs, 128)).item()
    result = train_reward_model(model, tokenizer, pairs, (), config, head=head, progress=False)
    after = bradley_terry_loss(*pair_scores(model, result.head, tokenizer, pairs, 128)).item()
    assert after < before - 0.05, (before, after)
