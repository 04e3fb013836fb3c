"""Attention of one new token per row over a KV cache as one Triton kernel (flash-decoding), for the
CUDA decoding step of :mod:`.cache_layer`.

Why a kernel of our own: the step's attention as two batched matmuls (scores, then values, the query
heads grouped by kv head; :func:`.cache_layer.grouped_attention`) runs in cuBLAS as
batch-(rows x kv heads) GEMMs with M = 4 query rows, far from the cache's read time. Here one program
reads one (row, kv head)'s keys and values once, block by block, for all the query heads that share
them (padded to 16 rows for ``tl.dot``), with an online softmax in fp32 (Dao et al., FlashAttention):
scores never reach memory. With few rows (batch 1: 8 programs for 132 SMs) the slots are split across
programs and a second small kernel combines the partial results (Flash-Decoding, Dao et al. 2023).
Measured in CUDA graphs on an H200 (Llama-1B attention, 384 slots, bf16; bench/decode_attention.py):
batch 64, 36.5 -> 16.7 us a layer (3.0 TB/s of cache); batch 1, 12.9 -> 5.3 us; the batch-64 step
4.32 -> 3.98 ms. SDPA does not fit: FlashAttention takes no mask (the cache has left padding and
unwritten slots), and with the query heads as query rows the cuDNN backend took 34.5 us, the
memory-efficient one 42.3 us.

Eagerly (and in captured CUDA graphs) the kernels are launched directly; under ``torch.compile``
(``StaticDecoder(compile=...)``) the call goes through the ``acculturate::decode_attention`` custom
op, which Inductor calls as one opaque kernel.
"""

from __future__ import annotations

import functools

import torch

from acculturate.models.gpu_start import wait_for_gpu_start_up

try:   # triton ships with CUDA builds of torch; CPU-only installs have no use for this module
    import triton
    import triton.language as tl
except ImportError:   # pragma: no cover - depends on the torch build
    triton = None

BLOCK_R = 16   # query rows per program: tl.dot needs M >= 16; the kv head's query heads, zero-padded
BLOCK_S = 64   # cache slots per loop iteration


def available(q: torch.Tensor) -> bool:
    """True when the kernel can run on ``q``: a CUDA tensor and triton installed."""
    return triton is not None and q.is_cuda


