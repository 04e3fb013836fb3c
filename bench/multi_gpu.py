"""Multi-GPU scaling of `acculturate.train.train`: tokens/s on 1 vs N processes, LoRA and full.

Weak scaling: every process takes ``--per-gpu-batch`` rows of ``--seq`` tokens per step (the global
batch grows with the number of processes, as a user adding GPUs would run it). Random-init weights
of the real shape (throughput does not depend on their values), random tokens, labels = inputs.
Each case is a separate ``torchrun`` launch of this file (``--worker``), running the training loop
itself (``acculturate.train.train``: DDP for LoRA, FSDP2 for full fine-tuning, as ``--set
train.distributed=fsdp`` would), ``--warmup`` steps then ``--steps`` timed ones; tokens/s is the
median over the timed steps of the whole job's tokens per second (rank 0's log).

On 2 GPUs (the device tool's nvidia-h200-x2; NVLink multicast left off, NCCL defaults otherwise):
    python bench/multi_gpu.py --gpus 1,2                 # 8B shape: LoRA (DDP) and full (FSDP2)
On CPU (gloo), to check the harness works (tiny shape, a few seconds per case):
    python bench/multi_gpu.py --device cpu --shape tiny --gpus 1,2 --seq 64 --per-gpu-batch 2
Writes bench/results/multi_gpu[-cpu].json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = {
    # Llama-3.1-8B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False, max_position_embeddings=512),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STRATEGY = {"lora": "ddp", "full": "fsdp"}


def worker(args) -> int:
    """One process of one case (under torchrun): build the model, train, rank 0 writes the result."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from acculturate.adapters import LoRAConfig, prepare_model
    from acculturate.train import TrainConfig, train
    from acculturate.train.distributed import init_from_env, world_size_from_env

    world = world_size_from_env()
    rank, device = 0, torch.device(args.device if args.device == "cpu" else "cuda")
    if world > 1:
        rank, world, device = init_from_env()
    shape = dict(SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    conf = LlamaConfig(**shape)
    conf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(conf).to(dtype)
    if args.method == "lora":
        prepare_model(model, "lora", lora=LoRAConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    else:
        prepare_model(model, "full")
    if device.type == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    steps = args.warmup + args.steps
    g = torch.Generator().manual_seed(1)
    rows = world * args.per_gpu_batch * steps
    features = []
    for _ in range(rows):
        ids = torch.randint(0, conf.vocab_size, (args.seq,), generator=g).tolist()
        features.append({"input_ids": ids, "labels": ids})
    config = TrainConfig(max_steps=steps, batch_size=world * args.per_gpu_batch, lr=1e-4, log_every=1,
                         save_every=0, max_length=args.seq, distributed=STRATEGY[args.method])
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, features, None, config, tmp, pad_id=0, device=device, progress=False)
    timed = [r["tokens_per_s"] for r in result.history if "tokens_per_s" in r][args.warmup:]
    if rank == 0:
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        out = {"method": args.method, "strategy": STRATEGY[args.method], "processes": world,
               "tokens_per_s": statistics.median(timed), "per_gpu_batch": args.per_gpu_batch, "seq": args.seq,
               "trainable_params": result.trainable_params, "total_params": result.total_params,
               "peak_memory_gib": round(peak / 2**30, 2) if peak else None}
        Path(args.result).write_text(json.dumps(out))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def run_case(args, method: str, n: int) -> dict:
    fd, result = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
           "--worker", "--method", method, "--result", result, "--device", args.device, "--shape", args.shape,
           "--seq", str(args.seq), "--per-gpu-batch", str(args.per_gpu_batch), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--layers", str(args.layers)]
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    text = Path(result).read_text()
    os.unlink(result)
    if proc.returncode != 0 or not text:
        tail = (proc.stderr or proc.stdout)[-1500:]
        oom = "OutOfMemoryError" in tail or "CUDA out of memory" in tail
        return {"method": method, "processes": n, "error": "out of memory" if oom else f"exit {proc.returncode}",
                "log_tail": tail}
    return json.loads(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="1,2", help="process counts to compare, e.g. 1,2")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=0, help="override the number of layers (0: the shape's)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--per-gpu-batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --device cpu --shape tiny to check the harness on CPU (gloo)")
    counts = [int(x) for x in args.gpus.split(",")]
    rows = []
    for method in args.methods.split(","):
        for n in counts:
            row = run_case(args, method, n)
            print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
            rows.append(row)
    lines = ["| method | strategy | processes | tokens/s | scaling vs 1 | peak GiB / GPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        one = next((x for x in rows if x["method"] == r["method"] and x["processes"] == 1 and "tokens_per_s" in x), None)
        if "tokens_per_s" in r:
            scale = f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else "—"
            lines.append(f"| {r['method']} | {r['strategy']} | {r['processes']} | {r['tokens_per_s']:,.0f} | {scale} | "
                         f"{r['peak_memory_gib'] if r['peak_memory_gib'] is not None else '—'} |")
        else:
            lines.append(f"| {r['method']} | {STRATEGY[r['method']]} | {r['processes']} | {r['error']} | — | — |")
    print("\n".join(lines))
    suffix = "" if args.device == "cuda" else "-cpu"
    out = HERE / "results" / f"multi_gpu{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "method", "result")},
                               "machine": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                               "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
