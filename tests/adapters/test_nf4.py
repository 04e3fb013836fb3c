"""NF4 storage: codes and dequantized values against a plain reference, storage size, NF4Linear's
forward/backward against nn.Linear, what autograd keeps, and quantize_model on models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from acculturate.adapters.nf4 import (
    NF4Linear, bits_per_weight, dequantize_nf4, nf4_modules, quantize_model, quantize_nf4,
)

# Typed in from the QLoRA paper's NF4 code (bitsandbytes' table), not imported from the module.
REFERENCE_LEVELS = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def reference_nf4(weight: np.ndarray, blocksize: int, scale_blocksize: int):
    """NF4 with double quantization, written plainly: python loops, nearest level by exhaustive search.

    Returns (codes per weight, int8 scale codes, scale constants, scale mean, dequantized weight).
    """
    flat = weight.astype(np.float32).reshape(-1)
    n = flat.size
    n_blocks = -(-n // blocksize)
    codes, absmaxes = [], []
    for b in range(n_blocks):
        block = flat[b * blocksize:(b + 1) * blocksize]
        absmax = np.float32(np.abs(block).max())
        absmaxes.append(absmax)
        for value in block:
            x = float(np.float32(value) / absmax)  # normalised in fp32, as stored weights are
            codes.append(min(range(16), key=lambda i: abs(x - REFERENCE_LEVELS[i])))
    absmaxes = np.array(absmaxes, dtype=np.float64)
    mean = absmaxes.mean()
    centered = absmaxes - mean
    n_scale_blocks = -(-n_blocks // scale_blocksize)
    scale_codes, consts = [], []
    for s in range(n_scale_blocks):
        chunk = centered[s * scale_blocksize:(s + 1) * scale_blocksize]
        c = np.abs(chunk).max()
        consts.append(c)
        scale_codes += [int(np.clip(np.round(127 * v / c), -127, 127)) for v in chunk]
    scales = [scale_codes[b] * consts[b // scale_blocksize] / 127 + mean for b in range(n_blocks)]
    deq = np.array([REFERENCE_LEVELS[codes[i]] * scales[i // blocksize] for i in range(n)])
    return (np.array(codes), np.array(scale_codes), np.array(consts), mean, deq.reshape(weight.shape))


def unpack_codes(packed: torch.Tensor) -> np.ndarray:
    p = packed.numpy().astype(np.int64)
    return np.stack([p >> 4, p & 15], axis=1).reshape(-1)  # first value in the high nibble


@pytest.mark.parametrize("shape, blocksize, scale_blocksize", [
    ((96, 64), 64, 256),   # 96 blocks: one scale block, padded from 96 to 256
    ((48, 40), 64, 8),     # 30 blocks: 4 scale blocks, the last one padded
    ((7, 10), 16, 2),      # 70 weights: the last block padded with zeros
])
def test_quantize_matches_reference(shape, blocksize, scale_blocksize):
    torch.manual_seed(0)
    weight = torch.randn(shape) * 0.05
    weight[0, :3] = torch.tensor([0.0, 1e-9, -1e-9])  # exact zero and tiny values
    codes, scale_codes, consts, mean, deq = reference_nf4(weight.numpy(), blocksize, scale_blocksize)
    q = quantize_nf4(weight, blocksize, scale_blocksize)

    n = weight.numel()
    assert np.array_equal(unpack_codes(q["packed"])[:n], codes)
    assert np.array_equal(q["scale_codes"].numpy()[:len(scale_codes)].astype(np.int64), scale_codes)
    np.testing.assert_allclose(q["scale_consts"].numpy(), consts, rtol=1e-6)
    np.testing.assert_allclose(q["scale_mean"].item(), mean, rtol=1e-6)
    ours = dequantize_nf4(*q.values(), shape, blocksize)
    np.testing.assert_allclose(ours.numpy(), deq, rtol=1e-5, atol=1e-9)
    # The round-trip error is the reference's, and NF4-sized: a few % of the weights' scale.
    err_ours = (ours - weight).abs().mean().item()
    err_ref = np.abs(deq - weight.numpy()).mean()
    assert err_ours == pytest.approx(err_ref, rel=1e-5)
    assert 0.002 < err_ours / weight.abs().mean().item() < 0.2


def test_levels_and_extremes_are_exact():
    """A block holding the NF4 levels times its absmax reproduces them (up to the scale's rounding)."""
    levels = torch.tensor(REFERENCE_LEVELS * 4) * 0.5  # one block of 64, absmax 0.5
    q = quantize_nf4(levels, 64, 256)
    assert unpack_codes(q["packed"]).tolist() == list(range(16)) * 4
    assert torch.allclose(dequantize_nf4(*q.values(), (64,), 64), levels, rtol=1e-6)


def test_zero_block_and_bad_blocksize():
    q = quantize_nf4(torch.zeros(128), 64, 4)
    assert torch.isfinite(dequantize_nf4(*q.values(), (128,), 64)).all()
    assert dequantize_nf4(*q.values(), (128,), 64).abs().max() == 0
    with pytest.raises(ValueError, match="blocksize must be a positive even integer"):
        quantize_nf4(torch.randn(10), blocksize=7)
    with pytest.raises(ValueError, match="scale_blocksize"):
        NF4Linear(4, 4, scale_blocksize=0)
    with pytest.raises(TypeError, match="needs an nn.Linear"):
        NF4Linear.from_linear(nn.Conv1d(2, 2, 1))


def test_storage_is_under_4_2_bits_per_weight():
    layer = NF4Linear.from_linear(nn.Linear(576, 1536, bias=False))
    n_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert 8 * n_bytes / (576 * 1536) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / (576 * 1536))
    assert bits_per_weight(layer) == pytest.approx(8 * n_bytes / (576 * 1536))
    assert bits_per_weight(layer) <= 4.2
    # the LoRA-sized k_proj of SmolLM2 pads its scales from 1728 to 1792, still under 4.2
    assert bits_per_weight(NF4Linear.from_linear(nn.Linear(576, 192))) <= 4.2


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and total the bytes of every tensor autograd saves for backward (storage counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_match_linear_with_dequantized_weight(bias):
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=bias)
    layer = NF4Linear.from_linear(linear)
    plain = nn.Linear(128, 96, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(layer.dequantize())
        if bias:
            plain.bias.copy_(linear.bias)
    x = torch.randn(3, 5, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = torch.randn(3, 5, 96)

    out, n_saved = saved_bytes(lambda: layer(x))
    out.backward(grad)
    ref = plain(x_ref)
    ref.backward(grad)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    # The weight is frozen storage: no parameter of the layer wants or gets a gradient.
    assert all(not p.requires_grad and p.grad is None for p in layer.parameters())
    assert not any(b.requires_grad for b in layer.buffers())
    # Autograd keeps the packed codes (~0.53 bytes/weight), never a dequantized fp32 weight (4 bytes/weight).
    fp32_weight_bytes = 128 * 96 * 4
    assert 0 < n_saved < 0.2 * fp32_weight_bytes


def test_bf16_input_computes_in_bf16():
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), layer(x), atol=0.05, rtol=0.02)


