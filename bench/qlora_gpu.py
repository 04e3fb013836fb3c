"""GPU benchmark: our QLoRA vs bitsandbytes NF4 + PEFT, Llama-3.1-8B shape, in one run.

Random-init weights of the real shape (throughput does not depend on weight values), bf16, SDPA,
LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, batch 4 x 2048 random tokens (labels = inputs),
gradient checkpointing, fused AdamW on the LoRA parameters, 2 warm-up steps, mean of 8 timed steps.
Peak = CUDA max allocated after the model is built (weights included), as in the shared baseline
harness (shared/bench/hf_peft_baseline.py), whose QLoRA case is the baseline here.

Ours: ``acculturate.adapters.apply_qlora`` (NF4 with double-quantized scales, dequantized inside each
layer's forward/backward) and the loss of ``acculturate.train.loss.loss_sum`` (chunked vocabulary
projection + cross-entropy), under bf16 autocast as ``acculturate.train.train`` runs it.

On the device machine (wheels: bitsandbytes, peft; the baseline harness copied to bench/_vendor):
    python bench/qlora_gpu.py            # baseline, ours (eager dequant), ours (compiled dequant)
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
SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
B, S, STEPS = 4, 2048, 8
PEAK_FLOPS = 798e12   # bf16 dense, measured on this GPU kind (device KINDS.md)


def flops_per_token(lora_params: int) -> float:
    """4 x frozen matmul params + 6 x LoRA params + causal attention 6 L S d (the issue's formula)."""
    d, f, L, V = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"], SHAPE["vocab_size"]
    kv = d * SHAPE["num_key_value_heads"] // SHAPE["num_attention_heads"]
    frozen = L * (2 * d * d + 2 * d * kv + 3 * d * f) + V * d
    return 4 * frozen + 6 * lora_params + 6 * L * S * d


def ours(compiled: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from acculturate.adapters import LoRAConfig
    from acculturate.adapters import nf4
    from acculturate.adapters.qlora import apply_qlora
    from acculturate.train.loss import loss_sum

    nf4.compile_dequantize(compiled)
    conf = LlamaConfig(**SHAPE)
    conf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(conf).to(torch.bfloat16)
    apply_qlora(model, LoRAConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    x = torch.randint(0, SHAPE["vocab_size"], (B, S), device="cuda")
    batch = {"input_ids": x, "labels": x}
    device = torch.device("cuda")

    def step():
        total, n = loss_sum(model, batch, device, torch.bfloat16)
        (total / n).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        return total / n

    for _ in range(2):
        step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(STEPS):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / STEPS
    n_lora = sum(p.numel() for p in params)
    return dict(case="ours_qlora" + ("_compiled" if compiled else ""), B=B, S=S, trainable=n_lora,
                tok_s=round(B * S / dt), step_s=round(dt, 4), loss=round(float(loss), 3),
                peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                mfu=round(B * S / dt * flops_per_token(n_lora) / PEAK_FLOPS, 3))


def run(args: list[str]) -> dict:
    p = subprocess.run([sys.executable] + args, capture_output=True, text=True)
    lines = [l[7:] for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    return json.loads(lines[-1]) if lines else dict(case=" ".join(args), error=p.stderr[-1500:])


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in ("eager", "compiled"):
        print("RESULT " + json.dumps(ours(sys.argv[1] == "compiled")), flush=True)
        return
    print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name())), flush=True)
    rows = []
    # Index 6 of the shared harness's CASES: llama-8b, qlora (bitsandbytes NF4 + PEFT), B4 S2048, checkpointing.
    rows.append(run([os.path.join(HERE, "_vendor", "hf_peft_baseline.py"), "--one", "6"]))
    print(json.dumps(rows[-1]), flush=True)
    for mode in ("eager", "compiled"):   # eager: compile_dequantize(False)
        rows.append(run([__file__, mode]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows[1:]:
        if "tok_s" in r and "tok_s" in base:
            print(f"{r['case']}: {r['tok_s'] / base['tok_s']:.2f}x the tokens/s of bitsandbytes + PEFT, "
                  f"peak {r['peak_gib']} GiB vs {base['peak_gib']} GiB", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "qlora_gpu.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
