"""The decoding-attention Triton kernel (decode/kv_attention.py) against the grouped-matmul path
(cache_layer.grouped_attention, the CPU path) and an fp32 softmax reference: GQA and MHA, fp32 and
bf16, left padding and unwritten slots masked, a sliced cache (the slot decoder's view), with and
without splitting the slots across programs, eager, in a CUDA graph and under torch.compile."""

import pytest
import torch

from acculturate.decode.cache_layer import grouped_attention
from acculturate.decode.kv_attention import available, choose_splits


def test_choose_splits_fills_the_gpu_only_when_rows_do_not():
    assert choose_splits(512, 384, 132) == 1              # batch 64 x 8 kv heads: one program each
    assert choose_splits(8, 384, 132) == 6                # batch 1: one split per 64-slot block
    assert choose_splits(8, 4096, 132) == 16              # capped
    assert choose_splits(64, 384, 132) == 3
    assert choose_splits(8, 10, 132) == 1


def test_not_available_on_cpu():
    assert not available(torch.zeros(1))


def _reference(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v in fp64, each query head on its kv head's cache."""
    b, H, _, D = q.shape
    n_kv = k.shape[1]
    kk = k.double().repeat_interleave(H // n_kv, dim=1)                 # (b, H, S, D)
    vv = v.double().repeat_interleave(H // n_kv, dim=1)
    scores = (q.double() @ kk.transpose(-1, -2)) * scale + bias.view(b, n_kv, 1, -1).double().repeat_interleave(
        H // n_kv, dim=1)
    return scores.softmax(-1) @ vv                                       # (b, H, 1, D)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,H,n_kv,D,S,width", [(1, 32, 8, 64, 384, 384), (2, 4, 4, 64, 200, 130),
                                                 (5, 12, 4, 48, 70, 70)])
def test_kernel_matches_reference(dtype, b, H, n_kv, D, S, width):
    from acculturate.decode.kv_attention import decode_attention

    torch.manual_seed(0)
    q = torch.randn(b, 1, H, D, device="cuda", dtype=dtype).transpose(1, 2)   # as the layer makes it
    cache_k = torch.randn(b, n_kv, S, D, device="cuda", dtype=dtype)
    cache_v = torch.randn(b, n_kv, S, D, device="cuda", dtype=dtype)
    k, v = cache_k[:, :, :width], cache_v[:, :, :width]                       # a sliced cache
    valid = torch.zeros(b, width, dtype=torch.bool, device="cuda")
    for row in range(b):   # left padding, then written slots, then slots not written yet
        start, end = row * 7 % 20, width - (row * 13 % 40)
        valid[row, start:end] = True
    bias = torch.zeros(b, width, device="cuda").masked_fill_(~valid, float("-inf"))
    bias = bias.view(b, 1, width).repeat_interleave(n_kv, dim=0)              # (b * Hkv, 1, W)
    scale = D ** -0.5
    exact = _reference(q, k, v, bias, scale)
    matmuls = grouped_attention(q, k, v, bias, scale)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for splits in (0, 1, 3):
        out = decode_attention(q, k, v, bias, scale, splits)
        assert out.shape == (b, H, 1, D) and out.dtype == dtype
        assert (out.double() - exact).abs().max().item() < tol, splits
        # no further from the exact result than the grouped matmuls are
        assert (out.double() - exact).abs().max() <= (matmuls.double() - exact).abs().max() + tol / 4


@pytest.mark.gpu
def test_kernel_in_a_cuda_graph_and_under_compile():
    from acculturate.decode.kv_attention import decode_attention

    torch.manual_seed(0)
    q = torch.randn(2, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 96, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    bias = torch.zeros(4, 1, 96, device="cuda")
    bias[:, :, 50:] = float("-inf")
    expected = decode_attention(q, k, v, bias, 0.125)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, bias, 0.125)
    bias[:, :, 50:60] = 0.0   # the graph reads the new mask
    graph.replay()
    assert not torch.equal(out, expected)
    assert torch.equal(out, decode_attention(q, k, v, bias, 0.125))
    compiled = torch.compile(lambda *a: decode_attention(*a) * 2, fullgraph=True)
    assert torch.allclose(compiled(q, k, v, bias, 0.125), 2 * out)
