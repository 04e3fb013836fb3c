"""One Llama-style decoder layer over a preallocated KV cache: what the CUDA-graph decoder
(:mod:`.static`) and the fixed-slot server decoder (:mod:`.slots`) both step through.

The layer calls the model's own modules (norms, projections, MLP), so LoRA-wrapped layers and
Liger's fused modules work unchanged; only RoPE, the cache write and attention over the cache are
written here, because they must touch fixed addresses to be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acculturate.decode import kv_attention


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q, k, cos, sin):
    """Rotate-half RoPE; q (b, H, T, D), k (b, Hkv, T, D), cos/sin (b, T, D)."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def cache_layer(layer, x, cos, sin, k_cache, v_cache, slots, mask, rope):
    """One decoder layer over x (b, T, d), writing its keys/values into the cache (b, Hkv, S, D) at
    ``slots`` (T,) or, for one token per row, at each row's own column ``slots`` (b, 1); ``mask`` as
    :func:`attend` takes it."""
    b, T, _ = x.shape
    attn = layer.self_attn
    n_kv, head_dim = k_cache.shape[1], k_cache.shape[-1]
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, T, -1, head_dim).transpose(1, 2)           # (b, H, T, D)
    k = attn.k_proj(h).view(b, T, n_kv, head_dim).transpose(1, 2)         # (b, Hkv, T, D)
    v = attn.v_proj(h).view(b, T, n_kv, head_dim).transpose(1, 2)
    q, k = rope(q, k, cos, sin)
    if slots.ndim == 1:   # (T,): the same cache columns for every row
        k_cache.index_copy_(2, slots, k.to(k_cache.dtype))
        v_cache.index_copy_(2, slots, v.to(v_cache.dtype))
    else:                 # (b, 1): one column per row (decode.slots: rows at their own positions)
        index = slots.view(b, 1, 1, 1).expand(b, n_kv, 1, head_dim)
        k_cache.scatter_(2, index, k.to(k_cache.dtype))
        v_cache.scatter_(2, index, v.to(v_cache.dtype))
    o = attend(q, k_cache, v_cache, mask, attn.scaling)                  # (b, H, T, D)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(b, T, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q (b, H, T, D) over the cache k/v (b, Hkv, S, D).

    Prefill (T > 1): SDPA with a bool ``mask`` (b, 1, T, S). Decoding (T = 1): ``mask`` is an
    additive fp32 bias (b * Hkv, 1, S); on CUDA one Triton kernel (:mod:`.kv_attention`) reads each
    row's cache once for the query heads that share it, elsewhere :func:`grouped_attention`."""
    H, T = q.shape[1], q.shape[2]
    if T > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != H)
    if kv_attention.available(q):
        return kv_attention.decode_attention(q, k, v, mask, scale)
    return grouped_attention(q, k, v, mask, scale)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Decoding attention (q (b, H, 1, D), additive fp32 ``bias`` (b * Hkv, 1, S)) as two batched
    matmuls: the H query heads grouped by their kv head, so the cache is read once, with no copy of
    it per query head, and scores and softmax stay in fp32 (as FlashAttention keeps them). The CPU
    path, and the reference the CUDA kernel is tested against."""
    b, H, _, D = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    qg = q.reshape(b * n_kv, H // n_kv, D)                                  # (b*Hkv, rep, D)
    scores = torch.bmm(qg, k.reshape(b * n_kv, S, D).transpose(1, 2))       # (b*Hkv, rep, S)
    probs = torch.add(bias, scores, alpha=scale).softmax(dim=-1)            # fp32
    out = torch.bmm(probs.to(v.dtype), v.reshape(b * n_kv, S, D))           # (b*Hkv, rep, D)
    return out.view(b, H, 1, D)
