"""PPO maths against numbers computed by hand (the working is in the comments)."""

import math

import pytest
import torch

from acculturate.feedback.ppo_loss import (entropy_from_logits, gae, kl_penalty_rewards, last_token_index,
                                           masked_mean, policy_loss, token_logprobs, value_loss, whiten)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_kl_penalty_adds_the_score_at_the_last_real_token_only():
    logp = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = t([[-1.5, -2.0, -1.0], [-0.5, -1.0, 7.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalty_rewards(t([1.0, -0.5]), logp, ref, mask, beta=0.1)
    # row 0: kl = [0.5, 0, 0.5] -> -0.1 * kl = [-0.05, 0, -0.05], score 1 at t=2 -> 0.95
    # row 1: kl = [-0.5, 0, (pad)] -> [0.05, 0, 0], score -0.5 at its last real token t=1
    assert torch.allclose(kl, t([[0.5, 0.0, 0.5], [-0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, t([[-0.05, 0.0, 0.95], [0.05, -0.5, 0.0]]))


def test_kl_penalty_with_beta_zero_is_the_score_alone():
    rewards, _ = kl_penalty_rewards(t([2.0]), t([[-1.0, -3.0]]), t([[-2.0, -1.0]]), t([[1, 1]]), beta=0.0)
    assert torch.equal(rewards, t([[0.0, 2.0]]))


def test_gae_three_steps():
    # gamma 0.9, lambda 0.8, values [0.5, 0.6, 0.7], reward 1 at the end:
    # t=2: delta = 1 - 0.7 = 0.3                       A2 = 0.3
    # t=1: delta = 0.9 * 0.7 - 0.6 = 0.03               A1 = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04               A0 = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    assert torch.allclose(adv, t([[0.21712, 0.246, 0.3]]), atol=1e-6)
    assert torch.allclose(ret, t([[0.71712, 0.846, 1.0]]), atol=1e-6)


def test_gae_four_steps_with_intermediate_rewards():
    # gamma 1, lambda 0.5, rewards [0.1, -0.2, 0, 1], values [0.2, 0.1, 0.3, 0.4]:
    # deltas: t3 = 1 - 0.4 = 0.6; t2 = 0.4 - 0.3 = 0.1; t1 = -0.2 + 0.3 - 0.1 = 0; t0 = 0.1 + 0.1 - 0.2 = 0
    # A3 = 0.6, A2 = 0.1 + 0.3 = 0.4, A1 = 0 + 0.2 = 0.2, A0 = 0 + 0.1 = 0.1
    adv, ret = gae(t([[0.1, -0.2, 0.0, 1.0]]), t([[0.2, 0.1, 0.3, 0.4]]), t([[1, 1, 1, 1]]), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, t([[0.1, 0.2, 0.4, 0.6]]), atol=1e-6)
    assert torch.allclose(ret, t([[0.3, 0.3, 0.7, 1.0]]), atol=1e-6)


def test_gae_ends_each_row_at_its_mask_and_ignores_padding_values():
    # Row 0 ends after 2 tokens: the (garbage) values and rewards of its padding must not leak in.
    # gamma = lambda = 1: A_t = sum of rewards from t - V_t; returns = sum of rewards from t = 1.
    rewards = t([[0.0, 1.0, 5.0, 5.0], [0.0, 0.0, 0.0, 2.0]])
    values = t([[0.5, 0.6, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 0, 0], [1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([[0.5, 0.4, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))
    assert torch.allclose(ret, t([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))


def test_whiten_uses_only_real_tokens():
    # real values 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + .25 + .25 + 2.25) / 3 = 5/3
    x, mask = t([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]]), t([[1, 1, 1], [1, 0, 0]])
    std = math.sqrt(5 / 3)
    expected = t([[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]])
    assert torch.allclose(whiten(x, mask), expected, atol=1e-5)
    kept = whiten(x, mask, shift_mean=False)
    assert torch.allclose(kept[0], expected[0] + 2.5, atol=1e-5) and kept[1, 1] == 0


def test_policy_loss_clips_on_both_sides():
    # old logp 0, so r = exp(logp). eps = 0.2, advantages [1, 1, -1, -1], a 5th token is padding.
    #  r=1.5, A=+1: -A r = -1.5, -A clip(r) = -1.2 -> max -1.2 (clipped: no gain beyond 1 + eps)
    #  r=0.5, A=+1: -0.5 vs -0.8                  -> -0.5 (unclipped: a worse action is not excused)
    #  r=1.1, A=-1:  1.1 vs  1.1                  ->  1.1 (inside the range)
    #  r=0.7, A=-1:  0.7 vs  0.8                  ->  0.8 (clipped: no gain beyond 1 - eps)
    # loss = (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clip fraction 2/4
    ratios = [1.5, 0.5, 1.1, 0.7, 50.0]
    logp = torch.log(t([ratios])).requires_grad_(True)
    old = torch.zeros(1, 5)
    adv = t([[1.0, 1.0, -1.0, -1.0, 10.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # approx KL = mean((r - 1) - log r) over the 4 real tokens
    kl = sum((r - 1) - math.log(r) for r in ratios[:4]) / 4
    assert stats["approx_kl"].item() == pytest.approx(kl, abs=1e-6)
    loss.backward()
    # Clipped tokens get no gradient; token 1: d(-A r)/d logp = -A r = -0.5, over 4 tokens = -0.125.
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 3].item() == 0.0 and logp.grad[0, 4].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-0.125, abs=1e-6)


def test_policy_loss_is_minus_the_mean_advantage_at_ratio_one():
    logp = t([[-1.0, -2.0], [-0.3, 0.0]])
    loss, stats = policy_loss(logp, logp.clone(), t([[0.5, -1.5], [2.0, 9.0]]), t([[1, 1], [1, 0]]), 0.2)
    assert loss.item() == pytest.approx(-(0.5 - 1.5 + 2.0) / 3)
    assert stats["clip_fraction"].item() == 0 and stats["approx_kl"].item() == 0 and stats["ratio"].item() == 1


def test_value_loss_takes_the_larger_of_plain_and_clipped():
    # old 0, clip 0.2, return 1. V=0.5 -> clipped 0.2: (0.5-1)^2 = .25 < (0.2-1)^2 = .64 -> .64
    # V=-0.1 (within range): 1.21 both -> 1.21.  loss = 0.5 * (0.64 + 1.21) / 2 = 0.4625
    loss, stats = value_loss(t([[0.5, -0.1, 3.0]]), t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 1.0]]),
                             t([[1, 1, 0]]), clip_range=0.2)
    assert loss.item() == pytest.approx(0.4625, abs=1e-6)
    assert stats["value_clip_fraction"].item() == pytest.approx(0.5)


def test_entropy_and_token_logprobs():
    logits = torch.log(t([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))       # (1, 2, 3)
    assert torch.allclose(entropy_from_logits(logits), t([[1.5 * math.log(2), math.log(3)]]), atol=1e-6)
    assert torch.allclose(token_logprobs(logits, torch.tensor([[1, 0]])), t([[math.log(0.25), math.log(1 / 3)]]))


def test_masked_mean_and_last_token_index():
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert masked_mean(t([[1, 3, 100], [5, 100, 100], [100, 100, 100]]), mask).item() == 3.0
    assert last_token_index(mask).tolist() == [1, 0, 0]
