"""Activation checkpointing: which activations a training step keeps, and whether a run fits.

Policies (``TrainConfig.activation_checkpointing``):

- ``off``: autograd keeps every activation (fastest; the most memory).
- ``mlp``: selective: each decoder layer's MLP block is recomputed in the backward pass, the
  attention block is not. The MLP holds most of a layer's saved activations (three ``(tokens,
  intermediate)`` tensors against a few ``(tokens, hidden)`` ones) and most of its recompute too
  (gate and up are ``f / (f + d + d_kv)`` of a layer's recomputed matmuls: 0.74 at the 8B shape),
  so it keeps less memory than ``off`` for about three quarters of ``full``'s recompute.
- ``full``: each decoder layer keeps only its input and recomputes the rest (HF's
  ``activation_checkpointing_enable``, non-reentrant).
- an integer ``n``: the first ``n`` decoder layers as under ``full``, the layers above them keep
  their activations. The top layers are the ones left unchecked because their backward runs
  first: their activations are freed before any checkpointed layer is recomputed, so the first
  unchecked layer costs about what ``full``'s one recomputed layer holds anyway, and each further
  one a layer's activations. At the 8B shape, B4 x 2048, on an H200: one layer's recompute is 5 ms
  of a 654 ms step, one layer's activations ~1.07 GiB; 30 of 32 layers checkpointed peaked at
  20.13 GiB against full's 18.91 (docs/benchmarks.md).
- ``auto`` (default): ``off`` on the CPU; on a GPU the option with the least recompute (``off``,
  then ``n`` checkpointed layers from 1 up, or ``mlp`` where it recomputes less, then ``full``)
  whose estimated activation memory fits the free GPU memory after the optimizer state (or
  ``TrainConfig.memory_budget_gib``, where set).

:func:`plan` estimates before the first step; a run that cannot fit fails there, with an error
naming the setting to change, instead of with an out-of-memory error minutes later.

The estimate counts, per token and layer, the tensors autograd saves for a Llama-style layer with
fused kernels and FlashAttention (bf16, 2 bytes each): the norms' inputs and outputs, q/k/v, the
attention output (``6 d + 2 d_kv``) and the MLP's gate, up and product (``3 f``), times 1.25 for
what it misses (norm statistics, LoRA's rank-r intermediates, allocator rounding). At the 8B
shape the counted tensors alone match the measurement (1.06 GiB per unchecked layer at B4 x 2048
counted, 1.07 measured on an H200 from the ``off`` and ``full`` peaks), so the 1.25 and auto's
10% headroom are the margin for other shapes and kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from acculturate.config_loading import ConfigError
from acculturate.train.offload import InputOffload

log = logging.getLogger(__name__)

POLICIES = ("auto", "off", "mlp", "full")
_SLACK = 1.25        # estimate / counted tensors (see the module docstring)
_HEADROOM = 0.9      # auto keeps 10% of the free memory for fragmentation and the loss's chunks

Policy = str | int   # one of POLICIES, or the number of decoder layers to checkpoint (from the bottom)


def check_policy(value, field: str = "train.activation_checkpointing") -> Policy:
    """``value`` as a policy: one of :data:`POLICIES` or a layer count >= 0 (a string of digits is
    read as one, as ``--set train.activation_checkpointing=30`` gives it); else ValueError naming
    ``field``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or value in POLICIES:
        return value
    raise ValueError(f"{field}: expected one of {list(POLICIES)} or a number of layers to checkpoint "
                     f"(an integer >= 0), got {value!r}")


@dataclass
class MemoryPlan:
    """What :func:`plan` decided, reported in ``metrics.json``."""

    policy: Policy
    """The policy applied: off, mlp, full or the number of layers checkpointed (below the model's
    layer count: a count equal to it is reported as full, 0 as off)."""
    requested: Policy
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


def normalize(policy: Policy, layers: int) -> Policy:
    """An integer policy as the named one it equals: 0 layers is ``off``, ``layers`` or more ``full``."""
    if isinstance(policy, int):
        return "off" if policy == 0 else "full" if policy >= layers else policy
    return policy


