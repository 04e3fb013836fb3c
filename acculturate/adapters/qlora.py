"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA adapters over NF4-quantized frozen weights.

Each targeted projection becomes ``LoRALinear(base_layer=NF4Linear)``:
``Y = X dequant(W_nf4)^T + scale * X A^T B^T``. The base is 4.127 bits per weight and dequantized
only inside its own forward/backward; ``A``/``B`` train in fp32 (or the model's dtype if that is
fp32 already), exactly as under plain LoRA, so adapters save and load in PEFT's format unchanged.

``LoRALinear`` wraps only ``nn.Linear``, so :func:`apply_qlora` wraps the fp layers first and then
swaps each wrapper's ``base_layer`` for its NF4 copy. Merging reads and writes ``base_layer.weight``;
an NF4 base has no writable weight, so :func:`merge_qlora` dequantizes the bases back to
``nn.Linear`` before merging (the merged model holds the NF4-rounded weights plus the update, which
is what the adapter was trained against).
"""

from __future__ import annotations

import torch
from torch import nn

from acculturate.adapters.lora import LoRAConfig, apply_lora, lora_modules, merge_lora
from acculturate.adapters.nf4 import NF4Linear


def quantize_lora_bases(model: nn.Module, blocksize: int = 64, scale_blocksize: int = 256) -> list[str]:
    """Quantize the ``base_layer`` of every ``LoRALinear`` in ``model`` to NF4, in place.

    Also the way to run a saved adapter over a 4-bit base: ``load_adapter(model, dir)`` on the fp
    model, then this. Bases that are already NF4 are left as they are.

    Returns:
        The paths of the ``LoRALinear`` modules whose base was quantized now.
    """
    done = []
    for name, layer in lora_modules(model).items():
        if isinstance(layer.base_layer, nn.Linear):
            if layer.merged:
                raise ValueError(f"{name} is merged; quantize the base before merging, not after")
            base = NF4Linear.from_linear(layer.base_layer, blocksize, scale_blocksize)
            layer.base_layer = base.train(layer.training)
            done.append(name)
    return done


def apply_qlora(model: nn.Module, config: LoRAConfig, blocksize: int = 64,
                scale_blocksize: int = 256) -> list[str]:
    """Wrap the ``config.targets`` projections in LoRA and quantize their frozen weights to NF4.

    Every other parameter is frozen (as :func:`apply_lora` does); only ``lora_A``/``lora_B`` train.
    Quantize on the device you will train on: quantization runs where the weights are.

    Args:
        model: the model to adapt, modified in place.
        config: LoRA rank, scale, dropout and target names.
        blocksize, scale_blocksize: NF4 block sizes (64 and 256 in QLoRA).
    Returns:
        The paths of the adapted modules, in model order.
    Raises:
        ValueError: as :func:`apply_lora` (a target matched nothing, or LoRA is already applied).
    """
    names = apply_lora(model, config)
    quantize_lora_bases(model, blocksize, scale_blocksize)
    return names


@torch.no_grad()
def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every ``NF4Linear`` (standalone or a LoRA base) by an ``nn.Linear`` holding its
    dequantized weight in ``dtype``, frozen. Modifies ``model`` in place.

    Returns:
        The paths of the replaced modules.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, NF4Linear) or not name:  # the model itself has no parent to swap it in
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=module.packed.device, dtype=dtype)
        linear.weight.copy_(module.dequantize(dtype))
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        linear.requires_grad_(False)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, linear)
        replaced.append(name)
    return replaced


def merge_qlora(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dequantize the NF4 bases to ``dtype`` and merge LoRA into them (:func:`merge_lora`).

    The result is a plain model with ``nn.Linear`` projections, ready for ``save_pretrained`` or
    ``export_merged``. Modifies ``model`` in place and returns it.
    """
    dequantize_model(model, dtype)
    return merge_lora(model)
