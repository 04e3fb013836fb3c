"""Tiny Llama models for the adapter unit tests (random weights, a few thousand parameters)."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(seed: int = 0, layers: int = 2, tie: bool = True):
    """A randomly initialized 2-layer Llama with every Linear kind SmolLM2 has, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_ids():
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.fixture
def make_llama():
    """The factory itself, for tests that need two identical models (same seed)."""
    return make_tiny_llama
