"""4-bit NormalFloat (NF4) storage for frozen linear weights, with double quantization (QLoRA).

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) keeps the frozen base weights in 4 bits:

- The weight, flattened row-major, is cut into blocks of ``blocksize`` (64) values. Each block is
  divided by its absmax and every value replaced by the nearest of the 16 NF4 levels
  (:data:`NF4_LEVELS`, the quantiles of N(0, 1) rescaled to [-1, 1], with an exact zero). Two 4-bit
  codes go into one byte: the first value in the high nibble, the second in the low one.
- Double quantization: the fp32 absmaxes (one per 64 weights, 0.5 bit/weight) are themselves
  quantized. Their mean is subtracted, then each block of ``scale_blocksize`` (256) centred scales
  is stored as int8 codes ``round(127 * s / c)`` with its own fp32 absmax ``c``. The code for the
  scales is linear (symmetric int8, as torchao's NF4Tensor does) rather than bitsandbytes' dynamic
  8-bit map: it is simpler to check against a reference, and on SmolLM2-135M's 210 projections the
  scale error it adds is 0.29% of a scale on average (0.62% in the worst layer), 30x below the
  NF4 rounding itself (mean |W - dequant(W)| is 9.5% of mean |W|).
  Storage: 4 + 8/64 + 32/(64*256) = 4.127 bits per weight (plus one fp32 mean per layer).

The packed codes stay in memory; :class:`NF4Linear` dequantizes them inside its forward pass and again
inside its backward pass (a custom autograd Function that saves only the packed tensors), so no
full-size copy of the weight outlives a layer's matmul. The weight is frozen: gradients flow to the
input only.

Why not torchao's ``NF4Tensor``: torchao 0.18.0 installs here from PyPI and does double-quantize
(mean-subtracted scales, int8 in blocks of 256, one constant per block). Measured on this 2-core CPU
(torch 2.13, fp32, 2 threads, forward+backward of ``x (8*128, in)`` with grad to ``x``, interleaved
runs, min / median of 25):

    layer         nn.Linear fp32    torchao linear_nf4    NF4Linear (this module)
    576 -> 1536     20.8 / 22.7 ms     26.5 / 29.1 ms         23.3 / 27.0 ms
    1536 -> 576     20.7 / 24.9 ms     26.3 / 33.2 ms         23.7 / 28.0 ms
    dequantize 576x1536 alone: torchao 4.0 ms, this module 1.6 ms; quantize: 65-80 ms vs 16 ms.

- The NF4 overhead over fp32 is about half of torchao's: torchao unpacks with two gathers, a stack
  and an interleave; here one gather from a 256-entry table of code pairs (one lookup per byte).
- torchao needs ``numel % (64 * 256) == 0``: SmolLM2's k_proj/v_proj (192 x 576 = 110,592 weights,
  6.75 scale blocks) fail with an AssertionError. Here the last blocks are zero-padded.
- torchao's NF4 table is rounded to 4 decimals (-0.6962 instead of -0.6961928...), so its levels are
  not exactly bitsandbytes' (the mean round-trip error is the same to 4 digits).
- A plain module with buffers keeps ``state_dict()``/``.to(device)`` ordinary and adds no dependency.

On CUDA (H100, torch 2.11, bf16, the same shapes) forward+backward is launch-bound: 0.72 ms against
nn.Linear's 0.11 ms for 576 -> 1536, and 0.73 ms against 0.14 ms for 4096 -> 4096 (dequantize alone:
0.13 and 0.21 ms). A fused dequantize kernel would remove most of that; it is not written yet.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from acculturate.adapters.lora import DEFAULT_TARGETS, matches_target

# The NF4 code of bitsandbytes/QLoRA (Dettmers et al. 2023, appendix E), ascending.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
SCALE_CODE_MAX = 127  # symmetric int8 for the double-quantized scales


@functools.lru_cache(maxsize=None)
def _levels(device: torch.device) -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)  # (16,)


@functools.lru_cache(maxsize=None)
def _pair_table(device: torch.device) -> torch.Tensor:
    """(256, 2) fp32: row ``b`` holds the levels of byte ``b``'s high and low nibble, so unpacking is
    one gather per byte (measured 2.6 ms for 576x1536 vs 54 ms for two gathers + stack)."""
    levels = _levels(device)
    return torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=-1)


@functools.lru_cache(maxsize=None)
def _midpoints(device: torch.device) -> torch.Tensor:
    levels = _levels(device)
    return (levels[1:] + levels[:-1]) / 2  # (15,)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_blocksizes(blocksize, scale_blocksize) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 2:
        raise ValueError(f"blocksize must be a positive even integer (two 4-bit codes per byte), got {blocksize!r}")
    if isinstance(scale_blocksize, bool) or not isinstance(scale_blocksize, int) or scale_blocksize <= 0:
        raise ValueError(f"scale_blocksize must be a positive integer, got {scale_blocksize!r}")


def storage_sizes(numel: int, blocksize: int, scale_blocksize: int) -> tuple[int, int, int]:
    """``(packed bytes, scale codes, scale constants)`` for ``numel`` weights; the last blocks are
    zero-padded to whole blocks."""
    n_blocks = _ceil_div(numel, blocksize)
    n_scale_blocks = _ceil_div(n_blocks, scale_blocksize)
    return n_blocks * blocksize // 2, n_scale_blocks * scale_blocksize, n_scale_blocks


@torch.no_grad()
def quantize_nf4(weight: torch.Tensor, blocksize: int = 64, scale_blocksize: int = 256
                 ) -> dict[str, torch.Tensor]:
    """Quantize a tensor to NF4 with double-quantized block scales.

    Args:
        weight: any shape; quantized flattened (row-major), on its own device.
        blocksize: weights per absmax block (64 in QLoRA).
        scale_blocksize: block scales per int8 block of the double quantization (256 in QLoRA).
    Returns:
        ``{"packed": uint8 (n_blocks*blocksize/2,), "scale_codes": int8 (n_scale_blocks*scale_blocksize,),
        "scale_consts": fp32 (n_scale_blocks,), "scale_mean": fp32 (1,)}``.
    """
    _check_blocksizes(blocksize, scale_blocksize)
    numel = weight.numel()
    if numel == 0:
        raise ValueError("cannot quantize an empty tensor")
    n_packed, n_codes, n_scale_blocks = storage_sizes(numel, blocksize, scale_blocksize)
    device = weight.device
    flat = weight.detach().reshape(-1).float()
    flat = F.pad(flat, (0, 2 * n_packed - numel))  # zeros do not change a block's absmax
    blocks = flat.view(-1, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]
    # Nearest level: level i covers (mid[i-1], mid[i]]; a value exactly on a midpoint takes the lower level.
    codes = torch.bucketize(normed, _midpoints(device), out_int32=True).to(torch.uint8).view(-1)  # (n_pad,) in [0, 15]
    packed = (codes[0::2] << 4) | codes[1::2]  # (n_pad/2,) uint8: first value in the high nibble

    mean = absmax.mean()
    centered = F.pad(absmax - mean, (0, n_codes - absmax.numel())).view(n_scale_blocks, scale_blocksize)
    consts = centered.abs().amax(dim=1)  # (n_scale_blocks,)
    scale_codes = torch.round(centered / consts.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
                              * SCALE_CODE_MAX).clamp_(-SCALE_CODE_MAX, SCALE_CODE_MAX)
    return {"packed": packed, "scale_codes": scale_codes.to(torch.int8).view(-1),
            "scale_consts": consts, "scale_mean": mean.reshape(1)}


def dequantize_scales(scale_codes: torch.Tensor, scale_consts: torch.Tensor, scale_mean: torch.Tensor,
                      n_blocks: int) -> torch.Tensor:
    """The fp32 block absmaxes back from their int8 codes: ``code * c / 127 + mean``, shape (n_blocks,)."""
    codes = scale_codes.view(scale_consts.numel(), -1).float()  # (n_scale_blocks, scale_blocksize)
    scales = codes * (scale_consts.float() / SCALE_CODE_MAX)[:, None] + scale_mean.float()
    return scales.view(-1)[:n_blocks]


def dequantize_nf4(packed: torch.Tensor, scale_codes: torch.Tensor, scale_consts: torch.Tensor,
                   scale_mean: torch.Tensor, shape: tuple[int, ...], blocksize: int = 64,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight back from :func:`quantize_nf4`'s tensors: ``level[code] * scale[block]``.

    Args:
        packed, scale_codes, scale_consts, scale_mean: as returned by :func:`quantize_nf4`.
        shape: the original weight's shape.
        blocksize: the blocksize it was quantized with.
        dtype: the result's dtype (the product is formed in fp32 and then cast).
    Returns:
        A new tensor of ``shape`` and ``dtype`` on ``packed``'s device.
    """
    args = (packed, _pair_table(packed.device), scale_codes, scale_consts, scale_mean, tuple(shape), blocksize, dtype)
    global _compiled_dequantize
    if packed.is_cuda and _compiled_dequantize == "auto":
        compile_dequantize()
    if packed.is_cuda and _compiled_dequantize is not None:
        try:
            return _compiled_dequantize(*args)
        except Exception as e:  # no working Triton/compiler here: the eager path is correct, only slower
            warnings.warn(f"NF4: compiled dequantization failed ({type(e).__name__}: {e}); using the eager path")
            _compiled_dequantize = None
    return _dequantize(*args)


