"""QLoRA: LoRA over NF4 bases. Layer maths, what trains, what autograd keeps, merging. Training on
the real model (loss goes down, save, merge onto the NF4 weights) is in test_methods_real.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acculturate.adapters.lora import LoRAConfig, LoRALinear, apply_lora, lora_modules, lora_state_dict, merge_lora
from acculturate.adapters.nf4 import NF4Linear, bits_per_weight, nf4_modules, quantize_model
from acculturate.adapters.qlora import apply_qlora, dequantize_model, merge_qlora, quantize_lora_bases


def _randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


def test_apply_qlora_wraps_nf4_bases_and_trains_only_adapters(make_llama, tiny_ids):
    model, twin = make_llama(), make_llama()
    names = apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    assert len(names) == 2 * 7
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, LoRALinear) and isinstance(layer.base_layer, NF4Linear)
        assert layer.lora_A.weight.dtype == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    # B = 0 at the start: the model is exactly the NF4-quantized base.
    quantize_model(twin)
    with torch.no_grad():
        assert torch.equal(model(tiny_ids).logits, twin(tiny_ids).logits)
    # PEFT's key names, the same as plain LoRA's
    assert set(lora_state_dict(model)) == {f"base_model.model.{n}.lora_{ab}.weight" for n in names for ab in "AB"}


def test_qlora_layer_is_dequantized_base_plus_scaled_update():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(64, 48))
    apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj",)))
    layer = model.q_proj
    _randomize_b(model)
    x = torch.randn(2, 3, 64, requires_grad=True)
    a, b = layer.lora_A.weight, layer.lora_B.weight  # (r, in), (out, r)
    w = layer.base_layer.dequantize()  # (out, in)
    expected = x @ w.T + layer.base_layer.bias + 2.0 * (x @ a.T @ b.T)  # Y = X W^T + s X A^T B^T
    out = layer(x)
    assert torch.allclose(out, expected, atol=1e-5)
    grad = torch.randn_like(out)
    (gx, ga, gb) = torch.autograd.grad(out, (x, a, b), grad)
    (ex, ea, eb) = torch.autograd.grad(expected, (x, a, b), grad)
    for got, want in ((gx, ex), (ga, ea), (gb, eb)):
        assert torch.allclose(got, want, atol=1e-5)


def test_training_step_keeps_no_dequantized_weight(make_llama, tiny_ids):
    """Autograd saves the packed codes of each NF4 base, not a weight-shaped float tensor; compared
    with plain LoRA on the same model, the saved bytes drop by most of the weights' fp32 size."""
    def saved(model):
        seen = {}  # storage -> (bytes, shape, dtype)

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), tuple(t.shape), t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(tiny_ids, labels=tiny_ids).loss
        loss.backward()
        return seen, loss

    def weight_shaped_floats(seen, model):
        shapes = {(m.out_features, m.in_features) for m in lora_modules(model).values()}
        return [s for _, s, d in seen.values() if s in shapes and d.is_floating_point]

    plain, quant = make_llama(), make_llama()
    cfg = LoRAConfig(r=2, alpha=4, dropout=0.0)
    apply_lora(plain, cfg)
    apply_qlora(quant, cfg)
    plain_saved, _ = saved(plain)
    quant_saved, loss = saved(quant)
    # Plain LoRA keeps fp32 weights for backward (those whose input needs a grad); QLoRA none.
    assert len(weight_shaped_floats(plain_saved, plain)) >= 7
    assert weight_shaped_floats(quant_saved, quant) == []
    fp32_bytes = sum(4 * m.in_features * m.out_features for m in nf4_modules(quant).values())
    packed_bytes = sum(t.numel() for m in nf4_modules(quant).values() for t in m._storage()[:1])
    assert any(d == torch.uint8 for _, _, d in quant_saved.values())
    saving = sum(b for b, _, _ in plain_saved.values()) - sum(b for b, _, _ in quant_saved.values())
    assert saving > 0.5 * fp32_bytes - packed_bytes
    for layer in lora_modules(quant).values():
        assert layer.lora_B.weight.grad is not None and layer.lora_B.weight.grad.abs().sum() > 0
    assert torch.isfinite(loss)


