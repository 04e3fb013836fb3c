"""Export an adapted model as a plain HF model directory (LoRA merged into the weights).

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` (or
``acculturate.models.load``) alone: no acculturate or PEFT needed to serve it, and no LoRA cost.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from acculturate.adapters.lora import merge_lora
from acculturate.adapters.peft_format import load_adapter, read_adapter_config
from acculturate.io import atomic_dir


def export_merged(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Merge the model's LoRA layers into its weights and save model and tokenizer, atomically.

    The merge happens in place (as PEFT's ``merge_and_unload`` does): afterwards ``model`` is a
    plain model that gives the same outputs. A model without LoRA layers (``full``/``head``
    fine-tuning) is saved as it is.

    Args:
        model: an HF causal LM, with or without LoRA layers.
        tokenizer: its tokenizer (saved beside the weights); None to save the model only.
        out_dir: the output directory; replaced whole if it exists.
    Returns:
        ``out_dir`` as a Path.
    """
    merge_lora(model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def merge_adapter_dir(base_name_or_path: str | os.PathLike | None, adapter_dir: str | os.PathLike,
                      out_dir: str | os.PathLike, *, device: str = "cpu", dtype=None) -> Path:
    """Load a base model, apply a saved adapter, merge it and export the result (``acculturate merge``).

    Args:
        base_name_or_path: anything :func:`acculturate.models.load` accepts; None to use the
            ``base_model_name_or_path`` recorded in the adapter's config.
        adapter_dir: a PEFT-format LoRA adapter directory.
        out_dir: where the merged HF model directory goes.
        device, dtype: where and in which precision to merge (default: CPU, the model's dtype
            choice for CPU, i.e. fp32, so the merge itself adds no rounding).
    Returns:
        ``out_dir`` as a Path.
    """
    from acculturate.models import load

    if base_name_or_path is None:
        _, raw = read_adapter_config(adapter_dir)
        base_name_or_path = raw.get("base_model_name_or_path")
        if not base_name_or_path:
            raise ValueError(f"{Path(adapter_dir) / 'adapter_config.json'} records no "
                             f"base_model_name_or_path; name the base model explicitly")
    model, tokenizer = load(base_name_or_path, device=device, dtype=dtype)
    load_adapter(model, adapter_dir)
    return export_merged(model, tokenizer, out_dir)
