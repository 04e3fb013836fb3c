"""Data-parallel training on PyTorch's own engine: DDP or FSDP2, under ``torchrun``.

The training loop (:func:`acculturate.train.train`) calls this module at four points and nothing
else changes; in a single process every call is a no-op, so there is one loop, not two:

- :func:`setup` wraps the model (``DistributedDataParallel``, or ``fully_shard`` per decoder block
  then the root for FSDP2, with a bf16 ``MixedPrecisionPolicy`` on GPU);
- :meth:`Parallel.shard` gives each rank its strided share of every micro-batch (rank r takes rows
  r, r + N, ..., as ``DistributedSampler`` does), so ``batch_size`` is the *global* micro-batch and
  a run on N processes takes the same optimizer steps over the same examples as one process;
- :meth:`Parallel.all_sum` adds target counts and losses over ranks, so each step's loss is
  normalised by the global number of target tokens exactly as in one process (the gradient is
  scaled by the world size because DDP and FSDP average gradients over ranks);
- checkpoints hold full (unsharded) tensors in the single-process format
  (:mod:`acculturate.train.checkpoint`), gathered from every rank and written by rank 0, so a run
  saved on N processes resumes on M (1 included), and vice versa.

Launch: ``torchrun --nproc-per-node N -m acculturate train CONFIG`` or ``acculturate train CONFIG
--gpus N``. The backend is NCCL on GPUs and gloo on CPU (what CI tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment (once per process).

    Returns:
        ``(rank, world_size, device)``: ``cuda:LOCAL_RANK`` with NCCL when CUDA is available,
        else CPU with gloo.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


@dataclass
class Parallel:
    """How this process takes part in training; ``Parallel()`` is the single-process case."""

    rank: int = 0
    world: int = 1
    strategy: str | None = None
    """None (one process), 'ddp' or 'fsdp'."""
    model: torch.nn.Module | None = None
    """The wrapped model the loop calls (DDP) or the model (FSDP)."""
    _unwrapped: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: it logs, shows progress and writes files."""
        return self.rank == 0

    def shard(self, indices: list[int]) -> tuple[list[int], float]:
        """This rank's rows of a global micro-batch and the weight of their loss.

        A rank left with no row (a last micro-batch smaller than the world) still runs the first
        row with weight 0: every rank must run the same forwards and backwards, or DDP's gradient
        all-reduce and FSDP's all-gathers wait forever.
        """
        if self.world == 1:
            return list(indices), 1.0
        mine = list(indices[self.rank::self.world])
        return (mine, 1.0) if mine else ([indices[0]], 0.0)

    def all_sum(self, value: float) -> float:
        """The sum of ``value`` over ranks (``value`` itself in one process)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return float(t.item())

    @property
    def grad_scale(self) -> float:
        """DDP and FSDP average gradients over ranks; the loop's loss is a global sum / global
        count, so each rank's share is multiplied back by the world size."""
        return float(self.world)

    def no_sync(self, last: bool):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if self.strategy == "ddp" and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(model: torch.nn.Module, strategy: str = "ddp", device: torch.device | None = None) -> Parallel:
    """Wrap ``model`` for the process group torchrun started (nothing when not under torchrun).

    Args:
        model: prepared (its trainable parameters require grad), on ``device``.
        strategy: 'ddp' (replicated weights, all-reduced gradients) or 'fsdp' (FSDP2: parameters,
            gradients and optimizer state sharded over ranks; each decoder block gathers its weights
            for its forward and backward only).
    Returns:
        :class:`Parallel`; ``Parallel().model`` is ``model`` itself in one process.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return Parallel(model=model, _unwrapped=model)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = device or next(model.parameters()).device
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # broadcast_buffers=False: buffers (rotary tables, QLoRA's NF4 weights) are the same on every
        # rank by construction; re-sending them before every forward would move the whole 4-bit base.
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)
        return Parallel(rank, world, "ddp", wrapped, model)
    _fully_shard(model, device)
    return Parallel(rank, world, "fsdp", model, model)


def _fully_shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2: shard each decoder block, then the root (embeddings, final norm, head).

    NF4-quantized weights (QLoRA) are buffers, not parameters: FSDP leaves them whole on every
    rank, which is what a 4-bit base needs anyway (it is small); only LoRA parameters are sharded.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = None
    if device.type == "cuda":   # compute in bf16, reduce gradients in fp32; master weights stay fp32
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    # fully_shard keeps each rank's own values (no broadcast, unlike DDP): start every rank from
    # rank 0's weights, so LoRA initialisations drawn on each rank cannot differ.
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (``model.model.layers`` in HF causal LMs)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"fsdp: cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)")
    return list(layers)


# ---------------------------------------------------------------------------------------------------
# checkpoints: full tensors whatever the sharding


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:   # older torch
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU (an FSDP2 DTensor is gathered: every rank must call this)."""
    if _is_dtensor(t):
        t = t.full_tensor()
    return t.detach().to("cpu")


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, whole, on CPU (collective under FSDP)."""
    return {name: full_tensor(p).contiguous() for name, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered (collective under FSDP)."""
    sd = optimizer.state_dict()
    return {"state": {i: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: distributed with its mesh and placements if it is a DTensor."""
    if _is_dtensor(like) and not _is_dtensor(full):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """Lay a full optimizer state out like the optimizer's (sharded) parameters before loading."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {k: shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
    return {"state": out, "param_groups": state["param_groups"]}
