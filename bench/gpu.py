"""GPU benchmark: fine-tuning and generation, HF transformers + PEFT (the baseline) vs ours, one run.

Rows: Llama-3.2-1B shape LoRA B8 S2048 without / with gradient checkpointing, Llama-3.1-8B
shape LoRA and QLoRA B4 S2048 with checkpointing, generation at batch 1 and 32 (128-token prompt,
256 new tokens, temperature 0.7, top-p 0.9), self-consistency k=8 vs one chain, and LoRA training on
packed variable-length data (the shipped instruction data's real lengths, tokenized by
``--write-lengths``; random ids of those lengths) in non-padding tokens/s.

Setup as in the shared baseline harness (shared/bench/hf_peft_baseline.py, copied to bench/_vendor/
and run unchanged for the baseline rows): random-init weights of the real shapes (throughput does not
depend on weight values), bf16, LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, random tokens with
labels = inputs, fused AdamW on the trainable parameters, 2 warm-up steps, mean of 8 timed steps,
peak = CUDA max allocated after the model is built (weights included). MFU = tokens/s x FLOPs/token /
798e12 (bf16 dense measured on this GPU kind), FLOPs/token = 4 x frozen matmul params + 6 x LoRA params
+ 6 L S d (causal attention), the issue's formula: recomputation under checkpointing is not counted.

Ours: ``adapters.apply_lora`` / ``apply_qlora`` (LoRA computed in bf16 with fp32 adapter weights),
``models.kernels.use_fused_kernels`` (Liger RMSNorm, RoPE, SwiGLU), ``train.loss.loss_sum`` (loss from
hidden states through Liger's fused linear + cross-entropy), ``models.varlen`` for packed rows, and
``decode.static.StaticDecoder`` (static KV cache, one CUDA graph per token) for generation.

On the device machine (wheels carried in .whl/, see docs/benchmarks.md):
    python3 bench/gpu.py                 # every row, baseline and ours, then the table
    python3 bench/gpu.py gen sc          # only some rows (names: see ROWS); "gen:ours" skips its baseline
    python3 bench/gpu.py --table a.jsonl b.jsonl   # the table from saved results
    python3 bench/gpu.py --cases '[["gen", 1, true, false, true]]'   # explicit cases (see one())
Each case runs in its own process (Liger patches classes globally; peak memory per case). Results
go to $OUT/gpu.jsonl (one JSON line per case) as they come.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASELINE = os.path.join(HERE, "_vendor", "hf_peft_baseline.py")
LENGTHS = os.path.join(HERE, "data", "instruction_lengths.json")
PEAK_FLOPS = 798e12
SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WARMUP, STEPS = 2, 8
GEN = dict(prompt=128, new=256, temperature=0.7, top_p=0.9)
PACKED_EXAMPLES_PER_STEP = 128

# row -> (label, baseline cases, our cases). A case is a list of argv for one subprocess:
# ["base", i] runs the shared harness's CASES[i]; other names run a function below.
ROWS = {
    "1b": ("1B LoRA, B8 S2048, no checkpointing",
           [["base", 0]], [["train", "llama-1b", "lora", 8, 2048, "none"]]),
    "1b-ckpt": ("1B LoRA, B8 S2048, checkpointing",
                [["base", 1], ["base", 2]], [["train", "llama-1b", "lora", 8, 2048, "full"]]),
    "8b": ("8B LoRA, B4 S2048, checkpointing",
           [["base", 4], ["base", 5]], [["train", "llama-8b", "lora", 4, 2048, "full"]]),
    # (["train", ..., "cudnn"] runs SDPA's cuDNN attention first: 11,005 vs 11,007 tok/s on the H200.)
    "8b-qlora": ("8B QLoRA (NF4), B4 S2048, checkpointing",
                 [["base", 6], ["base", 7]], [["train", "llama-8b", "qlora", 4, 2048, "full"]]),
    # Ours: the eager step under a CUDA graph (no compile time), and the torch.compile'd step without
    # Liger (Inductor fuses the norms itself; H200 2026-12-01: 583 vs 563 tok/s with Liger inside).
    # compile=True: at batch 1 the whole step with coordinate-descent tuning (801 tok/s on an H200, 2026-12-01);
    # at batch 32 the layer function.
    "gen": ("generate, 1B, batch 1", [["base", 8]], [["gen", 1], ["gen", 1, True, False]]),
    "gen32": ("generate, 1B, batch 32", [["base", 9]], [["gen", 32], ["gen", 32, True, False]]),
    "sc": ("self-consistency k=8 vs 1 chain, 1B", [["sc", "hf"]], [["sc", "ours"]]),
    "packed": ("1B LoRA on real-length instruction data", [["packed", "hf"]], [["packed", "ours"]]),
}


def frozen_matmul_params(c: dict) -> int:
    d, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = d * c["num_key_value_heads"] // c["num_attention_heads"]
    return L * (2 * d * d + 2 * d * kv + 3 * d * f) + V * d   # the LM head counted, the embedding lookup not


def flops_per_token(c: dict, seq: float, lora_params: int) -> float:
    return 4 * frozen_matmul_params(c) + 6 * lora_params + 6 * c["num_hidden_layers"] * seq * c["hidden_size"]


def weight_bytes(c: dict) -> int:
    """Bytes one decoding step must read at least: every bf16 matmul weight once (batch 1)."""
    return 2 * frozen_matmul_params(c)


# --- our cases ----------------------------------------------------------------------------------
def build_ours(shape: str, mode: str, kernels: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    from acculturate.adapters import LoRAConfig, apply_lora, apply_qlora
    from acculturate.models.kernels import use_fused_kernels

    conf = LlamaConfig(**SHAPES[shape])
    conf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(conf).to(torch.bfloat16)
    fused = use_fused_kernels(model) if kernels else False
    lora = LoRAConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS)
    if mode == "lora":
        apply_lora(model, lora)
    elif mode == "qlora":
        apply_qlora(model, lora)
    gc.collect(); torch.cuda.empty_cache()
    return model, fused


def _timed_steps(step, n_warmup: int, n_steps: int) -> float:
    for _ in range(n_warmup):
        step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n_steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n_steps


def kernel_profile(fn, n: int = 3, top: int = 40) -> dict:
    """GPU time per kernel name over ``n`` calls of ``fn`` (torch.profiler, CUPTI): total ms per
    call, kernel count per call and the ``top`` kernels by time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
    except Exception as e:   # a profile is extra: never lose the timing for it
        return dict(error=f"{type(e).__name__}: {str(e)[:300]}")
    rows = [(e.key, e.count, getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0))
            for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    return dict(gpu_ms_per_call=round(total / n / 1000, 3), kernels_per_call=round(sum(r[1] for r in rows) / n, 1),
                top=[[k[:100], round(c / n, 1), round(t / n / 1000, 4)] for k, c, t in rows[:top]],
                idle=_idle_gaps(prof, n))


