"""The decoder's first-call costs, paid beside the model load: the static decoder run on a one-layer
model of the loaded model's shape, in the GPU start-up thread (:mod:`acculturate.models.gpu_start`).

On an H200 (1B Llama shape, ``generate --file`` with 64 prompts x 256 new tokens) a fresh process's
first call took 2.4-2.6 s against 1.2 s for the next (the prefill 0.65 s instead of 0.07 s, the graph
capture with its two eager steps 0.6-0.8 s instead of 0.06 s): cuBLAS's initialisation, CUDA loading
each kernel on its first launch (lazy module loading, the default), Triton loading the
decoding-attention kernel. With this warm-up beside the load the first call took 1.76-1.99 s
(bench/gpu_commands.py ``firstcall``; docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch

from acculturate.decode.static import STATIC_MODEL_TYPES, StaticDecoder
from acculturate.models.gpu_start import mark


@dataclass(frozen=True)
class DecodingWarmUp:
    """What a command will decode, for :func:`warm_decoding`: its batch sizes (rows decoded together)
    and sampling settings (greedy when ``temperature`` is 0, as in ``GenerationConfig``)."""

    rows: tuple[int, ...]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


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
    resolved in the loading thread (see :func:`acculturate.models.gpu_start.hand_over`)."""
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


def warm_decoding(config, model_class, device: torch.device, dtype: torch.dtype, warm_up: DecodingWarmUp) -> None:
    """Run the static decoder (eager: no graph) on :func:`one_layer_twin` with ``warm_up``'s sampling
    settings: a prefill of prompts of two lengths and two decoding steps at each of its batch sizes.
    This loads the kernels the command's first call launches (those of the layer shapes exactly; the
    LM head's cuBLAS kernel may differ, the twin's batch shapes not being the command's) and the
    decoding-attention kernel's variants for those batch sizes."""
    if getattr(config, "model_type", None) not in STATIC_MODEL_TYPES:
        return
    model = one_layer_twin(config, model_class, device, dtype)
    mark("twin_s")
    for b in sorted(set(warm_up.rows)):
        decoder = StaticDecoder(model, b, 40, temperature=warm_up.temperature, top_k=warm_up.top_k,
                                top_p=warm_up.top_p, cuda_graph=False)
        prompts = [[0] * (16 if r % 2 else 24) for r in range(b)]
        generators = [torch.Generator().manual_seed(r) for r in range(b)]
        decoder.generate(prompts, 3, generators=generators)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mark(f"rows_{b}_s")


def decoding_work(model_dir, device: torch.device, dtype: torch.dtype, warm_up: DecodingWarmUp):
    """For :func:`acculturate.models.gpu_start.hand_over`, in the loading thread: the model's config and
    class read here, :func:`warm_decoding` on them to run in the start-up thread."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return functools.partial(warm_decoding, config, causal_lm_class(config), device, dtype, warm_up)
