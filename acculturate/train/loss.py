"""The causal-LM loss as a sum over target tokens, so callers can normalise across micro-batches."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from acculturate.data.batching import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool (B, T): True at positions t whose next label ``labels[:, t + 1]`` is a target."""
    keep = torch.zeros_like(labels, dtype=torch.bool)     # (B, T)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens of ``batch`` carry a loss (the shifted labels that are not -100)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
             amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the targets of ``batch``.

    The model is called with ``use_cache=False`` (required for packed rows, see
    :mod:`acculturate.data.batching`) and ``logits_to_keep`` set to the positions where some row
    has a target, so the vocabulary projection skips positions that are prompt in every row: with
    49k vocabulary entries, full fp32 logits for 8 x 512 tokens are 800 MB. (A 1-D index works in
    every transformers since 4.50; the per-row 2-D boolean form is newer than 5.17.)

    Args:
        model: a Hugging Face causal LM.
        batch: ``input_ids``, ``labels`` and optionally ``attention_mask``/``position_ids`` (B, T).
        device: where the model runs.
        amp_dtype: run the forward under autocast to this dtype (None: no autocast).
    Returns:
        ``(loss_sum, n_targets)``: a scalar fp32 tensor (differentiable) and the number of targets.
    """
    labels = batch["labels"].to(device)                   # (B, T)
    keep = target_mask(labels)                            # (B, T)
    targets = labels[:, 1:][keep[:, :-1]]                 # (N,) row-major, like logits[keep] below
    if targets.numel() == 0:
        return torch.zeros((), device=device), 0
    positions = keep.any(dim=0).nonzero().squeeze(1)      # (K,) positions with a target in some row
    inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    with amp:
        logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits   # (B, K, V)
    if logits.shape[1] != positions.numel():   # a model that ignored logits_to_keep: (B, T, V)
        logits = logits[:, positions]
    logits = logits[keep[:, positions]]                   # (N, V)
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())
