"""`acculturate ppo` and `acculturate reward-model train` end to end through the CLI, on a tiny
random Llama saved as an HF model directory with the default model's tokenizer (the real-model
runs are in tests/feedback/ and docs/benchmarks.md; this pins down the run directory, resuming,
the reward-model hand-over to PPO and the error messages)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "acculturate", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_reward_model_then_ppo_with_it(tiny_model_dir, tmp_path):
    rm_config = tmp_path / "rm.yaml"
    rm_config.write_text(yaml.safe_dump({
        "name": "rm", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "data": {"limit": 12, "test_fraction": 0.25},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj"]},
        "train": {"max_steps": 3, "batch_size": 4, "max_length": 96, "log_every": 1}}))
    proc = _cli("reward-model", "train", str(rm_config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out pair accuracy on 3 pairs" in proc.stdout
    rm_dir = tmp_path / "runs" / "rm" / "reward_model"
    assert {"reward_model.json", "head.safetensors", "adapter"} <= {p.name for p in rm_dir.iterdir()}
    summary = json.loads((tmp_path / "runs" / "rm" / "summary.json").read_text())
    assert summary["train_pairs"] == 9 and summary["eval_pairs"] == 3 and summary["steps"] == 3

    ppo_config = tmp_path / "ppo.yaml"
    ppo_config.write_text(yaml.safe_dump({
        "name": "ppo", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "prompts": {"eval_prompts": 2, "sources": [{"path": "shipped:instructions/instruction-data.json", "limit": 8}]},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
        "reward": {"kind": "reward_model", "path": str(rm_dir)},
        "ppo": {"steps": 2, "batch_size": 2, "mini_batch_size": 1, "ppo_epochs": 1, "max_new_tokens": 4,
                "save_every": 1}}))
    proc = _cli("ppo", str(ppo_config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PPO 2 steps: rollout reward" in proc.stdout and "held-apart greedy reward on 2 prompts" in proc.stdout
    run = tmp_path / "runs" / "ppo"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.jsonl", "reward.png",
                 "summary.json", "value_head.safetensors", "reference/adapter_config.json", "rollouts.jsonl",
                 "checkpoint/state.json"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("clip_fraction" in r and "kl" in r for r in rows)
    # The adapter is PEFT's format and loads back.
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(run / "adapter")).r == 2
    # Running the same config again continues (here: it is finished, so nothing is redone).
    again = _cli("ppo", str(ppo_config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 2
    # Another config in the same run directory is refused.
    other = _cli("ppo", str(ppo_config), "--set", "ppo.kl_coef=0.5", cwd=tmp_path)
    assert other.returncode == 2 and "already holds a run with a different configuration" in other.stderr


def test_config_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  mini_batch_size: 3\n")
    proc = _cli("ppo", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "mini_batch_size" in proc.stderr
    bad.write_text("reward: {kind: magic}\n")
    proc = _cli("ppo", str(bad), "--set", "model.name=/nonexistent-model", cwd=tmp_path)
    assert proc.returncode == 2
    bad.write_text("train: {batch_size: 0}\n")
    proc = _cli("reward-model", "train", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "RewardModelConfig.batch_size" in proc.stderr


def test_scored_rows_are_read_with_file_line_and_field_errors(tmp_path):
    from acculturate.data import DataError
    from acculturate.jobs.reward_model import read_scored_rows

    path = tmp_path / "scored.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "reward": 1}\n\n{"prompt": "p", "completion": "", "reward": -0.5}\n')
    assert read_scored_rows(path) == [{"prompt": "p", "completion": "c", "reward": 1.0},
                                      {"prompt": "p", "completion": "", "reward": -0.5}]
    path.write_text('{"prompt": "p", "completion": "c", "reward": true}\n')
    with pytest.raises(DataError, match=r"scored.jsonl:1: field 'reward': expected a number, got bool"):
        read_scored_rows(path)
    path.write_text('{"prompt": "p", "reward": 1}\n')
    with pytest.raises(DataError, match=r"scored.jsonl:1: field 'completion': expected a string, got nothing"):
        read_scored_rows(path)
