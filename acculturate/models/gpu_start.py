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
- for a command that decodes next (a :class:`DecodingWarmUp`): :func:`warm_decoding`, the static
  decoder's prefill and two eager steps on a one-layer model of the loaded model's shape, its weights
  zeros, at each batch size the command will use, with its sampling settings.

Capturing a CUDA graph must not overlap other threads' CUDA work, so the decoders wait for the
thread (:func:`wait_for_gpu_start_up`) before their first capture; a Triton launch waits too, so
it finds the start-up done instead of repeating it beside the thread.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import threading
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
_thread: threading.Thread | None = None
_handed_over = threading.Event()
_decoding: tuple | None = None   # (config, model class, DecodingWarmUp) from hand_over
# Seconds from the thread's start to the end of each of its steps (bench/gpu_commands.py firstcall reads it).
timeline: dict[str, float] = {}


@dataclass(frozen=True)
class DecodingWarmUp:
    """What a command will decode, for :func:`warm_decoding`: its batch sizes (rows decoded together)
    and sampling settings (greedy when ``temperature`` is 0, as in ``GenerationConfig``)."""

    rows: tuple[int, ...]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


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


def one_layer_twin(config, model_class, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A model of ``config``'s architecture and shapes with one decoder layer, every weight and
    buffer zero (finite logits, valid sampled tokens, no random-number draws: the caller's
    generators stay untouched). Built on the meta device and allocated on ``device``, so no
    initialisation runs.

    The class is called directly, not through ``from_config``: that sets torch's process-wide default
    dtype for the duration of the build (``transformers.modeling_utils.local_torch_dtype``), and this
    runs in a thread beside the main load, whose own modules were then built in the wrong dtype
    (seen on an H200: fp32 norm weights under a bf16 model, "expected mat1 and mat2 to have the same
    dtype"). The meta-device context is thread-local. ``model_class`` (:func:`causal_lm_class`) is
    resolved by the caller's thread: transformers' lazy imports are not safe from two threads at once
    (seen: "cannot import name 'AutoModelForCausalLM' from 'transformers'")."""
    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    if getattr(small, "layer_types", None):
        small.layer_types = small.layer_types[:1]
    with torch.device("meta"):
        model = model_class(small)
    model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    return model.eval()


def causal_lm_class(config):
    """The transformers class ``AutoModelForCausalLM`` builds for ``config`` (imports its module)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)]


def warm_decoding(config, model_class, device: torch.device, dtype: torch.dtype, warm_up: DecodingWarmUp,
                  started: float | None = None) -> None:
    """Run the static decoder (:mod:`acculturate.decode.static`, eager: no graph) on
    :func:`one_layer_twin` with ``warm_up``'s sampling settings: a prefill of prompts of two lengths
    and two decoding steps at each of its batch sizes. This loads the kernels the command's first call
    launches (those of the layer shapes exactly; the LM head's cuBLAS kernel may differ, the twin's
    vocabulary being the model's but its batch shapes not) and the decoding-attention kernel's
    variants for those batch sizes. ``started``: the thread's start, for :data:`timeline`."""
    from acculturate.decode.static import STATIC_MODEL_TYPES, StaticDecoder

    if getattr(config, "model_type", None) not in STATIC_MODEL_TYPES:
        return
    started = time.perf_counter() if started is None else started
    model = one_layer_twin(config, model_class, device, dtype)
    timeline["twin_s"] = round(time.perf_counter() - started, 3)
    for b in sorted(set(warm_up.rows)):
        decoder = StaticDecoder(model, b, 40, temperature=warm_up.temperature, top_k=warm_up.top_k,
                                top_p=warm_up.top_p, cuda_graph=False)
        prompts = [[0] * (16 if r % 2 else 24) for r in range(b)]
        generators = [torch.Generator().manual_seed(r) for r in range(b)]
        decoder.generate(prompts, 3, generators=generators)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timeline[f"rows_{b}_s"] = round(time.perf_counter() - started, 3)


def gpu_start_up(device: torch.device, dtype: torch.dtype | None = None) -> None:
    """The thread's work: :func:`prepare_triton`, then, once the loading thread has handed over what
    it decodes next (:func:`hand_over`), :func:`warm_decoding`."""
    started = time.perf_counter()
    prepare_triton(device)
    timeline["triton_s"] = round(time.perf_counter() - started, 3)
    _handed_over.wait()
    if _decoding is not None:
        config, model_class, decoding = _decoding
        try:
            warm_decoding(config, model_class, device, dtype or torch.bfloat16, decoding, started)
        except Exception as e:   # a warm-up: never the reason a command fails
            log.debug("decoding warm-up skipped: %s: %s", type(e).__name__, e)
    timeline["done_s"] = round(time.perf_counter() - started, 3)


def start_gpu_start_up(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Run :func:`gpu_start_up` in a daemon thread, once per process, on a CUDA ``device`` where Triton
    is installed. Returns whether a thread started; the starter then calls :func:`hand_over`."""
    global _thread
    if _thread is not None or torch.device(device).type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    _thread = threading.Thread(target=gpu_start_up, args=(torch.device(device), dtype), name="gpu-start-up",
                               daemon=True)
    _thread.start()
    return True


def hand_over(model_dir=None, decoding: DecodingWarmUp | None = None) -> None:
    """Give the start-up thread, if one is waiting, what the command decodes next (``model_dir``: the HF
    model directory being loaded), or nothing. Called by the loading thread once transformers is
    imported; the config and model class are read here, in the caller's thread (see
    :func:`one_layer_twin`)."""
    global _decoding
    if _thread is None or _handed_over.is_set():
        return
    if model_dir is not None and decoding is not None and decoding.rows:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_dir)
            _decoding = (config, causal_lm_class(config), decoding)
        except Exception as e:   # an unreadable model: the load reports it; no warm-up
            log.debug("decoding warm-up skipped: %s: %s", type(e).__name__, e)
    _handed_over.set()


def wait_for_gpu_start_up() -> None:
    """Block until :func:`start_gpu_start_up`'s thread, if any, is done (a no-op inside that thread).
    A thread still waiting for :func:`hand_over` is given nothing, so this never waits for a load."""
    thread = _thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        hand_over()
        thread.join()