def _idle_gaps(prof, n: int, top: int = 15) -> dict:
    """Where the GPU waits between kernels: total idle ms per call, idle by gap size, and the kernels
    that ran right after the longest total idle (the work the GPU waited for the host to launch)."""
    from torch.autograd import DeviceType

    try:
        spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                       if e.device_type == DeviceType.CUDA)
    except Exception as e:   # extra, as the profile is
        return dict(error=f"{type(e).__name__}: {str(e)[:200]}")
    bins = {"<2us": [0, 0.0], "2-10us": [0, 0.0], "10-50us": [0, 0.0], "50-500us": [0, 0.0], ">500us": [0, 0.0]}
    after, end, idle = {}, None, 0.0
    for start, stop, name in spans:
        if end is not None and start > end:
            gap = start - end
            idle += gap
            key = ("<2us" if gap < 2 else "2-10us" if gap < 10 else "10-50us" if gap < 50
                   else "50-500us" if gap < 500 else ">500us")
            bins[key][0] += 1; bins[key][1] += gap
            after[name[:80]] = after.get(name[:80], 0.0) + gap
        end = stop if end is None else max(end, stop)
    worst = sorted(after.items(), key=lambda kv: -kv[1])[:top]
    return dict(idle_ms_per_call=round(idle / n / 1000, 3),
                by_size={k: [round(c / n, 1), round(t / n / 1000, 3)] for k, (c, t) in bins.items()},
                before_kernel=[[k, round(t / n / 1000, 3)] for k, t in worst])


