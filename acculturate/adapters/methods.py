"""Fine-tuning methods: which parameters train. ``METHODS`` is the one registry of them.

- ``full``: every parameter trains.
- ``head``: only the output head (``lm_head``) trains, plus, with ``head_blocks=N``, the last N
  transformer blocks and the final norm before the head.
- ``lora``: LoRA layers on the configured Linear modules; only their ``A``/``B`` train.
- ``qlora``: the same, with the adapted modules' frozen weights stored in NF4 (4.127 bits/weight).
- ``prompt_tuning``: n learned virtual-token vectors in front of every input; the model is frozen.

Tied weights: SmolLM2 (like most small LMs) ties ``lm_head.weight`` to ``embed_tokens.weight``:
one tensor is both the input embedding and the output head. Training "only the head" would then
also move every input embedding. ``head`` therefore unties them: ``lm_head`` gets its own copy of
the weight (outputs at step 0 are unchanged) and ``config.tie_word_embeddings`` becomes False, so
the saved model keeps the two apart. The untied model has one more vocab x hidden matrix (28M
parameters for SmolLM2-135M).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from acculturate.adapters.lora import LoRAConfig, apply_lora
from acculturate.adapters.nf4 import bits_per_weight, nf4_modules
from acculturate.adapters.prompt_tuning import PromptTuningConfig, apply_prompt_tuning
from acculturate.adapters.qlora import apply_qlora


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a tied tensor counts once.

    The total includes the weights of NF4-quantized layers (QLoRA), which are buffers rather than
    parameters: each counts once, as the ``in x out`` weight it stands for.
    """
    params = list(model.parameters())  # parameters() yields a shared tensor once
    quantized = sum(m.in_features * m.out_features for m in nf4_modules(model).values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params) + quantized


@dataclass
class MethodSettings:
    """Everything a method's prepare function may need (each uses its own fields)."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """For ``lora``/``qlora``."""
    head_blocks: int = 0
    """For ``head``."""
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    """For ``prompt_tuning``."""
    tokenizer: Any = None
    """For ``prompt_tuning`` with ``init_text``."""


def untie_output_head(model: nn.Module) -> bool:
    """Give the output head its own copy of the weight it shares with the input embedding.

    Returns:
        True if the weights were tied (and are now separate), False if they already were.
    """
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):
        # transformers >= 5 keeps the tie map it computed at init; recompute it from the new config
        # so save_pretrained/from_pretrained do not re-tie the head to the embedding.
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return True


def _decoder_parts(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """The transformer blocks and the final norm of a decoder-only HF model."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if not isinstance(layers, nn.ModuleList) or norm is None:
        raise ValueError(
            f"head_blocks needs a decoder with `.layers` (blocks) and `.norm` (final norm); "
            f"{type(model).__name__} does not have them")
    return layers, norm


def prepare_full(model: nn.Module, settings: MethodSettings) -> None:
    """Every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)


def prepare_head(model: nn.Module, settings: MethodSettings) -> None:
    """The output head (untied from the embedding) trains; with ``head_blocks=N`` also the last N
    blocks and the final norm."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head (get_output_embeddings() is None)")
    untie_output_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [head]
    head_blocks = settings.head_blocks
    if head_blocks:
        layers, norm = _decoder_parts(model)
        if head_blocks > len(layers):
            raise ValueError(f"head_blocks={head_blocks} but the model has only {len(layers)} blocks")
        trainable += [norm, *layers[len(layers) - head_blocks:]]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)


def prepare_lora(model: nn.Module, settings: MethodSettings) -> None:
    """LoRA layers on ``lora.targets``; only their A/B matrices train."""
    apply_lora(model, settings.lora)


def prepare_qlora(model: nn.Module, settings: MethodSettings) -> None:
    """LoRA layers on ``lora.targets`` over NF4-quantized frozen weights; only A/B train."""
    apply_qlora(model, settings.lora)


def prepare_prompt_tuning(model: nn.Module, settings: MethodSettings) -> None:
    """``num_virtual_tokens`` learned vectors before every input; only they train."""
    apply_prompt_tuning(model, settings.prompt_tuning, settings.tokenizer)


METHODS: dict[str, Callable[[nn.Module, MethodSettings], None]] = {
    "full": prepare_full,
    "head": prepare_head,
    "lora": prepare_lora,
    "qlora": prepare_qlora,
    "prompt_tuning": prepare_prompt_tuning,
}


def prepare_model(model: nn.Module, method: str, lora: LoRAConfig | None = None,
                  head_blocks: int = 0, prompt_tuning: PromptTuningConfig | None = None,
                  tokenizer=None) -> dict:
    """Set which parameters of ``model`` train, in place.

    Args:
        model: an HF causal LM.
        method: a key of :data:`METHODS`.
        lora: the LoRA config for ``"lora"``/``"qlora"`` (default: ``LoRAConfig()``).
        head_blocks: for ``"head"``: also train the last this many blocks and the final norm.
        prompt_tuning: the config for ``"prompt_tuning"`` (default: ``PromptTuningConfig()``:
            20 randomly initialised virtual tokens).
        tokenizer: the model's tokenizer; ``"prompt_tuning"`` with ``init_text`` needs it.
    Returns:
        ``{"method", "trainable", "total", "percent"}``: parameter counts after preparation (see
        :func:`count_parameters`), plus ``"bits_per_weight"`` of the quantized weights when the
        model has NF4 layers (``"qlora"``).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {sorted(METHODS)}")
    if isinstance(head_blocks, bool) or not isinstance(head_blocks, int) or head_blocks < 0:
        raise ValueError(f"head_blocks must be a non-negative integer, got {head_blocks!r}")
    if head_blocks and method != "head":
        raise ValueError(f"head_blocks={head_blocks} only applies to method 'head', not {method!r}")
    settings = MethodSettings(lora=lora if lora is not None else LoRAConfig(), head_blocks=head_blocks,
                              prompt_tuning=prompt_tuning if prompt_tuning is not None else PromptTuningConfig(),
                              tokenizer=tokenizer)
    METHODS[method](model, settings)
    trainable, total = count_parameters(model)
    summary = {"method": method, "trainable": trainable, "total": total,
               "percent": round(100.0 * trainable / total, 4) if total else 0.0}
    if nf4_modules(model):
        summary["bits_per_weight"] = round(bits_per_weight(model), 4)
    return summary
