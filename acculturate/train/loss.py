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
    :mod:`acculturate.data.batching`) and ``logits_to_keep`` set to the target positions, so the
    vocabulary projection runs only where a loss is taken: with 49k vocabulary entries, full fp32
    logits for 8 x 512 tokens are 800 MB, and prompts are often most of the tokens.

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
    targets = labels[:, 1:][keep[:, :-1]]                 # (N,) in row-major order, like hidden[keep]
    inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    with amp:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    if logits.dim() == 3:   # a model that returned every position: (B, T, V) -> (N, V)
        logits = logits[keep]
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())
