"""Export an adapted model as a plain HF model directory (LoRA merged into the weights).

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` (or
``acculturate.models.load``) alone: no acculturate or PEFT needed to serve it, and no LoRA cost.

QLoRA: an adapter trained over NF4 weights learned a correction to ``dequant(NF4(W))``, not to
``W``. ``merge_adapter_dir(..., quantized_base=True)`` (``acculturate merge --qlora``) therefore
quantizes the adapted modules' base weights as training did and merges into their dequantized
values; the result is a plain model whose adapted projections hold ``dequant(NF4(W)) + s B A``.
Prompt tuning cannot be merged: its virtual tokens are inputs, not weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from acculturate.adapters.base_model import pick_base_model
from acculturate.adapters.lora import merge_lora
from acculturate.adapters.nf4 import nf4_modules
from acculturate.adapters.peft_format import AdapterError, load_adapter, read_config_json
from acculturate.adapters.prompt_tuning import prompt_embedding
from acculturate.adapters.qlora import dequantize_model, quantize_lora_bases
from acculturate.adapters.token_rows import remove_token_rows
from acculturate.io import atomic_dir


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's own weights (its input embedding; LoRA adapters may be fp32)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.dtype
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def export_merged(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Merge the model's LoRA layers into its weights and save model and tokenizer, atomically.

    The merge happens in place (as PEFT's ``merge_and_unload`` does): afterwards ``model`` is a
    plain model that gives the same outputs. A model without LoRA layers (``full``/``head``
    fine-tuning) is saved as it is. NF4 layers (QLoRA) are first dequantized to the model's dtype.

    Args:
        model: an HF causal LM, with or without LoRA layers.
        tokenizer: its tokenizer (saved beside the weights); None to save the model only.
        out_dir: the output directory; replaced whole if it exists.
    Returns:
        ``out_dir`` as a Path.
    Raises:
        ValueError: the model is prompt-tuned (save its adapter with ``save_adapter`` instead).
    """
    if prompt_embedding(model) is not None:
        raise ValueError("a prompt-tuned model cannot be merged (its virtual tokens are inputs, not "
                         "weights); save the adapter with save_adapter() instead")
    if nf4_modules(model):
        dequantize_model(model, _model_dtype(model))
    merge_lora(model)
    remove_token_rows(model, merge=True)   # trained new-vocabulary rows into the embedding (and tied head)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def merge_adapter_dir(base_name_or_path: str | os.PathLike | None, adapter_dir: str | os.PathLike,
                      out_dir: str | os.PathLike, *, device: str = "cpu", dtype=None,
                      quantized_base: bool = False) -> Path:
    """Load a base model, apply a saved adapter, merge it and export the result (``acculturate merge``).

    Args:
        base_name_or_path: anything :func:`acculturate.models.load` accepts; None to use the
            ``base_model_name_or_path`` recorded in the adapter's config, else the embedded default
            (:func:`acculturate.adapters.base_model.pick_base_model`).
        adapter_dir: a PEFT-format LoRA adapter directory.
        out_dir: where the merged HF model directory goes.
        device, dtype: where and in which precision to merge (default: CPU, the model's dtype
            choice for CPU, i.e. fp32, so the merge itself adds no rounding).
        quantized_base: the adapter was trained with QLoRA: merge it into ``dequant(NF4(W))``
            (NF4 with QLoRA's default block sizes, 64 and 256, as ``apply_qlora`` uses), the weights
            it was trained against, rather than into ``W``.
    Returns:
        ``out_dir`` as a Path.
    Raises:
        AdapterError: the adapter is not a LoRA adapter (prompt tuning cannot be merged).
    """
    from acculturate.models import load

    path, raw = read_config_json(adapter_dir)
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; only LoRA adapters can be merged "
                           f"into the weights (a prompt-tuning adapter is used with --adapter instead)")
    model, tokenizer = load(pick_base_model(base_name_or_path, [adapter_dir]), device=device, dtype=dtype)
    load_adapter(model, adapter_dir)
    if quantized_base:
        quantize_lora_bases(model)
    return export_merged(model, tokenizer, out_dir)
