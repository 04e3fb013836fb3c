"""PPO maths as pure functions on (B, T) tensors of response tokens (Schulman et al. 2017,
arXiv:1707.06347; the RLHF form of Ziegler et al. 2019, arXiv:1909.08593, as TRL implements it).

Every tensor is laid out per response token: row ``b`` is one sampled completion, column ``t`` its
``t``-th generated token, and ``mask[b, t]`` is 1 for a real token and 0 for padding after the
completion ended. Padding never contributes to a mean, a sum or an advantage. Each function returns
new tensors and changes none of its inputs; tests/feedback/test_ppo_loss.py checks them against
numbers computed by hand.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (over everything, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked entries; ``unbiased`` applies Bessel's n/(n-1) (as TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries (unbiased variance); with
    ``shift_mean=False`` the mean is added back (only the scale changes). Padding comes out 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token (0 for an all-padding row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)   # (B, T)
    return (positions * mask.long()).amax(dim=-1)


def kl_penalty_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                       mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-beta * (logp_t - logp_ref_t)`` at every token, plus the sequence's
    score at its last token (Ziegler et al. 2019, eq. 2).

    ``logp - logp_ref`` is the "k1" estimator of KL(pi || pi_ref) for the sampled token: its sum over
    a completion is an unbiased estimate of the sequence KL.

    Args:
        scores: (B,) one reward per completion (from the reward function).
        logprobs, ref_logprobs: (B, T) log-probabilities of the sampled tokens under the policy
            (before the update) and the reference.
        mask: (B, T) 1 for real tokens.
        beta: the KL coefficient (>= 0).
    Returns:
        ``(rewards, kl)``: both (B, T), zero on padding; ``kl`` is ``logp - logp_ref``.
    """
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m                                            # (B, T)
    rewards = -beta * kl
    last = last_token_index(mask)                                                  # (B,)
    has_tokens = m.sum(-1) > 0
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype))
    rewards = rewards.index_put((rows, last), rewards[rows, last] + bonus)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2015, arXiv:1506.02438).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` after the last real token taken as 0 (the
    episode ends there), and ``A_t = delta_t + gamma * lam * A_{t+1}``; returns are ``A_t + V_t``.

    Args:
        rewards, values: (B, T); values are the value head's estimates before the update.
        mask: (B, T), 1 for real tokens; each row's real tokens come first.
        gamma: discount; lam: the GAE lambda (1: Monte-Carlo returns, 0: one-step TD).
    Returns:
        ``(advantages, returns)``, both (B, T), zero on padding.
    """
    m = mask.to(values.dtype)
    steps = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])                                       # (B,)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] * m[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Past the end of a row, running is 0 (masked below), so the recursion restarts at its end.
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * m
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate: ``-mean(min(r A, clip(r, 1-eps, 1+eps) A))`` with ``r = exp(logp - logp_old)``.

    Args:
        logprobs: (B, T) under the policy being updated (carries the gradient).
        old_logprobs: (B, T) under the policy that sampled the rollout.
        advantages: (B, T), usually whitened.
        mask: (B, T).
        clip_range: eps.
    Returns:
        ``(loss, stats)``; stats (detached): ``clip_fraction`` (share of tokens where the clipped
        term is the one taken), ``approx_kl`` (mean of ``(r - 1) - log r``, Schulman's low-variance
        estimator of KL(old || new)), ``ratio`` (mean r).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
                 "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` with
    ``V_clip = V_old + clip(V - V_old, -c, c)`` (as in OpenAI baselines' PPO2 and TRL).

    Returns:
        ``(loss, {"value_clip_fraction"})``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    plain = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(plain, clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped > plain).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of ``logits`` (..., V) -> (...): ``logsumexp(z) - sum(p z)``."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token: logits (B, T, V), tokens (B, T) -> (B, T), in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