def test_merge_lora_on_nf4_bases_equals_unmerged(make_llama, tiny_ids):
    """merge_lora on a QLoRA model merges into dequant(NF4(W)): same logits, plain Linears."""
    model = make_llama()
    apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    _randomize_b(model)
    with torch.no_grad():
        before = model(tiny_ids).logits
        base = model.model.layers[0].self_attn.q_proj.base_layer.dequantize()
        delta = model.model.layers[0].self_attn.q_proj.delta_weight()
    merge_lora(model)
    assert not lora_modules(model) and not nf4_modules(model)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is nn.Linear and not q_proj.weight.requires_grad
    torch.testing.assert_close(q_proj.weight, base + delta, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_ids).logits, before, atol=1e-5, rtol=0)


def test_merge_qlora_equals_unmerged(make_llama, tiny_ids):
    model = make_llama()
    apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    _randomize_b(model)
    with torch.no_grad():
        before = model(tiny_ids).logits
    merge_qlora(model)
    assert not lora_modules(model) and not nf4_modules(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    with torch.no_grad():
        after = model(tiny_ids).logits
    assert torch.allclose(after, before, atol=1e-5)


def test_quantize_lora_bases_after_loading_adapter(make_llama, tiny_ids):
    """An adapter applied to the fp model, then its bases quantized, equals apply_qlora with those weights."""
    a, b = make_llama(), make_llama()
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0)
    apply_lora(a, cfg)
    _randomize_b(a)
    apply_qlora(b, cfg)
    b.load_state_dict(a.state_dict(), strict=False)  # adapter weights only; bases stay NF4
    assert quantize_lora_bases(a) == list(lora_modules(a))
    assert quantize_lora_bases(a) == []  # already NF4
    with torch.no_grad():
        assert torch.equal(a(tiny_ids).logits, b(tiny_ids).logits)
    assert dequantize_model(a) == [f"{n}.base_layer" for n in lora_modules(a)]


def test_bf16_qlora_takes_the_frozen_base_last_path_with_the_dequantized_results(make_llama, tiny_ids):
    """A bf16 model with fp32 adapters over NF4 bases (QLoRA on a GPU) runs LoRA's half path with the
    base matmul last: the NF4 weight is dequantized inside the adapter's matmuls (q/k/v and gate/up
    as sibling groups) and nothing NF4-shaped is saved for backward. Logits and adapter gradients are
    those of the same adapters over plain bf16 Linears holding dequant(W)."""
    def run(model):
        seen = []

        def pack(t):
            seen.append(t.dtype)
            return t

        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(tiny_ids).logits
        logits.float().pow(2).mean().backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach().float(), grads, seen

    quant, plain = make_llama().to(torch.bfloat16), make_llama().to(torch.bfloat16)
    cfg = LoRAConfig(r=4, alpha=8, dropout=0.0)
    for model in (quant, plain):
        apply_qlora(model, cfg)
    _randomize_b(quant)
    plain.load_state_dict(quant.state_dict())
    dequantize_model(plain, torch.bfloat16)   # the same adapters over plain Linears with dequant(W)
    assert nf4_modules(quant) and not nf4_modules(plain)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert all(layer._frozen_half_path(x) for layer in lora_modules(quant).values())
    q_logits, q_grads, q_saved = run(quant)
    p_logits, p_grads, _ = run(plain)
    assert torch.uint8 not in q_saved   # the packed codes are not saved: the base matmul saves nothing
    torch.testing.assert_close(q_logits, p_logits, rtol=0, atol=0)
    assert q_grads.keys() == p_grads.keys() and len(q_grads) == 2 * 14
    for name in q_grads:
        torch.testing.assert_close(q_grads[name], p_grads[name], rtol=0, atol=0)


@pytest.mark.gpu
def test_qlora_trains_on_cuda(make_llama, tiny_ids):
    model = make_llama().cuda()
    apply_qlora(model, LoRAConfig(r=4, alpha=8, dropout=0.0))
    assert all(m.packed.is_cuda for m in nf4_modules(model).values())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ids = tiny_ids.cuda()
    first = None
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        first = loss.item() if first is None else first
    assert loss.item() < first
