"""Train the tiny test model with LoRA for a few steps and write the loss history as JSON.

Run as one process (``python distributed_script.py ...``) or under torchrun
(``python -m torch.distributed.run --nproc-per-node 2 distributed_script.py ...``): the same code.
Used by tests/train/test_distributed.py and bench/multi_gpu.py's CPU check.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from acculturate.adapters import LoRAConfig, prepare_model
from acculturate.models import load
from acculturate.train import TrainConfig, train
from acculturate.train.distributed import init_from_env, world_size_from_env


class Stop(Exception):
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--method", default="lora")
    p.add_argument("--stop-at", type=int, default=0, help="raise after the eval at this step (a crash)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    device = "cpu"
    if world_size_from_env() > 1:
        _, _, device = init_from_env()
    model, tok = load(args.model, device="cpu")
    torch.manual_seed(0)   # the same LoRA initialisation in every process and every run
    prepare_model(model, args.method, lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(1)
    features = []
    for i in range(24):   # varied lengths: padding and uneven target counts across ranks
        n = 8 + int(torch.randint(0, 12, (1,), generator=g))
        ids = torch.randint(10, 2000, (n,), generator=g).tolist()
        features.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    config = TrainConfig(max_steps=args.steps, batch_size=5, grad_accum=2, lr=5e-3, eval_every=2, save_every=2,
                         log_every=1, distributed=args.strategy)

    def on_eval(step, loss):
        if args.stop_at and step >= args.stop_at:
            raise Stop(step)

    try:
        result = train(model, features, features[:7], config, args.out, pad_id=tok.pad_token_id, device=device,
                       progress=False, resume=args.resume, on_eval=on_eval)
    except Stop:
        return 3
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:   # every rank holds the same history; two writers would interleave
        Path(args.out, f"history-{world_size_from_env()}.json").write_text(
            json.dumps({"history": result.history, "resumed_from_step": result.resumed_from_step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
