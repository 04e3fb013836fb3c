"""A process's one-time GPU start-up, done in a background thread while the model's weights load.

A one-off command (``acculturate generate --file``) pays, inside its first call, work that every
later call in the same process finds done: Triton's per-process start-up before its first kernel
launch, Triton loading (or, on a machine's first run, compiling) the decoding-attention kernel,
cuBLAS's initialisation, and CUDA loading each kernel the first time it is launched (lazy module
loading, the default). On an H200 (1B Llama shape, 64 prompts x 256 new tokens) the first call took
2.5-3.3 s against 1.2 s for the next: the prefill 0.65 s instead of 0.07 s, the graph capture with
its two eager steps 0.84 s instead of 0.06 s. Reading 2.5 GB of weights keeps the CPU and disk busy
and the GPU idle, so :func:`acculturate.models.load` starts this work beside it
(:func:`start_gpu_start_up`):

- always on a CUDA device: :func:`prepare_triton`;
- then whatever the loading thread hands over (:func:`hand_over`): for a command that decodes next,
  :func:`acculturate.decode.warm_up.warm_decoding`, the static decoder's prefill and two eager steps on
  a one-layer model of the loaded model's shape, at the command's batch sizes and sampling settings.

Capturing a CUDA graph must not overlap other threads' CUDA work, so the decoders wait for the
thread (:func:`wait_for_gpu_start_up`) before their first capture; a Triton launch waits too, so
it finds the start-up done instead of repeating it beside the thread.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from typing import Callable

import torch

log = logging.getLogger(__name__)
_thread: threading.Thread | None = None
_started: float | None = None   # the thread's start (perf_counter), for timeline
_handed_over = threading.Event()
_work: Callable[[], None] | None = None   # from hand_over
# Seconds from the thread's start to the end of each of its steps (bench/gpu_commands.py firstcall reads it).
timeline: dict[str, float] = {}


def prepare_triton(device: torch.device) -> None:
    """Do now what the first Triton kernel of a process does before it launches, even when its binary
    is already in Triton's on-disk cache (``~/.triton/cache``): import Triton; hash the installation
    (``triton_key()``, part of every compiled kernel's cache key: SHA-256 over Triton's Python sources and
    its 415 MB ``libtriton.so`` in triton 3.6, 0.39 s on one core of the 2-core development machine);
    run ``ptxas --version`` (a subprocess, part of the CUDA backend's hash). Both are cached for the
    process (``functools.lru_cache``). These are Triton internals: where they have moved, this does
    less, and the first launch does the rest itself, as it would anyway."""
    try:
        import triton  # noqa: F401  (the import itself is part of the cost)
        from triton.runtime.cache import triton_key

        triton_key()
        from triton.backends.nvidia.compiler import get_ptxas_version

        major, minor = torch.cuda.get_device_capability(device)
        get_ptxas_version(major * 10 + minor)
    except Exception as e:   # a warm-up: never the reason a command fails
        log.debug("Triton start-up not prepared: %s: %s", type(e).__name__, e)


def mark(step: str) -> None:
    """Record in :data:`timeline` that ``step`` of the start-up thread's work ended now."""
    if _started is not None:
        timeline[step] = round(time.perf_counter() - _started, 3)


def gpu_start_up(device: torch.device) -> None:
    """The thread's work: :func:`prepare_triton`, then the work the loading thread hands over."""
    global _started
    _started = time.perf_counter()
    prepare_triton(device)
    mark("triton_s")
    _handed_over.wait()
    if _work is not None:
        try:
            _work()
        except Exception as e:   # a warm-up: never the reason a command fails
            log.debug("GPU warm-up skipped: %s: %s", type(e).__name__, e)
    mark("done_s")


def start_gpu_start_up(device: torch.device) -> bool:
    """Run :func:`gpu_start_up` in a daemon thread, once per process, on a CUDA ``device`` where Triton
    is installed. Returns whether a thread started; the starter then calls :func:`hand_over`."""
    global _thread
    if _thread is not None or torch.device(device).type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    _thread = threading.Thread(target=gpu_start_up, args=(torch.device(device),), name="gpu-start-up", daemon=True)
    _thread.start()
    return True


def hand_over(make_work: Callable[[], Callable[[], None] | None] | None = None) -> None:
    """Give the start-up thread, if one is waiting, more work: ``make_work()`` runs here, in the
    caller's thread (transformers' lazy imports are not safe from two threads at once: seen, "cannot
    import name 'AutoModelForCausalLM' from 'transformers'"), and returns what the thread runs, or
    None. The loading thread calls this once transformers is imported; the thread waits until then."""
    global _work
    if _thread is None or _handed_over.is_set():
        return
    if make_work is not None:
        try:
            _work = make_work()
        except Exception as e:   # an unreadable model: the load reports it; no warm-up
            log.debug("GPU warm-up skipped: %s: %s", type(e).__name__, e)
    _handed_over.set()


def wait_for_gpu_start_up() -> None:
    """Block until :func:`start_gpu_start_up`'s thread, if any, is done (a no-op inside that thread).
    A thread still waiting for :func:`hand_over` is given nothing, so this never waits for a load."""
    thread = _thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        hand_over()
        thread.join()
