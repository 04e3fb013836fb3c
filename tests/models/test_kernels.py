"""use_fused_kernels: a no-op on CPU; on a GPU with Liger, the patched model computes the same outputs."""

from __future__ import annotations

import pytest
import torch

from acculturate.models.kernels import LIGER_PATCHES, liger_available, use_fused_kernels


def _tiny_llama(device="cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(device)


def test_registry_names_liger_functions():
    assert LIGER_PATCHES["llama"] == "apply_liger_kernel_to_llama"


@pytest.mark.skipif(liger_available(), reason="checks the fallback where Liger cannot run")
def test_no_op_without_cuda_or_liger():
    model = _tiny_llama()
    before = [type(m) for m in model.modules()]
    forward = model.model.layers[0].mlp.forward
    assert use_fused_kernels(model) is False
    assert [type(m) for m in model.modules()] == before
    assert model.model.layers[0].mlp.forward == forward


@pytest.mark.gpu
def test_fused_kernels_keep_outputs_and_gradients():
    if not liger_available():
        pytest.skip("liger-kernel is not installed")
    ids = torch.randint(0, 128, (2, 16), device="cuda")
    ref_model = _tiny_llama("cuda")
    ref = ref_model(ids).logits
    model = _tiny_llama("cuda")
    assert use_fused_kernels(model) is True
    out = model(ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-3
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
