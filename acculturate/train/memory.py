"""Measure the peak memory of a block of work (training) on a GPU or on the CPU.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` after a reset at entry: every tensor
the process holds on that device at the peak, the model weights included.

On the CPU there is no allocator counter, so a daemon thread samples the resident set size every
``interval_s`` from ``/proc/self/statm`` (its second field is resident pages; times the page size
gives bytes) and keeps the maximum. The result is the *growth* of RSS over its value at entry:
activations, gradients, optimizer state and allocator caches, not the weights already loaded.
A spike shorter than the interval can be missed; 5 ms is well below one training step of the
default model (~0.2 s or more on 2 cores). Without ``/proc`` (macOS) it falls back to
``ru_maxrss``, the process's lifetime peak, whose growth is 0 if an earlier peak was higher.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import torch

_STATM = Path("/proc/self/statm")


def current_rss_bytes() -> int:
    """The resident set size of this process now, in bytes (``ru_maxrss`` without /proc)."""
    if _STATM.exists():
        resident_pages = int(_STATM.read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, KiB on Linux


class PeakMemory:
    """Context manager measuring peak memory of its block; read ``peak_bytes`` after the block.

    Example::

        with PeakMemory(torch.device("cpu")) as mem:
            train_some()
        print(mem.peak_bytes, mem.kind)

    Args:
        device: the device the work runs on.
        interval_s: the CPU sampling interval.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_growth"
        self.peak_bytes = 0
        self._baseline = 0
        self._max_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._max_rss = max(self._max_rss, current_rss_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._baseline = self._max_rss = current_rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def read(self) -> int:
        """The peak so far (usable inside the block, e.g. for a progress log)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return max(0, max(self._max_rss, current_rss_bytes()) - self._baseline)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak_bytes = self.read()