def train_ours(shape: str, mode: str, B: int, S: int, ckpt: str, attention: str = "default",
               lora_order: str = "frozen_base_last", profile: bool = False, siblings: bool = True) -> dict:
    from acculturate.adapters.lora import LoRALinear
    from acculturate.train.loss import loss_sum

    # Ablations: "base_first" is the LoRA forward without the frozen-base-last order (base matmul,
    # then the adapter); siblings=False computes q/k/v and gate/up each alone (no SiblingGroup).
    LoRALinear.frozen_base_last = lora_order == "frozen_base_last"
    LoRALinear.fuse_siblings = bool(siblings)
    model, fused = build_ours(shape, mode)
    torch.cuda.reset_peak_memory_stats()
    if ckpt == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    x = torch.randint(0, SHAPES[shape]["vocab_size"], (B, S), device="cuda")
    batch, device = {"input_ids": x, "labels": x}, torch.device("cuda")

    def step():
        total, n = loss_sum(model, batch, device, None)
        (total / n).backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    if attention == "cudnn":   # SDPA's cuDNN attention first (Hopper-tuned), FlashAttention-2 as fallback
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
        try:
            context = sdpa_kernel(backends, set_priority=True)
        except TypeError:   # a PyTorch without priorities: cuDNN is then tried before flash anyway
            context = sdpa_kernel(backends)
        with context:
            dt = _timed_steps(step, WARMUP, STEPS)
    else:
        dt = _timed_steps(step, WARMUP, STEPS)
    n_lora = sum(p.numel() for p in params)
    tps = B * S / dt
    peak = torch.cuda.max_memory_allocated()
    prof = kernel_profile(step, n=1) if profile else None
    return dict(case="train", side="ours", shape=shape, mode=mode, gc=ckpt != "none", ckpt=ckpt, liger=fused,
                attention=attention, lora_order=lora_order, siblings=bool(siblings), profile=prof,
                B=B, S=S, trainable=n_lora, tok_s=round(tps), step_s=round(dt, 4),
                peak_gib=round(peak / 2 ** 30, 2),
                mfu=round(tps * flops_per_token(SHAPES[shape], S, n_lora) / PEAK_FLOPS, 3))


def _random_model(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(**SHAPES[shape])
    conf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(conf).to(torch.bfloat16).eval()


def gen_ours(B: int, compiled: bool | str = False, kernels: bool = True, profile: bool = False) -> dict:
    from acculturate.decode.static import StaticDecoder
    from acculturate.models.kernels import use_fused_kernels

    model = _random_model("llama-1b")
    fused = use_fused_kernels(model) if kernels else False   # without: Inductor fuses the norms itself
    P, new = GEN["prompt"], GEN["new"]
    prompts = torch.randint(0, model.config.vocab_size, (B, P)).tolist()
    decoder = StaticDecoder(model, B, P + new, temperature=GEN["temperature"], top_p=GEN["top_p"],
                            compile=compiled)
    t = time.perf_counter()
    decoder.generate(prompts, 8)     # warm-up: compiles (if asked) and captures the step's CUDA graph
    warm_s = time.perf_counter() - t
    torch.cuda.synchronize(); t = time.perf_counter()
    out = decoder.generate(prompts, new)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    prof = None
    if profile:   # kernels of graph replays, and of the same step run outside a graph
        def rewind():   # back to the first decoding step (the cache has max_length slots)
            decoder.positions.fill_(P); decoder.slot.fill_(P); decoder.step.fill_(1)
        with torch.inference_mode():
            rewind()
            prof = dict(graph=kernel_profile(decoder.graph.replay, n=20, top=30))
            rewind()
            prof["no_graph"] = kernel_profile(decoder._step, n=20, top=30)
    assert all(len(o) == new for o in out)
    tps = B * new / dt
    roof = 4.3e12 / weight_bytes(SHAPES["llama-1b"])   # tokens/s per row if only weights were read
    return dict(case="generate", side="ours", shape="llama-1b", B=B, prompt=P, new=new, liger=fused, compiled=compiled,
                warmup_s=round(warm_s, 1), profile=prof,
                tok_s=round(tps), step_ms=round(1000 * dt / new, 3),
                roofline_frac=round(tps / B / roof, 3) if B == 1 else None)


def sc_case(side: str, k: int = 8) -> dict:
    """One prompt, k sampled chains vs one chain, 256 new tokens each: time ratio."""
    model = _random_model("llama-1b")
    P, new = GEN["prompt"], GEN["new"]
    prompt = torch.randint(0, model.config.vocab_size, (1, P))
    times = {}
    if side == "hf":
        x = prompt.cuda()
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, top_p=GEN["top_p"],
                  temperature=GEN["temperature"], pad_token_id=0)
        with torch.no_grad():
            model.generate(x[:, :16], max_new_tokens=8, do_sample=False, pad_token_id=0)
            for n in (1, k):
                torch.cuda.synchronize(); t = time.perf_counter()
                model.generate(x, num_return_sequences=n, **kw)
                torch.cuda.synchronize(); times[n] = time.perf_counter() - t
        fused = False
    else:
        from acculturate.decode.static import StaticDecoder
        from acculturate.models.kernels import use_fused_kernels

        fused = use_fused_kernels(model)
        for n in (1, k):
            decoder = StaticDecoder(model, n, P + new, temperature=GEN["temperature"], top_p=GEN["top_p"])
            decoder.generate(prompt.tolist(), 8, num_samples=n)
            torch.cuda.synchronize(); t = time.perf_counter()
            decoder.generate(prompt.tolist(), new, num_samples=n)
            torch.cuda.synchronize(); times[n] = time.perf_counter() - t
    return dict(case="self_consistency", side=side, k=k, liger=fused, one_chain_s=round(times[1], 3),
                k_chains_s=round(times[k], 3), ratio=round(times[k] / times[1], 3),
                tok_s=round(k * new / times[k]))