def _dequantize(packed, pair_table, scale_codes, scale_consts, scale_mean, shape, blocksize, dtype):
    numel = 1
    for size in shape:
        numel *= size
    n_blocks = 2 * packed.numel() // blocksize
    scales = dequantize_scales(scale_codes, scale_consts, scale_mean, n_blocks)  # (n_blocks,)
    values = F.embedding(packed.long(), pair_table)  # (n_pad/2, 2): one row per byte
    weight = values.view(n_blocks, blocksize) * scales[:, None]  # (n_blocks, blocksize)
    return weight.view(-1)[:numel].view(shape).to(dtype)


# "auto": compile on the first CUDA call (bench/qlora_gpu.py, H100, Llama-3.1-8B shape: 1.17x the
# tokens/s of eager dequantization, which alone only matched bitsandbytes + PEFT).
_compiled_dequantize = "auto"


def compile_dequantize(enabled: bool = True) -> None:
    """Dequantize on CUDA with a ``torch.compile``d function: the gather, the scale maths and the cast
    fuse into one kernel instead of five, which matters because every NF4 layer dequantizes in its
    forward and again in its backward (see bench/qlora_gpu.py for the measured effect). CPU keeps
    the eager path. Shapes are static, so each distinct weight shape compiles once."""
    global _compiled_dequantize
    _compiled_dequantize = torch.compile(_dequantize, dynamic=False) if enabled else None