def test_weight_property_is_dequantized_and_read_only():
    layer = NF4Linear.from_linear(nn.Linear(64, 32))
    assert torch.equal(layer.weight, layer.dequantize())
    assert layer.weight.shape == (32, 64)
    with pytest.raises(RuntimeError):  # e.g. LoRALinear.merge's copy_ must not vanish into a temporary
        with torch.no_grad():
            layer.weight.copy_(torch.zeros(32, 64))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(nn.Linear(80, 48))  # 3840 weights: padded scale blocks
    state = layer.state_dict()
    assert set(state) == {"packed", "scale_codes", "scale_consts", "scale_mean", "bias"}
    assert state["packed"].dtype == torch.uint8 and state["packed"].numel() == 80 * 48 // 2
    fresh = NF4Linear(80, 48)
    fresh.load_state_dict(state)
    x = torch.randn(2, 80)
    assert torch.equal(fresh(x), layer(x))


def test_quantize_model_on_tiny_llama(tiny_llama, tiny_ids):
    with torch.no_grad():
        before = tiny_llama(tiny_ids).logits
    names = quantize_model(tiny_llama, ("q_proj", "down_proj"))
    assert names == [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")]
    assert list(nf4_modules(tiny_llama)) == names
    assert isinstance(tiny_llama.model.layers[0].self_attn.k_proj, nn.Linear)  # not targeted
    with torch.no_grad():
        after = tiny_llama(tiny_ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert not torch.equal(after, before)
    with pytest.raises(ValueError, match=r"\['qkv'\] matched no nn.Linear"):
        quantize_model(tiny_llama, ("qkv",))
    with pytest.raises(ValueError, match="contains no NF4Linear"):
        bits_per_weight(nn.Linear(2, 2))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    linear = nn.Linear(576, 192)
    cpu = NF4Linear.from_linear(linear)
    gpu = NF4Linear.from_linear(linear.cuda())
    for name, buf in cpu.state_dict().items():
        other = gpu.state_dict()[name].cpu()
        if buf.dtype in (torch.uint8, torch.int8):
            assert torch.equal(buf, other), name
        else:
            assert torch.allclose(buf, other, rtol=1e-6), name
    moved = cpu.to("cuda")
    assert moved.packed.is_cuda
    x = torch.randn(4, 7, 576, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = gpu(x)
    out.float().pow(2).mean().backward()
    assert out.dtype == torch.bfloat16 and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    ref = x.detach().float() @ cpu.dequantize().cuda().T + linear.bias.detach()
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)


def instruction_text(data_dir, n: int = 8) -> str:
    import json

    rows = json.loads((data_dir / "instructions" / "instruction-data.json").read_text())
    return " ".join(f"{r['instruction']} {r['output']}" for r in rows[:n])


@pytest.mark.slow
def test_real_model_all_targets_stay_close(fresh_model, data_dir):
    """All 7 projections of all 30 blocks in NF4: 4.128 bits/weight; logits stay close to fp32."""
    model, tok = fresh_model
    ids = tok(instruction_text(data_dir), return_tensors="pt").input_ids[:, :256]  # (1, T)
    with torch.no_grad():
        ref = model(ids, labels=ids)  # logits (1, T, V)
    names = quantize_model(model)
    assert len(names) == 7 * model.config.num_hidden_layers
    assert not any(isinstance(m, nn.Linear) and n.endswith("proj") for n, m in model.named_modules())
    assert bits_per_weight(model) <= 4.2
    with torch.no_grad():
        out = model(ids, labels=ids)
    diff = (out.logits - ref.logits).abs()
    top1 = (out.logits.argmax(-1) == ref.logits.argmax(-1)).float().mean().item()
    logp_ref, logp = ref.logits.log_softmax(-1), out.logits.log_softmax(-1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1).mean().item()
    print(f"NF4 SmolLM2 on {ids.shape[1]} tokens: logits max abs diff {diff.max():.2f}, mean {diff.mean():.3f} "
          f"(mean |logit| {ref.logits.abs().mean():.2f}); top-1 agreement {top1:.3f}; KL {kl:.3f}; "
          f"loss {ref.loss:.3f} -> {out.loss:.3f}")
    # Measured: max 17.6, mean 1.82 (mean |logit| 6.63), top-1 0.767, KL 0.267, loss 2.323 -> 2.380.
    assert diff.mean() < 0.4 * ref.logits.abs().mean()
    assert top1 > 0.65 and kl < 0.5
    assert out.loss < 1.1 * ref.loss


@pytest.mark.gpu
def test_compiled_dequantize_equals_eager_on_cuda():
    from acculturate.adapters import nf4

    w = torch.randn(384, 1000, device="cuda")
    q = nf4.quantize_nf4(w)
    nf4.compile_dequantize(False)
    eager = nf4.dequantize_nf4(**q, shape=w.shape, dtype=torch.bfloat16)
    nf4.compile_dequantize()
    try:
        compiled = nf4.dequantize_nf4(**q, shape=w.shape, dtype=torch.bfloat16)
    finally:
        nf4.compile_dequantize(False)
    assert torch.equal(eager, compiled)
