"""The inputs of checkpointed decoder layers wait in pinned host memory between forward and backward.

Under activation checkpointing a layer keeps only its input (one ``(tokens, hidden)`` tensor) until
its backward recomputes it; at the 8B shape, B4 x 2048, that is 64 MiB a layer, 1.94 GiB for 31
checkpointed layers, memory that unchecked layers could use instead (each one saves 5 ms of
recompute a step for ~1 GiB; docs/benchmarks.md). Here, after a checkpointed layer's forward, its
input is copied to a pinned host buffer on a side stream and its GPU storage released; when the
gradient of the layer's output arrives (the layer's backward, and with it the recompute, is next),
the compute stream waits for the input to be back, and the input of the layer below starts coming
back on the side stream, so each copy overlaps a layer's backward.

The tensor objects stay the same (checkpointing holds them and recomputes from them): only their
storage is resized to 0 and back, and the bytes are copied storage to storage, which leaves autograd's
version counters alone. The allocator does not reuse a released block before the side stream's copy
out of it is done (``record_stream``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import logging

import torch
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


def _owns_its_storage(x) -> bool:
    """Whether ``x`` is a CUDA tensor alone on its whole storage (a decoder layer's input, fresh from
    the residual add or the embedding): only then may its storage be released and brought back."""
    return (isinstance(x, torch.Tensor) and x.is_cuda and x._base is None and x.storage_offset() == 0
            and x.is_contiguous() and x.untyped_storage().nbytes() == x.numel() * x.element_size())


@dataclass(eq=False)
class _Parked:
    tensor: torch.Tensor | None     # the layer's input (storage empty while parked); None once used
    host: torch.Tensor              # pinned uint8 buffer of the storage's size
    compute: torch.cuda.Stream      # the stream the layer ran on
    position: int                   # in InputOffload.parked
    ready: torch.cuda.Event = field(default_factory=torch.cuda.Event)
    back: bool = False


class InputOffload:
    """Checkpointing with parked inputs for the decoder layers of one model on one CUDA device.

    ``checkpoint_fn(index)`` is a drop-in for HF's ``_gradient_checkpointing_func`` of decoder
    layer ``index`` (see :func:`acculturate.train.checkpointing.apply`)."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device)
        self.buffers: dict[int, torch.Tensor] = {}   # layer index -> pinned buffer, reused every step
        self.parked: list[_Parked | None] = []       # this forward's, bottom layer first (None: done)
        self.warned = False

    def checkpoint_fn(self, index: int):
        def run(function, *args):
            out = checkpoint(function, *args, use_reentrant=False)
            x = args[0]
            if isinstance(out, torch.Tensor) and out.requires_grad and _owns_its_storage(x):
                self._park(index, x, out)
            elif not self.warned:   # e.g. a layer that returns a tuple: its input stays on the GPU
                self.warned = True
                log.warning("offload_checkpointed_inputs: decoder layer %d's input stays on the GPU (the layer "
                            "returns %s; its input %s its own storage)", index, type(out).__name__,
                            "owns" if _owns_its_storage(x) else "does not own")
            return out
        return run

    def _park(self, index: int, x: torch.Tensor, out: torch.Tensor) -> None:
        if not self.parked or index == 0:   # a new forward pass
            self.parked = []
        storage = x.untyped_storage()
        host = self.buffers.get(index)
        if host is None or host.numel() != storage.nbytes():
            host = self.buffers[index] = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True)
        entry = _Parked(x, host, torch.cuda.current_stream(x.device), len(self.parked))
        self.stream.wait_stream(entry.compute)          # after the layer's forward wrote and read x
        with torch.cuda.stream(self.stream):
            host.untyped_storage().copy_(storage, non_blocking=True)
        x.record_stream(self.stream)                    # no reuse of the block before the copy is done
        storage.resize_(0)
        self.parked.append(entry)
        out.register_hook(lambda grad, entry=entry: self._before_backward(entry))

    def _bring_back(self, entry: _Parked | None) -> None:
        if entry is None or entry.back:
            return
        entry.back = True
        with torch.cuda.stream(self.stream):
            storage = entry.tensor.untyped_storage()
            storage.resize_(entry.host.numel())
            storage.copy_(entry.host.untyped_storage(), non_blocking=True)
            entry.ready.record(self.stream)
        entry.tensor.record_stream(entry.compute)       # read there by the recompute and the backward

    def _before_backward(self, entry: _Parked) -> None:
        if entry.tensor is None:   # a second backward through the same graph: already back
            return
        self._bring_back(entry)
        entry.compute.wait_event(entry.ready)
        if entry.position > 0 and entry.position <= len(self.parked):
            self._bring_back(self.parked[entry.position - 1])   # overlaps this layer's backward
        # Hold the input no longer than checkpointing does (it is freed after the layer's backward).
        entry.tensor = None
        if entry.position < len(self.parked) and self.parked[entry.position] is entry:
            self.parked[entry.position] = None
