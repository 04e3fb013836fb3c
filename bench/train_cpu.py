"""CPU benchmark: a LoRA epoch slice on the default model, ours vs HF transformers + PEFT, in one run.

Both sides train LoRA r=16 / alpha=32 / dropout 0.05 on all seven linear projections of
SmolLM2-135M-Instruct (fp32, CPU), AdamW lr 2e-4, on the same first N examples of the shipped
Alpaca instruction data, tokenized once with the same template and response-only labels, max length 512.

- baseline (``hf_peft``): PEFT ``get_peft_model`` and the usual padded batches (pad to the longest in
  the batch, as ``DataCollatorForSeq2Seq`` does), ``model(**batch).loss``, batch size 8.
- ours (``ours_packed``): ``acculturate.train.train`` with packing (examples concatenated into rows of
  512 tokens, attention kept per example) and the vocabulary projection only where a loss is taken.
- ours (``ours_grouped``): the same loop without packing, batch size 8 with length-grouped batches.

Each case runs in its own process (so peak memory is its own): wall time of the training loop,
non-padding tokens/s (the examples' real tokens / wall time) and peak RSS growth during training
(sampled every 5 ms from /proc/self/statm, the same meter for every case).

    python bench/train_cpu.py [--examples 96] [--cases hf_peft,ours_packed,ours_grouped] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_LENGTH = 512
BATCH = 8
LR = 2e-4


def features(n: int):
    from acculturate.data import read_examples, tokenize_examples
    from acculturate.models import load
    from acculturate.resources import resource_path

    model, tok = load("smollm2-135m", device="cpu")
    examples = read_examples(resource_path("data/instructions/instruction-data.json"))[:n]
    return model, tok, tokenize_examples(examples, tok, "alpaca", MAX_LENGTH, progress=False)


def run_hf_peft(n: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from acculturate.data.batching import pad_collate
    from acculturate.train import PeakMemory

    model, tok, feats = features(n)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    torch.manual_seed(0)
    order = torch.randperm(len(feats)).tolist()
    with PeakMemory("cpu") as mem:
        start = time.perf_counter()
        for i in range(0, len(order), BATCH):
            batch = pad_collate([feats[j] for j in order[i:i + BATCH]], tok.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": mem.peak_bytes, "final_loss": float(loss),
            "steps": (len(order) + BATCH - 1) // BATCH}


def run_ours(n: int, packed: bool) -> dict:
    from acculturate.adapters import LoRAConfig, prepare_model
    from acculturate.train import PeakMemory, TrainConfig, train

    model, tok, feats = features(n)
    prepare_model(model, "lora", lora=LoRAConfig(r=16, alpha=32, dropout=0.05, targets=tuple(TARGETS)))
    config = TrainConfig(epochs=1, batch_size=1 if packed else BATCH, lr=LR, warmup_ratio=0.0,
                         packing=packed, group_by_length=not packed, max_length=MAX_LENGTH,
                         save_every=0, log_every=1000)
    with tempfile.TemporaryDirectory() as out, PeakMemory("cpu") as mem:
        start = time.perf_counter()
        result = train(model, feats, None, config, out, pad_id=tok.pad_token_id, progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": mem.peak_bytes, "final_loss": result.train_loss,
            "steps": result.steps}


def child(case: str, n: int) -> None:
    import torch

    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _, _, feats = features(n)
    tokens = sum(len(f["input_ids"]) for f in feats)
    result = run_hf_peft(n) if case == "hf_peft" else run_ours(n, packed=(case == "ours_packed"))
    result.update(case=case, examples=n, tokens=tokens, tokens_per_s=tokens / result["seconds"],
                  threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--cases", default="hf_peft,ours_packed,ours_grouped")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.examples)
    results = {}
    for case in args.cases.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--examples", str(args.examples)],
                              capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"case {case} failed:\n{proc.stderr[-3000:]}")
        results[case] = json.loads(line[len("RESULT "):])
        r = results[case]
        print(f"{case:14s} {r['seconds']:7.1f} s  {r['tokens_per_s']:7.1f} tok/s  "
              f"peak +{r['peak_bytes'] / 2**20:6.0f} MiB  steps {r['steps']}  loss {r['final_loss']:.3f}", flush=True)
    base = results.get("hf_peft")
    if base:
        for case, r in results.items():
            if case != "hf_peft":
                print(f"{case}: {r['tokens_per_s'] / base['tokens_per_s']:.2f}x the baseline's non-padding tokens/s, "
                      f"peak memory {r['peak_bytes'] / max(base['peak_bytes'], 1):.2f}x")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "command": " ".join(["python"] + sys.argv)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
