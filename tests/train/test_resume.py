"""Kill a training process with SIGKILL after its first checkpoint, resume it, and check that the
final weights and log equal those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("resume_script.py")


def run_script(out_dir: Path, *args: str, timeout: float = 120) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(out_dir), *args], check=True, timeout=timeout)


def kill_after_first_checkpoint(out_dir: Path, *args: str, timeout: float = 120) -> int:
    """Start the script, SIGKILL it as soon as a checkpoint exists; return the checkpoint's step."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out_dir), *args])
    state = out_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    try:
        while not state.exists():
            assert proc.poll() is None, "the script ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out_dir / "final.safetensors").exists()   # it really died mid-run
    return json.loads(state.read_text())["progress"]["step"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs by {(wa[name] - wb[name]).abs().max()}"


def read_log(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:   # speeds depend on the machine's load; the rest must match exactly
        for key in ("tokens_per_s", "label_tokens_per_s"):
            r.pop(key, None)
    return rows


def test_resume_after_sigkill_tiny_model(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight)
    step = kill_after_first_checkpoint(killed, "--step-delay", "0.05")
    assert 0 < step < 8
    run_script(killed, "--resume")
    assert_same_weights(straight / "final.safetensors", killed / "final.safetensors")
    # The killed run's log rows after its checkpoint were dropped and written again on resume.
    assert read_log(killed / "metrics.jsonl") == read_log(straight / "metrics.jsonl")


@pytest.mark.slow
def test_resume_after_sigkill_real_model(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight, "--real")
    kill_after_first_checkpoint(killed, "--real", "--step-delay", "0.3")
    run_script(killed, "--real", "--resume")
    assert_same_weights(straight / "final.safetensors", killed / "final.safetensors")


@pytest.mark.gpu
def test_resume_after_sigkill_on_cuda(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight, "--device", "cuda")
    kill_after_first_checkpoint(killed, "--device", "cuda", "--step-delay", "0.05")
    run_script(killed, "--device", "cuda", "--resume")
    assert_same_weights(straight / "final.safetensors", killed / "final.safetensors")
