"""Stochastic 4-bit rounding for GGUF export: the same bytes layout as llama.cpp's q4_0 / q4_1 blocks
(read back by gguf-py's reference dequantizer), unbiased, and it keeps a small delta merged into a
base that already sits on the grid, where llama.cpp's nearest rounding gives the base back."""

import gguf
import numpy as np
import pytest
from gguf import quants

from acculturate.models.gguf_export import on_grid, quantize_q4_stochastic

QTYPE = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1}


def _dequant(blocks, quant):
    return quants.dequantize(blocks, QTYPE[quant])


@pytest.mark.parametrize("quant", ["q4_0", "q4_1"])
def test_layout_matches_llama_cpp_blocks_and_rounding_is_unbiased(quant):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 64)) * 0.05).astype(np.float32)
    nearest = quants.quantize(x, QTYPE[quant])
    got = quantize_q4_stochastic(x, quant, seed=1)
    assert got.shape == nearest.shape and got.dtype == np.uint8
    # Same scale (and minimum) bytes as llama.cpp's reference; every value one of the two levels around x.
    head = 2 if quant == "q4_0" else 4
    assert np.array_equal(got.reshape(-1, nearest.shape[-1] // 2)[:, :head],
                          nearest.reshape(-1, nearest.shape[-1] // 2)[:, :head])
    y, ref = _dequant(got, quant), _dequant(nearest, quant)
    step = np.abs(got.reshape(-1, nearest.shape[-1] // 2)[:, :2].copy().view(np.float16).astype(np.float32))
    assert (np.abs(y - x).reshape(-1, 32) <= step * 1.001 + 1e-6).all()   # (n_blocks, 32) vs (n_blocks, 1)
    assert (y != ref).any()   # not nearest rounding in disguise
    mean = np.mean([_dequant(quantize_q4_stochastic(x, quant, seed=s), quant) for s in range(400)], axis=0)
    assert np.abs(mean - x).mean() < 0.1 * np.abs(ref - x).mean() + 1e-4   # unbiased: the mean converges
    assert np.array_equal(quantize_q4_stochastic(x, quant, seed=1), got)     # seeded: reproducible


def test_a_delta_merged_into_a_q4_1_base_survives_stochastic_not_nearest_rounding():
    rng = np.random.default_rng(0)
    q41 = QTYPE["q4_1"]
    base = quants.dequantize(quants.quantize((rng.normal(size=(64, 128)) * 0.05).astype(np.float32), q41), q41)
    assert on_grid(base, "q4_1") and not on_grid(base + 1e-3 * rng.normal(size=base.shape), "q4_1")
    delta = (rng.normal(size=base.shape) * 0.002).astype(np.float32)   # a LoRA-sized change: < half a step
    merged = base + delta

    def kept(y):   # the share of the delta the quantized matrix keeps (projection on delta)
        return float(((y - base) * delta).sum() / (delta * delta).sum())

    assert kept(quants.dequantize(quants.quantize(merged, q41), q41)) < 0.3          # back to the base
    assert kept(_dequant(quantize_q4_stochastic(merged, "q4_1"), "q4_1")) > 0.9


def test_stochastic_rounding_refuses_other_types():
    with pytest.raises(ValueError, match="q4_0 and q4_1"):
        quantize_q4_stochastic(np.zeros((1, 32), np.float32), "q8_0")
