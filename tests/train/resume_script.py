"""Train a tiny random-init Llama (or the real default model's last block) in its own process, for
the resume-after-SIGKILL test. Usage:

    python resume_script.py OUT_DIR [--resume] [--step-delay S] [--real] [--device cuda]

Writes OUT_DIR/final.safetensors (the trainable weights at the end) when training completes.
``--step-delay`` sleeps in every forward pass so the test has time to kill the process mid-run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from acculturate.train import TrainConfig, train
from acculturate.train.checkpoint import trainable_state

STEPS = 8


def tiny_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def tiny_features(n: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    features = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(1, 97, (length,), generator=g).tolist()
        prompt = length // 3
        features.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return features


def real_model_and_features() -> tuple[torch.nn.Module, list[dict]]:
    from acculturate.models import load

    model, tok = load("smollm2-135m", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.layers[-1].parameters():
        p.requires_grad_(True)
    features = []
    for q, a in [("Capital of Indonesia?", "Jakarta."), ("A Kenyan staple food?", "Ugali."),
                 ("Language of Brazil?", "Portuguese."), ("Currency of Japan?", "The yen.")]:
        prompt, answer = tok(f"Q: {q}\nA:")["input_ids"], tok(f" {a}")["input_ids"] + [tok.eos_token_id]
        features.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return model, features


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # the same kernels (and summation order) in every process
    if args.device.startswith("cuda"):   # no atomics-based kernels: bitwise-repeatable runs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if args.real:
        model, features = real_model_and_features()
        config = TrainConfig(max_steps=4, batch_size=2, lr=1e-3, save_every=2, log_every=1, seed=3)
    else:
        model, features = tiny_model(), tiny_features()
        model.train()
        config = TrainConfig(max_steps=STEPS, batch_size=4, grad_accum=2, lr=1e-2, save_every=2,
                             log_every=1, eval_every=3, seed=5)
    if args.step_delay:
        model.register_forward_pre_hook(lambda *_: time.sleep(args.step_delay))
    train(model, features, features[:6], config, args.out_dir, resume=args.resume, pad_id=0,
          device=args.device, progress=False)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state(model).items()},
              str(args.out_dir / "final.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1:])
