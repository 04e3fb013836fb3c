"""Variable-length attention for packed rows: boundaries from position_ids, and on the real model a
packed row gives each example the logits it has alone (no attention across examples)."""

from __future__ import annotations

import pytest
import torch

from acculturate.models.varlen import (
    block_causal_mask, cu_seqlens_from_position_ids, use_varlen_attention, uses_varlen_attention, varlen_kwargs,
)


def test_cu_seqlens_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    cu, max_len = cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 6, 12] and cu.dtype == torch.int32
    assert max_len == 6


def test_row_start_is_a_boundary_even_mid_example():
    cu, max_len = cu_seqlens_from_position_ids(torch.tensor([[3, 4], [5, 6]]))
    assert cu.tolist() == [0, 2, 4] and max_len == 2


def test_block_causal_mask():
    mask = block_causal_mask(torch.tensor([0, 2, 3], dtype=torch.int32), 3)
    assert mask.tolist() == [[True, False, False], [True, True, False], [False, False, True]]


@pytest.mark.slow
def test_packed_row_equals_examples_alone_on_the_real_model(fresh_model):
    model, tok = fresh_model
    texts = ["The capital of France is Paris.", "Two plus two is four.", "Hello"]
    ids = [tok(t).input_ids for t in texts]
    with torch.no_grad():
        alone = [model(torch.tensor([x]), use_cache=False).logits[0] for x in ids]
        use_varlen_attention(model)
        assert uses_varlen_attention(model)
        row = torch.tensor([sum(ids, [])])                                   # (1, T)
        pos = torch.tensor([[p for x in ids for p in range(len(x))]])
        packed = model(row, position_ids=pos, use_cache=False, **varlen_kwargs(pos)).logits[0]
        # Without the varlen kwargs the model still runs, with SDPA's own masks (padding, causal).
        plain = model(torch.tensor([ids[0]]), use_cache=False).logits[0]
    torch.testing.assert_close(torch.cat(alone), packed, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(alone[0], plain, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_varlen_kernel_matches_block_mask_reference_on_gpu():
    from acculturate.models.varlen import varlen_attention

    torch.manual_seed(0)
    B, H, Hkv, T, D = 2, 8, 2, 64, 64
    q, k, v = (torch.randn(B, h, T, D, device="cuda", dtype=torch.bfloat16) for h in (H, Hkv, Hkv))
    pos = torch.tensor([list(range(20)) + list(range(44)), list(range(64))], device="cuda")
    kw = varlen_kwargs(pos)
    fast, _ = varlen_attention(None, q, k, v, None, scaling=D ** -0.5, **kw)
    ref, _ = varlen_attention(None, q.cpu().float(), k.cpu().float(), v.cpu().float(), None,
                              scaling=D ** -0.5, **{**kw, "cu_seq_lens_q": kw["cu_seq_lens_q"].cpu()})
    assert float((fast.float().cpu() - ref).norm() / ref.norm()) < 2e-2
