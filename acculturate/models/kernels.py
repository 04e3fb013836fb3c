"""Fused GPU kernels for a loaded model, from Liger-Kernel (a well-kept library of Triton kernels).

``use_fused_kernels(model)`` swaps a Llama-family model's RMSNorm, rotary embedding and SwiGLU MLP
for Liger's fused Triton versions, in place: each is one kernel instead of several elementwise ones,
and keeps less for the backward pass. The layers' Linear modules are left alone, so LoRA wrappers
(before or after) keep working. The loss side (linear + cross-entropy fused, never materialising the
logits) lives in :mod:`acculturate.train.loss`.

It is a no-op (returns False) on CPU, without the ``liger-kernel`` package, or for model types Liger
does not cover; the eager transformers code stays the reference path. bench/gpu.py measures what the
swap buys.

``start_preparing_triton(device)`` (called by :func:`acculturate.models.load` for a CUDA device) does
Triton's once-per-process start-up in a background thread while the weights load, so that the first
Triton kernel of a command (Liger's, or the decoding attention of :mod:`acculturate.decode.kv_attention`)
does not pay it inside the command's first step.
"""

from __future__ import annotations

import importlib.util
import logging
import threading

import torch

log = logging.getLogger(__name__)
_triton_start: threading.Thread | None = None

# model_type -> name of Liger's patch function for that architecture (one plain dict, one place).
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
}


def liger_available() -> bool:
    """Whether Liger-Kernel can run here: the package is installed and a CUDA GPU is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def use_fused_kernels(model: torch.nn.Module) -> bool:
    """Patch ``model`` (an HF causal LM, or a PEFT wrapper around one) with Liger's fused RMSNorm,
    RoPE and SwiGLU, in place.

    Liger patches the architecture's module-level functions too (``apply_rotary_pos_emb``), so other
    models of the same type built later in this process also get its RoPE.

    Returns:
        True if the kernels were applied, False where they cannot be (see the module docstring).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    name = LIGER_PATCHES.get(model_type)
    if name is None or not liger_available():
        return False
    wait_for_triton()   # Liger's first launch then finds Triton's start-up done, not half done beside it
    import liger_kernel.transformers as liger

    getattr(liger, name)(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                         fused_linear_cross_entropy=False, model=base)
    return True


def prepare_triton(device: torch.device) -> None:
    """Do now what the first Triton kernel of a process does before it launches, even when its binary
    is already in Triton's on-disk cache (``~/.triton/cache``): import Triton; hash the installation
    (``triton_key()``, part of every compiled kernel's cache key: SHA-256 over Triton's Python sources and
    its 415 MB ``libtriton.so`` in triton 3.6, 0.39 s on one core of the 2-core development machine);
    run ``ptxas --version`` (a subprocess, part of the CUDA backend's hash). Both are cached for the
    process (``functools.lru_cache``). These are Triton internals: where they have moved, this does
    less, and the first launch does the rest itself, as it would anyway."""
    try:
        import triton  # noqa: F401  (the import itself is part of the cost)
        from triton.runtime.cache import triton_key

        triton_key()
        from triton.backends.nvidia.compiler import get_ptxas_version

        major, minor = torch.cuda.get_device_capability(device)
        get_ptxas_version(major * 10 + minor)
    except Exception as e:   # a warm-up: never the reason a command fails
        log.debug("Triton start-up not prepared: %s: %s", type(e).__name__, e)


def start_preparing_triton(device: torch.device) -> bool:
    """Run :func:`prepare_triton` in a daemon thread, once per process, on a CUDA ``device`` where
    Triton is installed. Its file reading and hashing release the GIL, so it overlaps the model load.
    Why: with the Triton decoding attention kernel a call of ``generate`` in a warm process got faster
    (1B shape on an H200, 64 prompts x 256 tokens: 1.62-1.88 s -> 1.20 s), but the one-off
    ``acculturate generate --file`` measured 5,650 tok/s against 7,585 before it (median of 3 fresh
    processes, two different calls). A likely part of that gap, not yet timed apart on a GPU: the
    kernel's first launch in a process carries this start-up (bench/gpu_commands.py ``firstcall`` is
    the A/B). Returns whether a thread started."""
    global _triton_start
    if _triton_start is not None or torch.device(device).type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    _triton_start = threading.Thread(target=prepare_triton, args=(torch.device(device),), name="triton-start",
                                     daemon=True)
    _triton_start.start()
    return True


def wait_for_triton() -> None:
    """Block until :func:`start_preparing_triton`'s thread, if any, is done: a Triton launch after it
    finds the work cached instead of doing it a second time beside the thread."""
    thread = _triton_start
    if thread is not None and thread.is_alive():
        thread.join()
