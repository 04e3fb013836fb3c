"""Activation checkpointing: which activations a training step keeps, and whether a run fits.

Policies (``TrainConfig.activation_checkpointing``):

- ``off``: autograd keeps every activation (fastest; the most memory).
- ``mlp``: selective: each decoder layer's MLP block is recomputed in the backward pass, the
  attention block is not. The MLP holds most of a layer's saved activations (three ``(tokens,
  intermediate)`` tensors against a few ``(tokens, hidden)`` ones) but little of its compute
  beyond its matmuls, so this frees most of the memory for about a third of the recompute.
- ``full``: each decoder layer keeps only its input and recomputes the rest (HF's
  ``activation_checkpointing_enable``, non-reentrant).
- ``auto`` (default): ``off`` on the CPU; on a GPU the cheapest of ``off``, ``mlp``, ``full``
  whose estimated activation memory fits the free GPU memory (after the optimizer state).

:func:`plan` estimates before the first step; a run that cannot fit fails there, with an error
naming the setting to change, instead of with an out-of-memory error minutes later.

The estimate counts, per token and layer, the tensors autograd saves for a Llama-style layer with
fused kernels and FlashAttention (bf16, 2 bytes each): the norms' inputs and outputs, q/k/v, the
attention output (``6 d + 2 d_kv``) and the MLP's gate, up and product (``3 f``), times 1.25 for
what it misses (norm statistics, LoRA's rank-r intermediates, allocator rounding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

POLICIES = ("auto", "off", "mlp", "full")
_SLACK = 1.25        # estimate / counted tensors (see the module docstring)
_HEADROOM = 0.9      # auto keeps 10% of the free memory for fragmentation and the loss's chunks


@dataclass
class MemoryPlan:
    """What :func:`plan` decided, reported in ``metrics.json``."""

    policy: str
    """The policy applied: off, mlp or full."""
    requested: str
    """The configured one (auto included)."""
    activation_bytes: int | None
    """Estimated activations of one micro-batch under ``policy``."""
    free_bytes: int | None
    """GPU memory free for activations (None on the CPU)."""


def _decoder_layers(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"activation checkpointing: no decoder layers found in {type(base).__name__}")
    return layers


def activation_bytes(config, tokens: int, policy: str) -> int:
    """Estimated bytes of saved activations of one micro-batch of ``tokens`` tokens under ``policy``
    for a model with HF ``config`` (hidden_size, intermediate_size, heads, layers)."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = d * getattr(config, "num_key_value_heads", heads) // heads
    attention, mlp = 6 * d + 2 * kv, 3 * f               # elements saved per token and layer
    if policy == "off":
        per_token = L * (attention + mlp)
    elif policy == "mlp":                                 # every MLP input kept; one MLP recomputed at a time
        per_token = L * (attention + d) + mlp
    else:                                                 # full: the layer inputs; one layer recomputed
        per_token = L * d + attention + mlp
    return int(2 * _SLACK * per_token * tokens)


def _optimizer_bytes(model: torch.nn.Module) -> int:
    """AdamW's two fp32 moments and the fp32 gradient of every trainable parameter (the fp32 master
    copies already sit on the device when this is called)."""
    return sum(3 * 4 * p.numel() for p in model.parameters() if p.requires_grad)


def plan(model: torch.nn.Module, requested: str, tokens: int, device: torch.device,
         free_bytes: int | None = None) -> MemoryPlan:
    """Choose the policy for a micro-batch of ``tokens`` tokens; raise ValueError if it cannot fit.

    On the CPU there is no budget to read: ``auto`` is ``off`` and explicit policies are applied as
    asked. On CUDA the budget is ``torch.cuda.mem_get_info``'s free memory (or ``free_bytes``, where
    given) minus the optimizer state.
    """
    if requested not in POLICIES:
        raise ValueError(f"train.activation_checkpointing: expected one of {list(POLICIES)}, got {requested!r}")
    config = getattr(model, "config", None)
    measurable = (device.type == "cuda" or free_bytes is not None) and all(
        hasattr(config, name) for name in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    if not measurable:
        return MemoryPlan("off" if requested == "auto" else requested, requested, None, None)
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    budget = free - _optimizer_bytes(model)
    need = {p: activation_bytes(config, tokens, p) for p in ("off", "mlp", "full")}
    gib = lambda n: f"{n / 2 ** 30:.1f} GiB"  # noqa: E731
    if requested == "auto":
        for policy in ("off", "mlp", "full"):
            if need[policy] <= _HEADROOM * budget:
                log.info("activation checkpointing: %s (activations ~%s of %s free)", policy,
                         gib(need[policy]), gib(budget))
                return MemoryPlan(policy, requested, need[policy], budget)
        raise ValueError(
            f"this run does not fit the GPU: even with full activation checkpointing a micro-batch of "
            f"{tokens} tokens needs ~{gib(need['full'])} of activations and {gib(max(budget, 0))} are free "
            f"after the weights and optimizer state; lower train.batch_size or train.max_length "
            f"(raise train.grad_accum to keep the tokens per step), or train a smaller model or with QLoRA")
    if need[requested] > budget:
        lighter = [p for p in ("mlp", "full") if need[p] <= budget and POLICIES.index(p) > POLICIES.index(requested)]
        hint = (f"set train.activation_checkpointing to {lighter[0]!r} (or 'auto')" if lighter else
                "lower train.batch_size or train.max_length (raise train.grad_accum to keep the tokens per step)")
        raise ValueError(
            f"this run does not fit the GPU: train.activation_checkpointing={requested!r} needs "
            f"~{gib(need[requested])} of activations for a micro-batch of {tokens} tokens and "
            f"{gib(max(budget, 0))} are free after the weights and optimizer state; {hint}")
    return MemoryPlan(requested, requested, need[requested], budget)


def apply(model: torch.nn.Module, policy: str) -> None:
    """Turn ``policy`` on for ``model`` (``off``: nothing); :func:`remove` undoes it."""
    if policy == "off":
        return
    if policy == "full":
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return
    if policy != "mlp":
        raise ValueError(f"unknown activation checkpointing policy {policy!r}")
    for layer in _decoder_layers(model):
        mlp = layer.mlp
        if "forward" in vars(mlp):   # already wrapped
            continue
        mlp.forward = _recomputed(mlp, type(mlp).forward.__get__(mlp))


def remove(model: torch.nn.Module, policy: str) -> None:
    """Undo :func:`apply` (after training: decoding never recomputes anything anyway)."""
    if policy == "full":
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    elif policy == "mlp":
        for layer in _decoder_layers(model):
            vars(layer.mlp).pop("forward", None)


def _recomputed(module: torch.nn.Module, forward):
    def run(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run
