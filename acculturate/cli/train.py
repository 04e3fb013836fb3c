"""`acculturate adapt | train | compare | tune`: the training jobs and what they print."""

from __future__ import annotations

import sys
from pathlib import Path

from acculturate.cli.common import add_job_parser, job_config, run_job


def add_parsers(sub) -> None:
    p = add_job_parser(sub, "adapt", cmd_adapt)
    p.add_argument("--name", help="run name (the folder under output_dir)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed data rows (each reported, then counted) instead of stopping")

    p = add_job_parser(sub, "train", cmd_train)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed data rows (each reported, then counted) instead of stopping")
    p.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="train on N GPUs of this machine (launches torchrun; DDP, or FSDP2 with "
                        "--set train.distributed=fsdp)")

    add_job_parser(sub, "compare", cmd_compare)

    p = add_job_parser(sub, "tune", cmd_tune)
    p.add_argument("--n-trials", type=int, default=None, help="trials to finish in all (study.n_trials)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the study (default: one per GPU, or 1 on CPU)")


def cmd_adapt(args) -> int:
    config, path = job_config(args)
    if args.name:
        config.name = args.name
    if args.skip_invalid:
        config.data.skip_invalid = True
    metrics = run_job(args, config, overwrite=args.restart, base_dir=path.parent)
    out = Path(config.output_dir) / config.name
    systems, n = metrics["systems"], metrics["questions"]["test"]
    print(f"\n{config.region}: accuracy on {n} held-apart questions")
    for name, label in (("base_closed_book", "base, closed-book"), ("base_retrieval", "base + retrieval"),
                        ("adapted_closed_book", "adapted, closed-book"), ("adapted_retrieval", "adapted + retrieval")):
        s = systems[name]
        print(f"  {label:<22} {100 * s['accuracy']:5.1f}%  (95% {100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f})")
    d = metrics["comparisons"]["adapted_retrieval - base_retrieval"]
    print(f"  adapted + retrieval vs base + retrieval: {100 * d['difference']:+.1f} points "
          f"(paired 95% {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})")
    print(f"Results: {out}/report.md, {out}/report.html, {out}/metrics.json")
    print(f"Use it: acculturate ask --run {out} \"QUESTION\"  |  acculturate serve --run {out}")
    return 0


def cmd_train(args) -> int:
    if args.gpus:
        return launch_torchrun(args.gpus)
    config, path = job_config(args)
    if args.skip_invalid:
        config.data.skip_invalid = True
    metrics = run_job(args, config, resume=args.resume, overwrite=args.restart, base_dir=path and path.parent)
    if "rank" in metrics:   # a non-zero rank under torchrun: rank 0 reports
        return 0
    t = metrics["train"]
    print(f"\ntrained {config.method.name}: {t['steps']} steps, train loss {t['train_loss']:.4f}"
          + (f", eval loss {t['eval_loss']:.4f}" if t.get("eval_loss") is not None else ""))
    print(speed_line(t))
    print(f"Saved: {metrics['saved']}")
    return 0


def speed_line(t: dict) -> str:
    """Tokens/s and peak memory of a training run (TrainResult as a dict)."""
    peak = t.get("peak_memory_bytes") or 0
    where = "GPU max allocated, weights included" if t.get("peak_memory_kind") == "cuda_max_allocated" \
        else "CPU RSS growth"
    policy = t.get("activation_checkpointing", "off")
    policy = f"of the first {policy} layers" if isinstance(policy, int) else policy
    parked = ", their inputs in host memory" if t.get("checkpointed_inputs_offloaded") else ""
    return (f"{t.get('tokens_per_s', 0):,.0f} tokens/s, peak memory {peak / 2 ** 30:.2f} GiB ({where}), "
            f"activation checkpointing {policy}{parked}")


def launch_torchrun(gpus: int) -> int:
    """`acculturate train --gpus N`: run this same command under torchrun, one process per GPU."""
    import subprocess

    import torch

    if gpus > torch.cuda.device_count():
        raise SystemExit(f"acculturate train: error: --gpus {gpus}, but {torch.cuda.device_count()} CUDA GPU(s) "
                         f"are visible (on CPU run `torchrun --nproc-per-node {gpus} -m acculturate train ...`, gloo)")
    argv = sys.argv[1:]
    rest = [a for i, a in enumerate(argv) if a != "--gpus" and not a.startswith("--gpus=")
            and (i == 0 or argv[i - 1] != "--gpus")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "acculturate", *rest]
    print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def cmd_compare(args) -> int:
    config, path = job_config(args)
    summary = run_job(args, config, overwrite=args.restart, base_dir=path and path.parent)
    print(Path(summary["files"]["table"]).read_text())
    print(f"Results: {summary['files']['table']}, {summary['files']['plot']}")
    return 0


def cmd_tune(args) -> int:
    config, path = job_config(args, [f"study.n_trials={args.n_trials}"] if args.n_trials else [])
    summary = run_job(args, config, workers=args.workers, overwrite=args.restart, base_dir=path and path.parent)
    print(Path(summary["files"]["trials"]).read_text())
    final = summary["final"]
    if "default" in final:
        d, b = final["default"]["test"], final["best"]["test"]
        print("held-apart test split: " + ", ".join(
            f"{k} {d[k]:.4f} (default) -> {b[k]:.4f} (best)" for k in ("eval_loss", "accuracy") if k in d and k in b))
    print("Results: " + ", ".join(f"{k} {v}" for k, v in summary["files"].items()))
    return 0
