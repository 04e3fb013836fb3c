"""Data-parallel training on CPU with gloo: 2 processes (torchrun) against 1, the same global batch.

The same loop and the same code path as on GPUs (NCCL), only the backend differs. The tiny random
model keeps each run to seconds; a run moves its loss from 10.80 to 10.62 in 6 full fine-tuning
steps, so a wrong gradient scale or a wrong shard would show.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed_script.py")
REPO = Path(__file__).resolve().parents[2]


def _run(model_dir, out, *args, nproc=1):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc-per-node={nproc}"]
    proc = subprocess.run(launch + [str(SCRIPT), str(model_dir), str(out), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    return proc


def _history(out, world):
    return json.loads((Path(out) / f"history-{world}.json").read_text())


def _close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["step"] == y["step"]
        for key in ("loss", "eval_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=tol), (key, x, y)


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    proc = _run(tiny_model_dir, out, "--method", "full")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _history(out, 1)["history"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(strategy, single_run, tiny_model_dir, tmp_path):
    proc = _run(tiny_model_dir, tmp_path, "--method", "full", "--strategy", strategy, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _history(tmp_path, 2)["history"]
    assert single_run[-1]["eval_loss"] < single_run[0]["loss"] - 0.1    # it does learn
    _close(single_run, two)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(two)   # rank 0 writes, once


def test_checkpoint_saved_by_two_fsdp_processes_resumes_in_one(single_run, tiny_model_dir, tmp_path):
    crashed = _run(tiny_model_dir, tmp_path, "--method", "full", "--strategy", "fsdp", "--stop-at", "4", nproc=2)
    assert crashed.returncode != 0 and (tmp_path / "checkpoint" / "state.json").exists()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["progress"]["step"] == 2              # the last checkpoint before the crash at step 4
    proc = _run(tiny_model_dir, tmp_path, "--method", "full", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _history(tmp_path, 1)
    assert resumed["resumed_from_step"] == 2
    _close(single_run, resumed["history"])             # as if never interrupted, on one process


def test_acculturate_train_under_torchrun_saves_what_one_process_saves(tiny_model_dir, tmp_path):
    """The whole `acculturate train` job with FSDP2 LoRA on 2 processes: rank 0 writes the run folder,
    and the adapter (gathered from the shards) equals the one a single process trains."""
    from safetensors.torch import load_file

    from acculturate.config_loading import load_yaml
    from acculturate.jobs.finetune import FinetuneConfig, run_finetune

    cfg = {"name": "dist", "output_dir": str(tmp_path / "two"), "model": {"name": str(tiny_model_dir)},
           "data": {"sources": [{"path": "blend", "countries": ["UK"], "limit": 24}], "max_length": 48,
                    "test_fraction": 0.25},
           "method": {"name": "lora", "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
           "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "save_every": 2, "log_every": 1,
                     "max_length": 48, "distributed": "fsdp"}}
    path = tmp_path / "ft.yaml"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "acculturate", "train", str(path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained lora") == 1                     # rank 0 reports
    one = run_finetune(load_yaml(FinetuneConfig, path, [f"output_dir={tmp_path / 'one'}"]))
    two = json.loads((tmp_path / "two" / "dist" / "metrics.json").read_text())
    assert two["train"]["train_loss"] == pytest.approx(one["train"]["train_loss"], rel=1e-5)
    a = load_file(str(tmp_path / "two" / "dist" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "one" / "dist" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(t.abs().sum() > 0 for k, t in b.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
