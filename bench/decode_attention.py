"""GPU A/B of attention in the decoding step over the static KV cache (``decode/cache_layer.py``), then
of the whole decoding step with each, in one process.

Kernel level: Llama-1B attention shape (32 query heads, 8 kv heads, head dim 64), 384 cache slots
(128-token prompts + 256 new tokens) in bf16, each row's first 10 slots padding and slots past 250
not written yet (the bias masks them); 16 calls on 16 separate caches (a step's layers), captured as
one CUDA graph: median of 30 replays, per call. Error: max |out - fp32 softmax reference|.
Variants (all take the decoder's additive fp32 bias, (B * Hkv, 1, S)):
  bmm        the grouped batched matmuls (``cache_layer.grouped_attention``; the path before the kernel)
  bmm_t      the same with the cache as the GEMMs' M side (K @ q^T, V^T @ p^T)
  sdpa_*     SDPA with the query heads as query rows of their kv head ((B, Hkv, 4, D) over (B, Hkv, S, D)),
             the bias as a bf16 mask, under one backend (efficient, cudnn, math; flash takes no mask)
  triton     ``decode.kv_attention.decode_attention`` (splits chosen)
  triton_s1  ... one program per (row, kv head)
(The first run, bench/results/decode_attention_h200.jsonl, also had the kernel skip blocks that the bias
masks entirely: "triton" there skipped, "triton_noskip" did not; skipping was slower at every batch, as the
branch stops the loads' pipelining, and is gone.)
Step level: random-init Llama-1B (bench/gpu_commands.make_model, loaded as ``acculturate generate``
loads it), ``StaticDecoder`` at temperature 0.7, top-p 0.9, 128 + 256 slots, batch 64 and 1: median
of 50 graph replays (CUDA events) with ``cache_layer.attend``'s decoding path swapped per variant;
then the same with Liger's fused RMSNorm/RoPE/SwiGLU (``models.kernels.use_fused_kernels``, which
``acculturate serve`` applies and ``generate`` did not).

    python3 bench/decode_attention.py           # both levels; one JSON line per result in $OUT/decode_attention.jsonl
    python3 bench/decode_attention.py liger     # the kernel's first launch in a process, then the step with Liger
                                                # at batch 64 and 32 only (bmm and triton)
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import traceback
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

cache_layer = importlib.import_module("acculturate.decode.cache_layer")   # the module: attend is swapped in it
from acculturate.decode.cache_layer import grouped_attention  # noqa: E402

H, N_KV, D, S, PAD, WRITTEN, LAYERS = 32, 8, 64, 384, 10, 250, 16


def bmm_t(q, k, v, bias, scale):
    b = q.shape[0]
    n_kv, S_ = k.shape[1], k.shape[2]
    qg = q.reshape(b * n_kv, -1, q.shape[-1])                                  # (b*Hkv, rep, D)
    scores = torch.bmm(k.reshape(b * n_kv, S_, -1), qg.transpose(1, 2))       # (b*Hkv, S, rep)
    probs = torch.add(bias, scores.transpose(1, 2), alpha=scale).softmax(-1)  # (b*Hkv, rep, S) fp32
    out = torch.bmm(v.reshape(b * n_kv, S_, -1).transpose(1, 2), probs.to(v.dtype).transpose(1, 2))
    return out.transpose(1, 2).reshape(q.shape)


def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "math": SDPBackend.MATH}[backend]

    def attend(q, k, v, bias, scale):
        b, n_kv = q.shape[0], k.shape[1]
        qg = q.reshape(b, n_kv, -1, q.shape[-1])                               # (b, Hkv, rep, D)
        mask = bias.view(b, n_kv, 1, -1).to(q.dtype).expand(-1, -1, qg.shape[2], -1)
        with sdpa_kernel(chosen):
            out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
        return out.reshape(q.shape)
    return attend


def triton(splits=0):
    def attend(q, k, v, bias, scale):
        from acculturate.decode.kv_attention import decode_attention
        return decode_attention(q, k, v, bias, scale, splits)
    return attend


VARIANTS = {"bmm": grouped_attention, "bmm_t": bmm_t, "sdpa_efficient": sdpa("efficient"),
            "sdpa_cudnn": sdpa("cudnn"), "sdpa_math": sdpa("math"), "triton": triton(),
            "triton_s1": triton(1)}


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def kernel_case(B: int) -> list[dict]:
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    qs = [torch.randn(B, 1, H, D, device=dev, dtype=dt).transpose(1, 2) for _ in range(LAYERS)]
    ks = [torch.randn(B, N_KV, S, D, device=dev, dtype=dt) for _ in range(LAYERS)]
    vs = [torch.randn_like(k) for k in ks]
    valid = torch.zeros(B, S, dtype=torch.bool, device=dev)
    valid[:, PAD:WRITTEN] = True
    bias = torch.zeros(B, S, device=dev).masked_fill_(~valid, float("-inf")).view(B, 1, S).repeat_interleave(N_KV, 0)
    scale = D ** -0.5
    exact = grouped_attention(qs[0].float(), ks[0].float(), vs[0].float(), bias, scale)
    cache_mb = 2 * LAYERS * ks[0].numel() * 2 / 1e6
    out = []
    for name, fn in VARIANTS.items():
        row = dict(case="kernel", variant=name, B=B, S=S)
        try:
            err = (fn(qs[0], ks[0], vs[0], bias, scale).float() - exact).abs().max().item()
            for _ in range(2):   # compile/autotune outside the graph
                for i in range(LAYERS):
                    fn(qs[i], ks[i], vs[i], bias, scale)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(LAYERS):
                    fn(qs[i], ks[i], vs[i], bias, scale)
            ms = _median_ms(graph.replay, 30) / LAYERS
            # GB/s: K and V of every slot of one layer per call
            out.append({**row, "us_per_call": round(1000 * ms, 2), "max_err": round(err, 5),
                        "cache_gb_s": round(cache_mb / LAYERS / ms, 1)})
        except Exception as e:   # a backend that cannot run this shape
            out.append({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(json.dumps(out[-1]), flush=True)
    return out


def step_case(model, B: int, variants, liger: bool) -> list[dict]:
    from acculturate.decode.static import StaticDecoder

    original = cache_layer.attend
    prompts = torch.randint(0, model.config.vocab_size, (B, 128), generator=torch.Generator().manual_seed(0)).tolist()
    out = []
    for name in variants:
        fn = VARIANTS[name]

        def attend(q, k, v, mask, scale, fn=fn):
            return original(q, k, v, mask, scale) if q.shape[2] > 1 else fn(q, k, v, mask, scale)
        cache_layer.attend = attend
        try:
            decoder = StaticDecoder(model, B, 128 + 256, temperature=0.7, top_p=0.9)
            t = time.perf_counter()
            tokens = decoder.generate(prompts, 4)     # prefill + capture
            warm = time.perf_counter() - t
            ms = _median_ms(decoder.graph.replay, 50)
            out.append(dict(case="step", variant=name, B=B, liger=liger, step_ms=round(ms, 3),
                            tok_s=round(B * 1000 / ms), first_tokens=tokens[0][:4], warm_s=round(warm, 2)))
            del decoder
        except Exception as e:
            out.append(dict(case="step", variant=name, B=B, liger=liger, error=f"{type(e).__name__}: {str(e)[:300]}",
                            trace=traceback.format_exc()[-3000:]))
        finally:
            cache_layer.attend = original
        print(json.dumps(out[-1]), flush=True)
    return out


class Results(list):
    """Results appended to $OUT/decode_attention.jsonl as they come (a call cut short keeps them)."""

    def __init__(self):
        super().__init__()
        self.sink = open(Path(os.environ.get("OUT", "/tmp")) / "decode_attention.jsonl", "a")

    def __iadd__(self, rows):
        for r in rows:
            self.append(r)
            self.sink.write(json.dumps(r) + "\n")
        self.sink.flush()
        return self


def first_launch() -> dict:
    """Seconds of the kernel's first and second launch in this process (the Triton cache on disk
    already filled by an earlier run): what a fresh ``acculturate generate`` pays once."""
    from acculturate.decode.kv_attention import decode_attention

    q = torch.randn(64, 1, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(64, N_KV, S, D, device="cuda", dtype=torch.bfloat16)
    bias = torch.zeros(64 * N_KV, 1, S, device="cuda")
    torch.cuda.synchronize()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        decode_attention(q, k, k, bias, 0.125)
        torch.cuda.synchronize()
        times.append(round(time.perf_counter() - t, 4))
    return dict(case="first_launch", seconds=times)


def main() -> None:
    import transformers  # noqa: F401  (as the command has it imported before decoding)

    results = Results()
    results += [dict(case="env", torch=torch.__version__, gpu=torch.cuda.get_device_name())]
    liger_only = sys.argv[1:] == ["liger"]
    if liger_only:
        results += [first_launch()]
    for B in () if liger_only else (1, 8, 32, 64):
        results += kernel_case(B)
    from gpu_commands import make_model

    from acculturate.models import load
    from acculturate.models.kernels import use_fused_kernels

    model = load(str(make_model("llama-1b"))).model.eval()
    if liger_only:
        use_fused_kernels(model)
        for B in (64, 32):
            results += step_case(model, B, ["bmm", "triton"], True)
        return
    fast = [min((r for r in results if r.get("case") == "kernel" and r.get("B") == 64 and r["variant"].startswith(p)
                 and "us_per_call" in r), key=lambda r: r["us_per_call"], default={}).get("variant")
            for p in ("sdpa",)]
    variants = ["bmm", "triton", "triton_s1"] + [v for v in fast if v]
    for liger in (False, True):   # Liger patches classes for the whole process: off first
        if liger and not use_fused_kernels(model):
            break
        for B in (64, 1):
            results += step_case(model, B, variants if not liger else ["bmm", "triton"], liger)


if __name__ == "__main__":
    main()