def activation_bytes(config, tokens: int, policy: Policy, offload: bool = False) -> int:
    """Estimated bytes of saved activations of one micro-batch of ``tokens`` tokens under ``policy``
    for a model with HF ``config`` (hidden_size, intermediate_size, heads, layers). ``offload``:
    checkpointed layers' inputs wait in host memory (:mod:`acculturate.train.offload`), two of them
    on the GPU at a time (the one being recomputed, the one coming back)."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = d * getattr(config, "num_key_value_heads", heads) // heads
    attention, mlp = 6 * d + 2 * kv, 3 * f               # elements saved per token and layer
    policy = normalize(policy, L)
    if policy == "off":
        per_token = L * (attention + mlp)
    elif policy == "mlp":                                 # every MLP input kept; one MLP recomputed at a time
        per_token = L * (attention + d) + mlp
    elif policy == "full":                                # the layer inputs; one layer recomputed
        per_token = (min(L, 2) if offload else L) * d + attention + mlp
    else:   # n checkpointed layers keep their inputs; the L - n above keep everything (freed before any recompute)
        per_token = (min(policy, 2) if offload else policy) * d + (L - policy) * (attention + mlp)
    return int(2 * _SLACK * per_token * tokens)


def recompute_cost(config, policy: Policy) -> float:
    """Layers' worth of recomputation per step under ``policy`` (``full``: one per layer). ``mlp``
    recomputes gate and up of every layer: ``f / (f + d + d_kv)`` of a layer's recomputed matmuls
    (q, k, v, o, gate, up; down's base matmul is not recomputed, see ``adapters.lora``)."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = d * getattr(config, "num_key_value_heads", heads) // heads
    policy = normalize(policy, L)
    if policy == "off":
        return 0.0
    if policy == "mlp":
        return L * f / (f + d + kv)
    return float(L if policy == "full" else policy)


def _optimizer_bytes(model: torch.nn.Module) -> int:
    """AdamW's two fp32 moments and the fp32 gradient of every trainable parameter (the fp32 master
    copies already sit on the device when this is called)."""
    return sum(3 * 4 * p.numel() for p in model.parameters() if p.requires_grad)


def plan(model: torch.nn.Module, requested: Policy, tokens: int, device: torch.device,
         free_bytes: int | None = None, offload: bool = False) -> MemoryPlan:
    """Choose the policy for a micro-batch of ``tokens`` tokens; raise ConfigError (a ValueError naming
    the setting to change, which the CLI prints as an error) if it cannot fit.

    On the CPU there is no budget to read: ``auto`` is ``off`` and explicit policies are applied as
    asked. On CUDA the budget is ``torch.cuda.mem_get_info``'s free memory (or ``free_bytes``, where
    given) minus the optimizer state. ``offload``: plan for checkpointed layers' inputs parked in
    host memory (:mod:`acculturate.train.offload`); it needs a CUDA device.
    """
    requested = check_policy(requested)
    if offload and device.type != "cuda":
        raise ConfigError(f"train.offload_checkpointed_inputs: parks checkpointed layers' inputs in pinned host "
                          f"memory behind a CUDA GPU's compute; this run is on {device.type} (set it to false)")
    config = getattr(model, "config", None)
    if isinstance(requested, int) and hasattr(config, "num_hidden_layers") and requested > config.num_hidden_layers:
        raise ConfigError(f"train.activation_checkpointing: {requested} layers to checkpoint, but the model has "
                          f"{config.num_hidden_layers} (use at most that, or 'full')")
    measurable = (device.type == "cuda" or free_bytes is not None) and all(
        hasattr(config, name) for name in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    if not measurable:
        policy = "off" if requested == "auto" else requested
        if isinstance(policy, int) and hasattr(config, "num_hidden_layers"):
            policy = normalize(policy, config.num_hidden_layers)
        return MemoryPlan(policy, requested, None, None)
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    budget = free - _optimizer_bytes(model)
    L = config.num_hidden_layers
    # Every option, cheapest recompute first (ties: less memory first).
    options = sorted(["off", "mlp", "full", *range(1, L)],
                     key=lambda p: (recompute_cost(config, p), activation_bytes(config, tokens, p, offload)))
    need = {p: activation_bytes(config, tokens, p, offload) for p in options}
    gib = lambda n: f"{n / 2 ** 30:.1f} GiB"  # noqa: E731
    if requested == "auto":
        for policy in options:
            if need[policy] <= _HEADROOM * budget:
                log.info("activation checkpointing: %s (activations ~%s of %s free)", describe(policy, L),
                         gib(need[policy]), gib(budget))
                return MemoryPlan(policy, requested, need[policy], budget)
        raise ConfigError(
            f"this run does not fit the GPU: even with full activation checkpointing a micro-batch of "
            f"{tokens} tokens needs ~{gib(need['full'])} of activations and {gib(max(budget, 0))} are free "
            f"after the weights and optimizer state; lower train.batch_size or train.max_length "
            f"(raise train.grad_accum to keep the tokens per step), or train a smaller model or with QLoRA")
    policy = normalize(requested, L)
    estimate = activation_bytes(config, tokens, policy, offload)
    if estimate > budget:
        lighter = [p for p in options if need[p] <= budget and need[p] < estimate]
        hint = (f"set train.activation_checkpointing to {lighter[0]!r} (or 'auto')" if lighter else
                "lower train.batch_size or train.max_length (raise train.grad_accum to keep the tokens per step)")
        raise ConfigError(
            f"this run does not fit the GPU: train.activation_checkpointing={requested!r} needs "
            f"~{gib(estimate)} of activations for a micro-batch of {tokens} tokens and "
            f"{gib(max(budget, 0))} are free after the weights and optimizer state; {hint}")
    return MemoryPlan(policy, requested, estimate, budget)


def describe(policy: Policy, layers: int | None = None) -> str:
    """``policy`` for a log or summary line: ``full``, or ``30 of 32 layers``."""
    if isinstance(policy, int):
        return f"{policy} of {layers} layers" if layers else f"{policy} layers"
    return policy


def apply(model: torch.nn.Module, policy: Policy, offload: bool = False) -> bool:
    """Turn ``policy`` on for ``model`` (``off``: nothing); :func:`remove` undoes it. ``offload``:
    the checkpointed layers' inputs wait in pinned host memory (``full`` and layer counts; the
    model on CUDA). Returns whether they do."""
    if policy == "off" or policy == 0:
        return False
    if policy == "full" or isinstance(policy, int):
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if isinstance(policy, int):   # the layers above the first ``policy`` keep their activations
            layers = _decoder_layers(model)
            if not all(hasattr(layer, "gradient_checkpointing") for layer in layers):
                raise ValueError(f"activation checkpointing by layer count needs decoder layers with HF's "
                                 f"gradient_checkpointing flag; {type(layers[0]).__name__} has none "
                                 f"(use 'full' or 'mlp')")
            for layer in list(layers)[policy:]:
                layer.gradient_checkpointing = False
        if offload:
            parked = InputOffload(next(model.parameters()).device)
            for i, layer in enumerate(_decoder_layers(model)):
                if layer.gradient_checkpointing:
                    layer._gradient_checkpointing_func = parked.checkpoint_fn(i)
        return offload
    if policy != "mlp":
        raise ValueError(f"unknown activation checkpointing policy {policy!r}")
    for layer in _decoder_layers(model):
        mlp = layer.mlp
        if "forward" in vars(mlp):   # already wrapped
            continue
        mlp.forward = _recomputed(mlp, type(mlp).forward.__get__(mlp))
    return False


def remove(model: torch.nn.Module, policy: Policy) -> None:
    """Undo :func:`apply` (after training: decoding never recomputes anything anyway)."""
    if policy == "full" or (isinstance(policy, int) and policy > 0):
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        for layer in _decoder_layers(model):
            vars(layer).pop("_gradient_checkpointing_func", None)
    elif policy == "mlp":
        for layer in _decoder_layers(model):
            vars(layer.mlp).pop("forward", None)


def _recomputed(module: torch.nn.Module, forward):
    def run(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run
