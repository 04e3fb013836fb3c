"""Scalar heads on a causal LM's hidden states (the reward model's and PPO's value head), and the
forward pass that gives those hidden states with the LM's logits for a slice of positions."""

from __future__ import annotations

import math

import torch
from torch import nn


class ScalarHead(nn.Module):
    """``h -> w . h + b`` (one number per position), in fp32 whatever the model's dtype.

    Initialised as TRL's value head: weights ~ N(0, 1/sqrt(hidden+1)), bias 0, so the first outputs
    are small and the loss's first gradients are not dominated by a random offset.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:   # (..., H) -> (...)
        return self.linear(hidden.float()).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    """The width of the model's last hidden state (``config.hidden_size``)."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{type(model).__name__} has no config.hidden_size; a scalar head needs the "
                         f"width of its hidden states")
    return size


def decoder_of(model: nn.Module) -> nn.Module:
    """The transformer under the LM head (``model.model`` for Llama-style HF models)."""
    decoder = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if decoder is None or decoder is model:
        raise ValueError(f"cannot find the decoder of {type(model).__name__} "
                         f"(expected the attribute named by base_model_prefix)")
    return decoder


def last_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, H) hidden states after the final norm, without computing the LM head (whose (B, L, V)
    logits are 49,152 floats per position for SmolLM2)."""
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) -> (B, H): each row's state at its last non-pad token (any padding side)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (positions * attention_mask.long()).amax(dim=-1)                       # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