def _length_rows() -> list[list[int]]:
    with open(LENGTHS) as f:
        return json.load(f)["rows"]


def packed_case(side: str, siblings: bool = True) -> dict:
    """LoRA on the 1B shape over the instruction data's real lengths, 128 examples a step:
    baseline = HF + PEFT on right-padded batches; ours = packed rows of 2048 with varlen attention
    (``siblings=False``: q/k/v and gate/up each alone, the ablation of train_ours)."""
    rows = _length_rows()
    V = SHAPES["llama-1b"]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    feats = []
    for n_ignored, total in rows:
        ids = torch.randint(1, V, (total,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * n_ignored + ids[n_ignored:]})
    per = PACKED_EXAMPLES_PER_STEP
    n_batches = min(len(feats) // per, WARMUP + STEPS)
    groups = [feats[i * per:(i + 1) * per] for i in range(n_batches)]
    device = torch.device("cuda")
    if side == "hf":
        from peft import LoraConfig, get_peft_model

        from acculturate.data.batching import pad_collate
        model = get_peft_model(_random_model("llama-1b"), LoraConfig(
            r=16, lora_alpha=32, target_modules=list(TARGETS), lora_dropout=0.0, task_type="CAUSAL_LM"))
        batches = [{k: v.to(device) for k, v in pad_collate(gr, 0).items()} for gr in groups]

        def loss_of(batch):
            return model(**batch).loss
        fused = False
    else:
        from acculturate.adapters import LoRAConfig, LoRALinear, apply_lora
        from acculturate.data.batching import pack_features, packed_collate
        from acculturate.models.kernels import use_fused_kernels
        from acculturate.models.varlen import use_varlen_attention
        from acculturate.train.loss import loss_sum
        LoRALinear.fuse_siblings = bool(siblings)
        model = _random_model("llama-1b")
        fused = use_fused_kernels(model)
        apply_lora(model, LoRAConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
        use_varlen_attention(model)
        batches = [{k: v.to(device) for k, v in packed_collate(pack_features(gr, 2048), 0).items()}
                   for gr in groups]

        def loss_of(batch):
            total, n = loss_sum(model, batch, device, None)
            return total / n
    torch.cuda.reset_peak_memory_stats()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    it = iter(batches)

    def step():
        loss_of(next(it)).backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    timed = groups[WARMUP:n_batches]
    dt = _timed_steps(step, WARMUP, len(timed))
    real = sum(len(f["input_ids"]) for gr in timed for f in gr)
    slots = sum(int(b["input_ids"].numel()) for b in batches[WARMUP:])
    seq = sum(len(f["input_ids"]) ** 2 for gr in timed for f in gr) / real   # mean attended length
    tps = real / (dt * len(timed))              # non-padding tokens per second
    n_lora = sum(p.numel() for p in params)
    return dict(case="packed", side=side, shape="llama-1b", examples_per_step=per, liger=fused, siblings=bool(siblings),
                tok_s=round(tps), padding_frac=round(1 - real / slots, 3), mean_len=round(real / (per * len(timed)), 1),
                step_s=round(dt, 4), peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                mfu=round(tps * flops_per_token(SHAPES["llama-1b"], seq, n_lora) / PEAK_FLOPS, 4))


def environment() -> dict:
    """What the machine is and its two ceilings, measured (device copy, bf16 matmul)."""
    info = dict(case="env", torch=torch.__version__, gpu=torch.cuda.get_device_name())
    for name in ("transformers", "peft", "liger_kernel", "bitsandbytes", "triton"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:
            info[name] = f"missing ({type(e).__name__})"
    a = torch.randn(2 ** 30 // 2, device="cuda", dtype=torch.bfloat16)   # 1 GiB
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    torch.cuda.synchronize()
    info["copy_tb_s"] = round(2 * a.numel() * 2 * 20 / (time.perf_counter() - t) / 1e12, 2)
    del a, b
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10):
        x @ y
    torch.cuda.synchronize()
    info["matmul_tflops"] = round(2 * 8192 ** 3 * 10 / (time.perf_counter() - t) / 1e12)
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        info["varlen_attn"] = True
    except ImportError:
        info["varlen_attn"] = False
    return info


# --- driver -------------------------------------------------------------------------------------
def run_case(case: list, timeout: float) -> dict:
    if case[0] == "base":
        argv = [sys.executable, BASELINE, "--one", str(case[1])]
    else:
        argv = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=max(10, timeout), env=env)
    except subprocess.TimeoutExpired:
        return dict(case=case, error=f"timed out after {timeout:.0f} s")
    lines = [l[7:] for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    r = json.loads(lines[-1]) if lines else dict(case=case, error=p.stderr[-1500:])
    if case[0] == "base" and "error" not in r:
        r["side"] = "hf"
    r["wall_s"] = round(time.perf_counter() - t, 1)
    return r


def one(case: list) -> dict:
    kind, args = case[0], case[1:]
    fn = {"train": train_ours, "gen": gen_ours, "sc": sc_case, "packed": packed_case, "env": environment}[kind]
    return fn(*args)


def fmt(v, spec=",") -> str:
    return "—" if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    """The issue's table: one line per row, baseline (best HF variant, and plain) vs ours."""
    def pick(side, pred):
        return [r for r in results if r.get("side") == side and "error" not in r and pred(r)]

    preds = {
        "1b": lambda r: r.get("case") == "train" and r.get("shape") == "llama-1b" and not r.get("gc") and r.get("mode") == "lora",
        "1b-ckpt": lambda r: r.get("case") == "train" and r.get("shape") == "llama-1b" and r.get("gc") and r.get("mode") == "lora",
        "8b": lambda r: r.get("case") == "train" and r.get("shape") == "llama-8b" and r.get("mode") == "lora",
        "8b-qlora": lambda r: r.get("case") == "train" and r.get("shape") == "llama-8b" and r.get("mode") == "qlora",
        "gen": lambda r: r.get("case") == "generate" and r.get("B") == 1,
        "gen32": lambda r: r.get("case") == "generate" and r.get("B") == 32,
        "sc": lambda r: r.get("case") == "self_consistency",
        "packed": lambda r: r.get("case") == "packed",
    }
    lines = ["| row | HF + PEFT tok/s | + Liger tok/s | ours tok/s | ours / HF | ours / HF+Liger | "
             "peak GiB HF / +Liger / ours | MFU HF / ours | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, (label, _, _) in ROWS.items():
        hf = pick("hf", preds[key])
        plain = next((r for r in hf if not r.get("liger")), None)
        liger = next((r for r in hf if r.get("liger")), None)
        ours = max(pick("ours", preds[key]), key=lambda r: r.get("tok_s") or 0, default=None)   # best variant
        if not (plain or liger or ours):
            continue
        tok = lambda r: r.get("tok_s") if r else None
        ratio = lambda a, b: f"**{a['tok_s'] / b['tok_s']:.2f}x**" if a and b and a.get("tok_s") and b.get("tok_s") else "—"
        peak = " / ".join(fmt(r.get("peak_gib") if r else None, "") for r in (plain, liger, ours))
        mfu = " / ".join(fmt(r.get("mfu") if r else None, "") for r in (plain, ours))
        note = ""
        if key == "sc":
            note = " / ".join(f"{s}: k=8 takes {r['ratio']}x one chain" for s, r in (("HF", plain), ("ours", ours)) if r)
        elif key in ("gen", "gen32") and ours:
            how = ("compiled step" + (" + Liger" if ours.get("liger") else ", no Liger")) if ours.get("compiled") \
                else "eager step + Liger"
            note = f"ours: CUDA graph, {how}"
            if ours.get("roofline_frac"):
                note += f"; {ours['roofline_frac']:.0%} of the weight-read roofline"
        elif key == "packed":
            note = " / ".join(f"{s}: padding {r['padding_frac']:.0%}" for s, r in (("HF", plain), ("ours", ours)) if r)
        lines.append(f"| {label} | {fmt(tok(plain))} | {fmt(tok(liger))} | {fmt(tok(ours))} | {ratio(ours, plain)} | "
                     f"{ratio(ours, liger)} | {peak} | {mfu} | {note} |")
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--case"]:
        print("RESULT " + json.dumps(one(json.loads(args[1]))), flush=True)
        return
    if args[:1] == ["--write-lengths"]:
        write_lengths()
        return
    if args[:1] == ["--table"]:
        results = [json.loads(l) for path in args[1:] for l in open(path) if l.strip()]
        print(table(results))
        return
    budget = float(os.environ.get("BENCH_BUDGET_S", 570))   # stay inside one device call
    only_ours = "--ours" in args
    cases = json.loads(args[args.index("--cases") + 1]) if "--cases" in args else None   # explicit case list
    names = [] if cases else [a for a in args if not a.startswith("--")] or list(ROWS)
    start = time.perf_counter()
    out_dir = os.environ.get("OUT")
    sink = open(os.path.join(out_dir, "gpu.jsonl"), "a") if out_dir else None
    results = []

    def record(r):
        results.append(r)
        print(json.dumps(r), flush=True)
        if sink:
            sink.write(json.dumps(r) + "\n"); sink.flush()

    record(run_case(["env"], 120))
    for case in cases or []:
        left = budget - (time.perf_counter() - start)
        record(run_case(case, left) if left >= 20 else dict(case=case, error="skipped: out of time in this call"))
    for name in names:   # "row:ours" runs only our side of a row
        name, _, side = name.partition(":")
        label, base_cases, our_cases = ROWS[name]
        for case in ([] if only_ours or side == "ours" else base_cases) + our_cases:
            left = budget - (time.perf_counter() - start)
            if left < 20:
                record(dict(case=case, error="skipped: out of time in this call"))
                continue
            record(run_case(case, left))
    print("\n" + table(results), flush=True)


def write_lengths() -> None:
    """bench/data/instruction_lengths.json from the shipped instruction data (CPU, default tokenizer)."""
    from acculturate.data import read_examples, tokenize_examples
    from acculturate.models import load
    from acculturate.resources import resource_path

    _, tok = load("smollm2-135m", device="cpu")
    examples = read_examples(resource_path("data") / "instructions" / "instruction-data.json")
    feats = tokenize_examples(examples, tok, template="chat", max_length=2048, progress=False)
    rows = [[sum(l == -100 for l in f["labels"]), len(f["labels"])] for f in feats]
    with open(LENGTHS, "w") as f:
        json.dump({"source": "acculturate/resources/data/instructions/instruction-data.json, chat template, "
                   "SmolLM2-135M-Instruct tokenizer, max_length 2048 (made by bench/gpu.py --write-lengths)",
                   "columns": ["no_loss_tokens", "total_tokens"], "rows": rows}, f)


if __name__ == "__main__":
    main()