class _NF4Matmul(torch.autograd.Function):
    """``x @ dequant(W)^T`` that saves only the packed tensors and re-dequantizes in backward."""

    @staticmethod
    def forward(ctx, x, packed, scale_codes, scale_consts, scale_mean, shape, blocksize):
        ctx.shape, ctx.blocksize = shape, blocksize
        ctx.save_for_backward(packed, scale_codes, scale_consts, scale_mean)
        weight = dequantize_nf4(packed, scale_codes, scale_consts, scale_mean, shape, blocksize, x.dtype)
        return F.linear(x, weight)  # (..., in) -> (..., out)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_nf4(*ctx.saved_tensors, ctx.shape, ctx.blocksize, grad_out.dtype)
            grad_x = grad_out @ weight  # (..., out) @ (out, in) -> (..., in)
        return grad_x, None, None, None, None, None, None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 with double-quantized scales.

    ``forward(x) = x @ dequant(W)^T + b``, computed in ``x``'s dtype; only ``x`` gets a gradient. The
    bias, if any, is kept as it was (a frozen fp parameter). Build one with :meth:`from_linear`; the
    constructor allocates empty storage of the right size (for ``load_state_dict``).

    Args:
        in_features, out_features: the weight's shape is (out_features, in_features).
        bias: whether the layer has a bias.
        blocksize, scale_blocksize: see :func:`quantize_nf4`.
        device: where the storage lives.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, blocksize: int = 64,
                 scale_blocksize: int = 256, device=None):
        super().__init__()
        _check_blocksizes(blocksize, scale_blocksize)
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.scale_blocksize = blocksize, scale_blocksize
        n_packed, n_codes, n_scale_blocks = storage_sizes(in_features * out_features, blocksize, scale_blocksize)
        self.register_buffer("packed", torch.zeros(n_packed, dtype=torch.uint8, device=device))
        self.register_buffer("scale_codes", torch.zeros(n_codes, dtype=torch.int8, device=device))
        self.register_buffer("scale_consts", torch.zeros(n_scale_blocks, dtype=torch.float32, device=device))
        self.register_buffer("scale_mean", torch.zeros(1, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, scale_blocksize: int = 256) -> "NF4Linear":
        """Quantize an ``nn.Linear``'s weight (on its device); the bias is copied and frozen."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    blocksize=blocksize, scale_blocksize=scale_blocksize, device=weight.device)
        for name, tensor in quantize_nf4(weight, blocksize, scale_blocksize).items():
            getattr(layer, name).copy_(tensor)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def _storage(self) -> tuple[torch.Tensor, ...]:
        return self.packed, self.scale_codes, self.scale_consts, self.scale_mean

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a new (out_features, in_features) tensor of ``dtype``."""
        return dequantize_nf4(*self._storage(), (self.out_features, self.in_features), self.blocksize, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (fp32, or the bias's dtype), for code that reads ``layer.weight``.

        It is a fresh read-only copy (an inference tensor): an in-place write such as
        ``LoRALinear.merge``'s ``weight.copy_(...)`` raises instead of silently updating a temporary.
        To merge LoRA into a quantized model, dequantize it first (``qlora.merge_qlora``).
        """
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        with torch.inference_mode():
            return self.dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        out = _NF4Matmul.apply(x, *self._storage(), (self.out_features, self.in_features), self.blocksize)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out  # (..., out)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, blocksize={self.blocksize}, "
                f"scale_blocksize={self.scale_blocksize}")


def nf4_modules(model: nn.Module) -> dict[str, NF4Linear]:
    """The model's ``NF4Linear`` layers by module path (the model itself under ``""``), in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NF4Linear)}


def bits_per_weight(module: nn.Module) -> float:
    """Bits of quantized storage per weight over every ``NF4Linear`` in ``module`` (or ``module``
    itself), from the stored tensors' bytes (codes, scale codes, scale constants, mean; not biases)."""
    layers = list(nf4_modules(module).values())
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no NF4Linear layer")
    n_bytes = sum(t.numel() * t.element_size() for layer in layers for t in layer._storage())
    n_weights = sum(layer.in_features * layer.out_features for layer in layers)
    return 8 * n_bytes / n_weights


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_model(model: nn.Module, targets=DEFAULT_TARGETS, blocksize: int = 64,
                   scale_blocksize: int = 256) -> list[str]:
    """Replace every ``nn.Linear`` whose path matches one of ``targets`` by an :class:`NF4Linear`.

    Targets follow LoRA's rule (the path equals the name or ends with ``"." + name``), so the default
    quantizes q/k/v/o and gate/up/down projections of Llama-style models. The old fp weights are
    released as each layer is replaced. Modifies ``model`` in place.

    Args:
        model: the model to quantize.
        targets: module names to quantize.
        blocksize, scale_blocksize: see :func:`quantize_nf4`.
    Returns:
        The paths of the quantized modules, in model order.
    Raises:
        ValueError: a target matched no ``nn.Linear`` (the message names it and the Linear names
            that exist).
    """
    if isinstance(targets, str):
        targets = (targets,)
    _check_blocksizes(blocksize, scale_blocksize)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    unmatched = [t for t in targets if not any(matches_target(n, t) for n in linears)]
    if unmatched:
        short = sorted({n.rsplit(".", 1)[-1] for n in linears})
        hint = (" (its LoRA layers' bases are named base_layer: use qlora.quantize_lora_bases)"
                if any(n.endswith(".base_layer") for n in linears) else "")
        raise ValueError(f"quantize_model targets {unmatched} matched no nn.Linear module of "
                         f"{type(model).__name__}; its Linear modules are named {short}{hint}")
    names = [n for n in linears if any(matches_target(n, t) for t in targets)]
    for name in names:
        _set_module(model, name, NF4Linear.from_linear(model.get_submodule(name), blocksize, scale_blocksize))
    return names
