"""The causal-LM loss as a sum over target tokens, so callers can normalise across micro-batches."""

from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from acculturate.data.batching import IGNORE_INDEX
from acculturate.models.varlen import uses_varlen_attention, varlen_kwargs

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
# Above this many logits (targets x vocabulary) the loss is computed in chunks from the final
# hidden states, never materialising all logits: for a Llama-3 vocabulary (128k) a 4 x 2048 batch
# has 1.05G logits, 4.2 GB in fp32 plus as much again for their gradient.
CHUNKED_LOGITS = 2 ** 27
CHUNK_TOKENS = 2048


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool (B, T): True at positions t whose next label ``labels[:, t + 1]`` is a target."""
    keep = torch.zeros_like(labels, dtype=torch.bool)     # (B, T)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens of ``batch`` carry a loss (the shifted labels that are not -100)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
             amp_dtype: torch.dtype | None = None, *,
             chunked_above: int = CHUNKED_LOGITS) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the targets of ``batch``.

    The model is called with ``use_cache=False`` (required for packed rows, see
    :mod:`acculturate.data.batching`) and ``logits_to_keep`` set to the positions where some row
    has a target, so the vocabulary projection skips positions that are prompt in every row: with
    49k vocabulary entries, full fp32 logits for 8 x 512 tokens are 800 MB. (A 1-D index works in
    every transformers since 4.50; the per-row 2-D boolean form is newer than 5.17.)

    Args:
        model: a Hugging Face causal LM.
        batch: ``input_ids``, ``labels`` and optionally ``attention_mask``/``position_ids`` (B, T);
            optionally ``loss_weights`` (float, B x T): each target's loss is multiplied by the
            weight at its position (its example's ``meta.weight``). ``n_targets`` stays the plain
            count, so weights that average 1 over the data keep the loss's scale.
        device: where the model runs.
        amp_dtype: run the forward under autocast to this dtype (None: no autocast).
        chunked_above: when targets x vocabulary exceeds this, compute the loss in chunks from the
            final hidden states (:func:`chunked_cross_entropy`) instead of from full logits.
    Returns:
        ``(loss_sum, n_targets)``: a scalar fp32 tensor (differentiable) and the number of targets.
    """
    # The masks and index lists are formed where the labels are (the host, for a collated batch):
    # boolean indexing on the GPU would wait for the device (its result size is data-dependent).
    labels = batch["labels"]                              # (B, T)
    keep_here = target_mask(labels)                       # (B, T)
    targets = _to(labels[:, 1:][keep_here[:, :-1]], device)   # (N,) row-major, like the rows picked below
    if targets.numel() == 0:
        return torch.zeros((), device=device), 0
    picked = _to(keep_here.reshape(-1).nonzero().squeeze(1), device)   # (N,) flat (B*T) positions of keep
    weights = None                                        # (N,) each target's example weight (on the host)
    if "loss_weights" in batch:
        weights = batch["loss_weights"][:, 1:][keep_here[:, :-1]]
    inputs = {k: _to(batch[k], device) for k in MODEL_INPUTS if k in batch}
    if "position_ids" in inputs and "attention_mask" not in inputs and uses_varlen_attention(model):
        inputs.update(varlen_kwargs(inputs["position_ids"]))   # packed rows: example boundaries
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else 0
    if targets.numel() * vocab > chunked_above:
        hidden = final_hidden_states(model, inputs, amp)           # (B, T, d) or None
        if hidden is not None and hidden.shape[:2] == labels.shape:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, picked)   # (N, d)
            with amp:
                if weights is None:
                    return chunked_cross_entropy(hidden, head, targets), int(targets.numel())
                # The fused/chunked paths return sums: one sum per distinct weight (a weighted
                # dataset has one weight per group, so a handful), each scaled by its weight.
                total = hidden.new_zeros((), dtype=torch.float32)
                for w in torch.unique(weights).tolist():
                    if w != 0.0:
                        rows = _to((weights == w).nonzero().squeeze(1), device)
                        total = total + w * chunked_cross_entropy(hidden.index_select(0, rows), head,
                                                                  targets.index_select(0, rows))
                return total, int(targets.numel())
    positions_here = keep_here.any(dim=0).nonzero().squeeze(1)   # (K,) positions with a target in some row
    positions = _to(positions_here, device)
    with amp:
        logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits   # (B, K, V)
    if logits.shape[1] != positions.numel():   # a model that ignored logits_to_keep: (B, T, V)
        logits = logits[:, positions]
    rows = _to(keep_here[:, positions_here].reshape(-1).nonzero().squeeze(1), device)   # (N,) of B*K
    logits = logits.reshape(-1, logits.shape[-1]).index_select(0, rows)                 # (N, V)
    if weights is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())
    losses = F.cross_entropy(logits.float(), targets, reduction="none")   # (N,)
    return (losses * _to(weights, device)).sum(), int(targets.numel())


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the host to a GPU through pinned memory without waiting for the
    device (a plain ``.to`` from pageable memory synchronizes the stream: the GPU would idle while
    the host prepares the next step)."""
    if t.device == device or device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def final_hidden_states(model: torch.nn.Module, inputs: dict, amp) -> torch.Tensor | None:
    """The decoder's final (normed) hidden states, (B, T, d), from a forward pass that projects only
    one position to the vocabulary. Read with a hook on the decoder's final norm (``model.norm`` in
    Llama-family models); None where the model has no such module."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if not isinstance(norm, torch.nn.Module):
        return None
    captured = []
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with amp:
            model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1] if captured else None


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)                # (n, V), recomputed in backward
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                          chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, ``chunk`` rows at a time.

    Each chunk's logits are recomputed in the backward pass (activation checkpointing) instead of
    being kept, so peak memory holds one chunk's logits, not all of them; the price is one more
    vocabulary projection per chunk. On CUDA with Liger-Kernel installed, Liger's fused linear +
    cross-entropy runs instead (:func:`fused_linear_cross_entropy`): it computes the gradient
    w.r.t. ``hidden`` chunk by chunk inside the forward pass, so the projection runs once, not twice.

    Args:
        hidden: (N, d) final hidden states at the target positions.
        head: the output projection (``nn.Linear``, weight (V, d)).
        targets: (N,) token ids.
    """
    bias = getattr(head, "bias", None)
    if hidden.is_cuda and fused_linear_ce_available():
        return fused_linear_cross_entropy(hidden, head.weight, targets, bias)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(_chunk_loss, hidden[start:start + chunk], head.weight, bias,
                                   targets[start:start + chunk], use_reentrant=False)
    return total


def fused_linear_ce_available() -> bool:
    """Whether Liger-Kernel's fused linear + cross-entropy can run (package installed, CUDA present)."""
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets`` with Liger's fused
    kernel: logits exist one chunk at a time, in the input's dtype, softmax and loss in fp32, and
    the input gradient is formed in the same pass (no recomputation in backward).

    Args:
        hidden: (N, d) on CUDA; weight: (V, d); targets: (N,) ids (-100 ignored); bias: (V,) or None.
    Returns:
        A scalar fp32 tensor, differentiable w.r.t. ``hidden`` (and ``weight`` if it needs a gradient).
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    weight = weight.to(hidden.dtype) if weight.dtype != hidden.dtype else weight
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets, bias)
    return loss.float()
