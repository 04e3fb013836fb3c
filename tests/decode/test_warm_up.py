"""The decoder's warm-up beside the model load: the static decoder on a zero one-layer twin, without
drawing from any random generator or touching the process's default dtype, beside a real load in the
start-up thread; on a GPU it leaves the decoder's tokens unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM as LLAMA

from acculturate.decode.warm_up import DecodingWarmUp, one_layer_twin, warm_decoding


def _config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def test_one_layer_twin_has_the_shapes_and_zero_weights():
    config = _config()
    twin = one_layer_twin(config, LLAMA, torch.device("cpu"), torch.float32)
    assert len(twin.model.layers) == 1 and config.num_hidden_layers == 3   # the caller's config untouched
    assert twin.lm_head.weight.shape == (96, 64)
    assert twin.model.layers[0].mlp.up_proj.weight.shape == (128, 64)
    assert all(float(p.abs().max()) == 0 for p in twin.parameters())


def test_one_layer_twin_leaves_the_process_default_dtype_alone(monkeypatch):
    """The twin is built in a thread beside the main load: a change of torch's process-wide default
    dtype there would build the loading model's modules in the wrong dtype."""
    calls = []
    monkeypatch.setattr(torch, "set_default_dtype", lambda d: calls.append(d))
    twin = one_layer_twin(_config(), LLAMA, torch.device("cpu"), torch.bfloat16)
    assert calls == []
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16}


BESIDE_THE_LOAD = """
import json, threading, torch
import acculturate.models.gpu_start as g
from acculturate.decode.warm_up import DecodingWarmUp
from acculturate.models import load
# The CUDA flow on the CPU: the thread starts before load() imports transformers, as load() starts it on a GPU.
g._thread = threading.Thread(target=g.gpu_start_up, args=(torch.device("cpu"),), daemon=True)
g._thread.start()
loaded = load("smollm2-135m", device="cpu", dtype="bf16", decoding=DecodingWarmUp((2,), 0.7, 0, 0.9))
g.wait_for_gpu_start_up()
print(json.dumps({"dtypes": sorted({str(p.dtype) for p in loaded.model.parameters()}), "timeline": g.timeline}))
"""


def test_warm_up_beside_a_real_load_in_a_fresh_process():
    """In a fresh interpreter (transformers not yet imported), the warm-up thread runs beside the real load
    of the default model: the load neither fails on a half-done lazy import nor builds modules in the
    thread's dtype, and the warm-up decodes on the model's twin."""
    done = subprocess.run([sys.executable, "-c", BESIDE_THE_LOAD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dtypes"] == ["torch.bfloat16"]
    assert {"triton_s", "twin_s", "rows_2_s", "done_s"} <= set(result["timeline"])


def test_decoding_warm_up_leaves_the_random_generators_alone():
    """A command's seeded rows draw from their own generators, unseeded ones from torch's global RNG:
    the warm-up, running beside the load, must draw from neither."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    warm_decoding(_config(), LLAMA, torch.device("cpu"), torch.float32, DecodingWarmUp((1, 3), temperature=0.7, top_p=0.9))
    assert torch.equal(torch.get_rng_state(), state)


def test_decoding_warm_up_skips_models_the_static_decoder_does_not_take():
    from transformers import GPT2Config

    warm_decoding(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50), None, torch.device("cpu"),
                  torch.float32, DecodingWarmUp((1,)))


@pytest.mark.gpu
def test_decoding_warm_up_on_cuda_keeps_the_decoders_tokens():
    """Warm-up in a thread (as the load runs it), then the graph decoder: the same tokens as before it,
    and the CUDA generator untouched."""
    import threading

    from transformers import LlamaForCausalLM

    from acculturate.decode.static import StaticDecoder

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config()).to("cuda", torch.bfloat16).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]

    def tokens():
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return StaticDecoder(model, 2, 32, temperature=0.7, top_p=0.9).generate(prompts, 12, generators=gens)

    before = tokens()
    cuda_state = torch.cuda.get_rng_state()
    warm_up = DecodingWarmUp((1, 2, 64), temperature=0.7, top_p=0.9)
    thread = threading.Thread(target=warm_decoding, args=(_config(), LLAMA, torch.device("cuda"), torch.bfloat16, warm_up))
    thread.start()
    thread.join()
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert tokens() == before


def test_commands_warm_the_batch_sizes_they_will_decode():
    from types import SimpleNamespace

    from acculturate.cli.common import decoding_warm_up

    args = SimpleNamespace(batch_size=64, temperature=0.7, top_k=0, top_p=0.9)
    assert decoding_warm_up(args, 64) == DecodingWarmUp((64,), 0.7, 0, 0.9)
    assert decoding_warm_up(args, 100).rows == (36, 64)   # a full batch, then the rest
    assert decoding_warm_up(args, None).rows == (1, 64)   # unknown: one prompt or a full batch
    assert decoding_warm_up(SimpleNamespace(), 1).rows == (1,)   # `ask`: one question, greedy
    assert decoding_warm_up(SimpleNamespace(), None) is None
