"""Pick the device and dtype a model runs in, unless the user says otherwise."""

from __future__ import annotations

import torch

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA GPU, else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given; bf16 on a GPU that supports it; fp32 otherwise (CPU bf16 matmuls are
    slower than fp32 on most x86 CPUs without AMX, and fp16 on CPU loses accuracy for nothing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype != "auto":
        try:
            return _DTYPES[str(dtype).lower()]
        except KeyError:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)} or 'auto'") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
