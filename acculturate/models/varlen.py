"""Variable-length attention for packed rows: each packed example attends only to itself, and no
work is spent on the blocks between examples.

A packed row (see :mod:`acculturate.data.batching`) carries ``position_ids`` that restart at 0 for
each example. Under SDPA transformers turns that into a dense (B, 1, T, T) block-diagonal mask, and
the masked SDPA kernels still compute every block of the T x T scores. Here the examples' boundaries
become cumulative sequence lengths (``cu_seqlens``, FlashAttention's varlen format) and attention
runs through ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention inside PyTorch, CUDA only),
which skips the blocks across examples.

Use: ``use_varlen_attention(model)`` once, then call the model with :func:`varlen_kwargs` of the
batch's ``position_ids`` (``acculturate.train.loss.loss_sum`` does this). Without those kwargs, or
on the CPU, the attention falls back to SDPA with the equivalent block-diagonal causal mask, the
reference that tests/models/test_varlen.py compares against.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch
import torch.nn.functional as F

ATTENTION_NAME = "acculturate_varlen"


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Example boundaries of packed rows, flattened row-major.

    Args:
        position_ids: (B, T) positions restarting at 0 for each example (a row that is one example,
            0..T-1, is one sequence).
    Returns:
        ``(cu_seqlens, max_len)``: int32 (N + 1,) starts of the N examples in the flattened B * T
        tokens plus the total, and the longest example's length (a Python int: one host sync).
    """
    flat = position_ids.reshape(-1)                                        # (B*T,)
    starts = (flat == 0)
    starts[:: position_ids.shape[-1]] = True       # each row starts an example, whatever its position
    idx = starts.nonzero().squeeze(1).to(torch.int32)                       # (N,)
    total = torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device)
    cu = torch.cat([idx, total])                                            # (N + 1,)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """The keyword arguments that carry the packing to every attention layer (transformers passes
    them through its ``**kwargs``; the names are those its own FlashAttention path reads)."""
    cu, max_len = cu_seqlens_from_position_ids(position_ids)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


def block_causal_mask(cu_seqlens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(n_tokens, n_tokens) bool: token i may attend to j iff both lie in one example and j <= i."""
    seq = torch.zeros(n_tokens, dtype=torch.long, device=cu_seqlens.device)
    seq[cu_seqlens[1:-1].long()] = 1
    seq = seq.cumsum(0)                                                     # example index per token
    same = seq[:, None] == seq[None, :]
    return same & torch.ones_like(same).tril()


@functools.lru_cache(maxsize=None)
def _varlen_fn():
    """``varlen_attn`` and the keyword arguments this PyTorch's version takes for causal GQA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in params, "scale" in params


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An attention function in transformers' interface: query (B, H, T, D), key/value (B, Hkv, T, D);
    returns ``(output (B, T, H, D), None)``."""
    cu = kwargs.get("cu_seq_lens_q")
    B, H, T, D = query.shape
    Hkv = key.shape[1]
    if cu is None:   # not a packed call (generation, padded batches): exactly transformers' SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    q = query.transpose(1, 2).reshape(B * T, H, D)                          # (B*T, H, D)
    k = key.transpose(1, 2).reshape(B * T, Hkv, D)
    v = value.transpose(1, 2).reshape(B * T, Hkv, D)
    fn = _varlen_fn() if query.is_cuda else None
    if fn is not None:
        varlen_attn, causal, has_gqa, has_scale = fn
        extra = dict(causal)
        if Hkv != H:
            if has_gqa:
                extra["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))
        if has_scale and scaling is not None:
            extra["scale"] = scaling
        try:
            max_len = kwargs["max_length_q"]
            out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)    # (B*T, H, D)
            return out.view(B, T, H, D), None
        except Exception as e:   # an older PyTorch or an unsupported dtype: the reference path below
            warnings.warn(f"varlen_attn failed ({type(e).__name__}: {e}); using SDPA with a block mask")
            _varlen_fn.cache_clear()
            globals()["_varlen_fn"] = lambda: None
    mask = block_causal_mask(cu, B * T)                                      # (B*T, B*T)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask, scale=scaling, enable_gqa=Hkv != H)  # (1, H, B*T, D)
    return out[0].transpose(0, 1).reshape(B, T, H, D), None


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Route ``model``'s attention (an HF transformers model) through :func:`varlen_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, varlen_attention)
    # SDPA's masks for calls without the varlen kwargs (padding, KV cache), so those stay correct.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(ATTENTION_NAME)
    else:
        base.config._attn_implementation = ATTENTION_NAME


def uses_varlen_attention(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == ATTENTION_NAME