if triton is not None:
    @triton.jit
    def _attend_kernel(Q, K, V, Bias, Out, Part, Stats, S, chunk, scale, n_kv, rep,
                       sq0, sq1, sk0, sk1, sk2, sv0, sv1, sv2, sb0, sb2, so0, so1,
                       D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                       SPLITS: tl.constexpr, PRECISION: tl.constexpr):
        pid = tl.program_id(0)   # row * n_kv + kv head: also the bias row
        split = tl.program_id(1)
        row, head = pid // n_kv, pid % n_kv
        r = tl.arange(0, BLOCK_R)
        d = tl.arange(0, BLOCK_D)
        rmask, dmask = r < rep, d < D
        q = tl.load(Q + row * sq0 + (head * rep + r)[:, None] * sq1 + d[None, :],
                    mask=rmask[:, None] & dmask[None, :], other=0.0)                # (R, D)
        # A finite start: a block whose slots are all masked gives p = 0, never exp(-inf + inf).
        m = tl.full([BLOCK_R], -1e30, tl.float32)
        l = tl.zeros([BLOCK_R], tl.float32)
        acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        lo = split * chunk   # chunk: a multiple of BLOCK_S, so no block crosses into the next split
        for start in range(0, chunk, BLOCK_S):
            s = lo + start + tl.arange(0, BLOCK_S)
            smask = s < S
            kv_mask = smask[:, None] & dmask[None, :]
            k = tl.load(K + row * sk0 + head * sk1 + s[:, None] * sk2 + d[None, :], mask=kv_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)               # (R, S) fp32
            bias = tl.load(Bias + pid * sb0 + s * sb2, mask=smask, other=float("-inf"))
            scores = scores * scale + bias[None, :]
            m_new = tl.maximum(m, tl.max(scores, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(V + row * sv0 + head * sv1 + s[:, None] * sv2 + d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        if SPLITS == 1:
            out = acc / l[:, None]
            tl.store(Out + row * so0 + (head * rep + r)[:, None] * so1 + d[None, :],
                     out.to(Out.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
        else:   # partial results of this split, combined by _combine_kernel
            at = pid * SPLITS + split
            tl.store(Part + (at * BLOCK_R + r[:, None]) * BLOCK_D + d[None, :], acc)
            tl.store(Stats + at * 2 * BLOCK_R + r, m)
            tl.store(Stats + at * 2 * BLOCK_R + BLOCK_R + r, l)

    @triton.jit
    def _combine_kernel(Part, Stats, Out, n_kv, rep, so0, so1,
                        D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr):
        pid = tl.program_id(0)
        row, head = pid // n_kv, pid % n_kv
        r = tl.arange(0, BLOCK_R)
        d = tl.arange(0, BLOCK_D)
        top = tl.full([BLOCK_R], -1e30, tl.float32)
        for i in tl.static_range(SPLITS):
            top = tl.maximum(top, tl.load(Stats + (pid * SPLITS + i) * 2 * BLOCK_R + r))
        total = tl.zeros([BLOCK_R], tl.float32)
        acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        for i in tl.static_range(SPLITS):
            at = pid * SPLITS + i
            w = tl.exp(tl.load(Stats + at * 2 * BLOCK_R + r) - top)
            total += tl.load(Stats + at * 2 * BLOCK_R + BLOCK_R + r) * w
            acc += tl.load(Part + (at * BLOCK_R + r[:, None]) * BLOCK_D + d[None, :]) * w[:, None]
        tl.store(Out + row * so0 + (head * rep + r)[:, None] * so1 + d[None, :],
                 (acc / total[:, None]).to(Out.dtype.element_ty), mask=(r < rep)[:, None] & (d < D)[None, :])


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_splits(programs: int, slots: int, sms: int) -> int:
    """Splits of the cache slots per (row, kv head): enough programs to give every SM one, no split
    shorter than a block, and none at all once the rows alone fill the GPU (batch 64 x 8 kv heads)."""
    if programs >= sms:
        return 1
    return max(1, min(-(-sms // programs), -(-slots // BLOCK_S), 16))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                     splits: int = 0) -> torch.Tensor:
    """Attention of q (b, H, 1, D) over the cache k/v (b, Hkv, S, D) (any strides but the last, e.g. a
    slice of the cache's slots) with the additive fp32 ``bias`` (b * Hkv, 1, S) (0 or -inf per slot;
    each row needs one visible slot). Returns (b, H, 1, D) in q's dtype. ``splits``: programs per
    (row, kv head) along the slots, 0 to choose (:func:`choose_splits`).

    Eagerly (and so in a captured CUDA graph) the kernels are launched directly; only under
    ``torch.compile`` does the call go through the ``acculturate::decode_attention`` custom op: a
    custom op's first call imports ``torch._dynamo`` (2.7 s on a 2-core CPU), which a one-off
    ``acculturate generate`` would pay inside its timed call."""
    if torch.compiler.is_compiling():
        return _decode_attention_op(q, k, v, bias, scale, splits)
    return launch(q, k, v, bias, scale, splits)


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
           splits: int = 0) -> torch.Tensor:
    """:func:`decode_attention`'s kernels, launched (no dispatcher)."""
    wait_for_gpu_start_up()   # the first launch would otherwise repeat the load's Triton start-up beside it
    b, H, _, D = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    rep = H // n_kv
    if rep > BLOCK_R:
        raise ValueError(f"decode_attention handles up to {BLOCK_R} query heads per kv head, got {rep}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty((b, H, 1, D), dtype=q.dtype, device=q.device)
    programs = b * n_kv
    splits = splits or choose_splits(programs, S, _sm_count(q.device.index or 0))
    chunk = -(-S // splits)
    chunk = -(-chunk // BLOCK_S) * BLOCK_S
    block_d = max(16, triton.next_power_of_2(D))
    if splits > 1:
        part = torch.empty((programs * splits * BLOCK_R * block_d,), dtype=torch.float32, device=q.device)
        stats = torch.empty((programs * splits * 2 * BLOCK_R,), dtype=torch.float32, device=q.device)
    else:
        part = stats = out   # unused
    precision = "ieee" if q.dtype == torch.float32 else "tf32"   # fp32 models: no TF32 rounding
    _attend_kernel[(programs, splits)](
        q, k, v, bias, out, part, stats, S, chunk, scale, n_kv, rep,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        bias.stride(0), bias.stride(-1), out.stride(0), out.stride(1),
        D=D, BLOCK_R=BLOCK_R, BLOCK_D=block_d, BLOCK_S=BLOCK_S, SPLITS=splits, PRECISION=precision, num_warps=4)
    if splits > 1:
        _combine_kernel[(programs,)](part, stats, out, n_kv, rep, out.stride(0), out.stride(1),
                                     D=D, BLOCK_R=BLOCK_R, BLOCK_D=block_d, SPLITS=splits, num_warps=4)
    return out


_decode_attention_op = torch.library.custom_op("acculturate::decode_attention", launch, mutates_args=())


@_decode_attention_op.register_fake
def _(q, k, v, bias, scale, splits=0):
    return q.new_empty(q.shape)
