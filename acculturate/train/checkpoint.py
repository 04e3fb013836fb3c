"""Save and restore everything a training run needs to continue exactly where it stopped.

A checkpoint is a directory, written whole through :func:`acculturate.io.atomic_dir` (a kill leaves
either the previous checkpoint or the new one, never half of one)::

    trainable.safetensors   the parameters with requires_grad, by their model names
    trainer_state.pt        optimizer and scheduler state dicts, RNG states (python, numpy, torch, CUDA)
    state.json              progress (step, epoch, batch position...), the run config, metrics so far

Only trainable parameters are saved: the frozen ones are the base model's, which the caller loads
again before resuming.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from acculturate.io import atomic_dir, write_json
from acculturate.train.distributed import (full_optimizer_state, full_trainable_state, shard_like,
                                           shard_optimizer_state)

WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.pt"
STATE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing a file or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns besides restoring tensors in place."""
    path: Path
    progress: dict
    """Step, epoch, batch position... as saved."""
    config: dict
    """The run config as saved."""
    metrics: list[dict]
    """The log rows written up to this checkpoint."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad``, by name (tied weights appear once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def capture_rng_state() -> dict[str, Any]:
    """The states of the python, numpy, torch CPU and (when initialised) CUDA generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # As a tensor and plain numbers so torch.load(weights_only=True) can read it back.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; CUDA states are restored only onto as many devices as saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, progress: dict, config: dict, metrics: list[dict], write: bool = True) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing an older one).

    Args:
        path: the checkpoint directory.
        model: its trainable parameters are saved.
        optimizer, scheduler: their ``state_dict()`` is saved.
        progress: JSON-able position in training (step, epoch, batch...).
        config: JSON-able run config.
        metrics: the log rows so far.
        write: False on the ranks of a distributed run other than 0 (they only help gather).
    Returns:
        ``path``.
    """
    path = Path(path)
    # Whole tensors whatever the sharding (FSDP gathers them: every rank calls this), so the
    # layout does not depend on the number of processes that wrote it.
    weights = full_trainable_state(model)
    optimizer_state = full_optimizer_state(optimizer)
    if not write:
        return path
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "rng": capture_rng_state()}, tmp / TRAINER_STATE)
        write_json(tmp / STATE, {"progress": progress, "config": config, "metrics": metrics})
    return path


def find_checkpoint(path: str | Path) -> Path | None:
    """The complete checkpoint at ``path``, or the backup :func:`atomic_dir` keeps while it swaps
    directories (present only if a kill fell between its two renames), or ``None``."""
    path = Path(path)
    for candidate in (path, path.with_name(f".{path.name}.old")):
        if (candidate / STATE).is_file():
            return candidate
    return None


def read_state(path: str | Path) -> dict:
    """The ``state.json`` of a checkpoint: ``{"progress", "config", "metrics"}``."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, restore_rng: bool = True) -> Checkpoint:
    """Restore trainable weights, optimizer, scheduler and RNG states from a checkpoint directory.

    Args:
        path: a directory written by :func:`save_checkpoint`.
        model: must have the same trainable parameter names and shapes as when saved.
        optimizer, scheduler: built the same way as for the saved run; loaded in place.
        restore_rng: also restore the random generators.
    Returns:
        :class:`Checkpoint` with the saved progress, config and metrics.
    Raises:
        CheckpointError: a file is missing or the parameters do not match, naming which.
    """
    path = Path(path)
    for name in (WEIGHTS, TRAINER_STATE, STATE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}")
    params = trainable_state(model)
    saved = load_file(str(path / WEIGHTS))
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path / WEIGHTS} does not fit the model's trainable parameters: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            f"(was the model prepared with the same method?)")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"checkpoint {path / WEIGHTS}: {name} has shape "
                                      f"{tuple(saved[name].shape)}, the model expects {tuple(p.shape)}")
            p.copy_(shard_like(saved[name].to(device=p.device, dtype=p.dtype), p))
    trainer = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    # moves state to the parameters' device (and shards it like them under FSDP)
    optimizer.load_state_dict(shard_optimizer_state(optimizer, trainer["optimizer"]))
    scheduler.load_state_dict(trainer["scheduler"])
    if restore_rng:
        restore_rng_state(trainer["rng"])
    state = read_state(path)
    return Checkpoint(path=path, progress=state["progress"], config=state["config"], metrics=state["metrics"])
