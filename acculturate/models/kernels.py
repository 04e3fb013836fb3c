"""Fused GPU kernels for a loaded model, from Liger-Kernel (a well-kept library of Triton kernels).

``use_fused_kernels(model)`` swaps a Llama-family model's RMSNorm, rotary embedding and SwiGLU MLP
for Liger's fused Triton versions, in place: each is one kernel instead of several elementwise ones,
and keeps less for the backward pass. The layers' Linear modules are left alone, so LoRA wrappers
(before or after) keep working. The loss side (linear + cross-entropy fused, never materialising the
logits) lives in :mod:`acculturate.train.loss`.

It is a no-op (returns False) on CPU, without the ``liger-kernel`` package, or for model types Liger
does not cover; the eager transformers code stays the reference path. bench/gpu.py measures what the
swap buys.

Triton's once-per-process start-up runs beside the model load (:mod:`acculturate.models.gpu_start`);
Liger's first launch waits for it rather than repeating it.
"""

from __future__ import annotations

import importlib.util

import torch

from acculturate.models.gpu_start import wait_for_gpu_start_up

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
    wait_for_gpu_start_up()   # Liger's first launch then finds Triton's start-up done, not half done beside it
    import liger_kernel.transformers as liger

    getattr(liger, name)(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                         fused_linear_cross_entropy=False, model=base)
    return True
