"""`acculturate data ...`: one step through the CLI, and a pipeline of the model-free steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acculturate.config_loading import ConfigError, from_dict
from acculturate.data import read_examples
from acculturate.jobs.data import DataPipelineConfig, run_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "acculturate", "data", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_step_writes_output_and_reports_bad_input(tmp_path):
    out = tmp_path / "dedup.jsonl"
    done = _cli("dedupe", "shipped:instructions/instruction-data.json", str(out), "--set", "threshold=0.6",
                "--group", "gender")
    assert done.returncode == 0, done.stderr
    assert "dedupe: 1100 ->" in done.stdout and "group female" in done.stdout
    assert 1000 < len(read_examples(out)) < 1100
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": 5}]')
    done = _cli("length", str(bad), str(tmp_path / "o.jsonl"))
    assert done.returncode == 2 and "bad.json:1: field 'output': expected a string" in done.stderr
    done = _cli("dedupe", str(out), str(tmp_path / "o.jsonl"), "--set", "threshold=3")
    assert done.returncode == 2 and "threshold" in done.stderr


def test_pipeline_of_model_free_steps(tmp_path, data_dir):
    config = from_dict(DataPipelineConfig, {
        "input": "shipped:instructions/instruction-data.json", "output_dir": str(tmp_path / "data"), "group": "gender",
        "steps": [{"step": "dedupe"}, {"step": "length", "settings": {"min_words": 5}},
                  {"step": "blocklist", "settings": {"lists": ["uk"]}},
                  {"step": "counterfactual"},
                  {"step": "balance", "settings": {"group": "gender", "mode": "downsample",
                                                   "target": {"male": 1, "female": 1, "none": 2}}}]})
    result = run_pipeline(config)
    counts = [(s["before"], s["after"]) for s in result["steps"]]
    assert counts[0][0] == 1100 and all(a <= b for b, a in counts[:3]) and counts[3][1] > counts[3][0]
    final = read_examples(result["output"])
    genders = [ex.meta.get("provenance", {}).get("method") for ex in final]
    assert "counterfactual" in genders
    summary = (tmp_path / "data" / "summary.md").read_text()
    assert "| 5 | balance |" in summary
    report = json.loads((tmp_path / "data" / "05-balance.jsonl.report.json").read_text())
    assert report["report"]["result"]["male"] == report["report"]["result"]["female"]
    assert report["report"]["result"]["none"] == 2 * report["report"]["result"]["male"]


def test_pipeline_config_errors_name_the_step():
    with pytest.raises(ConfigError, match=r"steps\[1\].step: expected one of"):
        from_dict(DataPipelineConfig, {"steps": [{"step": "dedupe"}, {"step": "dedup"}]})
    with pytest.raises(ConfigError, match=r"steps\[0\].settings.threshhold: unknown field"):
        from_dict(DataPipelineConfig, {"steps": [{"step": "dedupe", "settings": {"threshhold": 0.5}}]})
