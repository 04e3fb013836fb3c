"""`acculturate tune`: config validation, a tiny study's outputs, resume after a kill, parallel
workers (mechanics on a tiny random model) and a real study on the default model (slow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from acculturate.config_loading import ConfigError, from_dict, load_yaml
from acculturate.jobs.finetune import FinetuneConfig
from acculturate.jobs.tune import TuneConfig, open_study, run_tune, trial_config
from acculturate.resources import ROOT

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ROOT.parent / "configs" / "tune" / "smollm2-135m_lora.yaml"


def _tiny(tmp_path, model, **study):
    return {
        "name": "tiny", "output_dir": str(tmp_path / "runs"),
        "base": {"model": {"name": str(model)},
                 "data": {"sources": [{"path": "blend", "countries": ["UK"], "limit": 24}], "max_length": 48,
                          "test_fraction": 0.25},
                 "method": {"name": "lora", "lora": {"r": 2, "alpha": 4}},
                 "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "save_every": 2, "log_every": 1,
                           "max_length": 48}},
        "search": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "train.batch_size": {"choices": [1, 2]}},
        "objective": {"metric": "eval_loss"},
        "study": {"n_trials": 3, "eval_every_examples": 4, "heartbeat_s": 1, "prune_after_trials": 1, **study},
    }


@pytest.mark.parametrize("change, message", [
    ({"search": {"data.max_length": {"choices": [32, 64]}}}, "search.data.max_length: only train.* and method.*"),
    ({"search": {"train.lrr": {"low": 1e-4, "high": 1e-3}}}, "search.train.lrr: no such field"),
    ({"search": {"train.lr": {"low": 1e-3, "high": 1e-4}}}, "search.train.lr: expected low < high"),
    ({"search": {"train.lr": [1e-4, 1e-3]}}, "search.train.lr: expected a mapping"),
    ({"search": {"train.batch_size": {"choices": [0, 8]}}}, "search.train.batch_size: the value 0"),
    ({"search": {"method.name": {"choices": ["lora", "dora"]}}}, "search.method.name: the value 'dora'"),
    ({"search": {"train.lr": {"low": 1e-3, "high": 1e-2}}}, "search.train.lr: the base config's value 0.0002"),
    ({"search": {"train.batch_size": {"choices": [8, 12]}}}, "study.eval_every_examples: 64 is not a multiple"),
    ({"search": {}}, "search: expected at least one field"),
    ({"objective": {"metric": "bleu"}}, "objective: metric"),
    ({"study": {"pruner": "hyperband"}}, "study: pruner"),
    ({"base": {"data": {"test_fraction": 0.0}}}, "base.data.test_fraction"),
])
def test_invalid_search_config_names_the_field(change, message):
    with pytest.raises(ConfigError) as e:
        from_dict(TuneConfig, change)
    assert message in str(e.value)


def test_shipped_config_and_trial_configs_are_train_configs():
    config = load_yaml(TuneConfig, SHIPPED)
    assert set(config.search) >= {"train.lr", "train.epochs", "train.batch_size", "method.lora.r",
                                  "method.lora.alpha", "train.warmup_ratio"}
    ft = trial_config(config, {"train.lr": 1e-3, "method.lora.r": 4, "train.batch_size": 4})
    assert isinstance(ft, FinetuneConfig) and ft.train.lr == 1e-3 and ft.method.lora.r == 4
    assert ft.train.epochs == config.base.train.epochs   # not searched: the base value


def _finished(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_tiny_study_writes_a_best_train_config_and_a_report(tmp_path, tiny_model_dir):
    config = from_dict(TuneConfig, _tiny(tmp_path, tiny_model_dir))
    summary = run_tune(config, progress=False)
    run = tmp_path / "runs" / "tiny"
    rows = json.loads((run / "trials.json").read_text())
    assert len([r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]) == 3
    assert rows[0]["default"] and rows[0]["params"] == {"train.lr": 1e-3, "train.batch_size": 2}
    best = load_yaml(FinetuneConfig, run / "best.yaml")   # ready to run with `acculturate train`
    assert best.name == "tiny-best" and best.train.lr == summary["final"]["best"]["params"]["train.lr"]
    assert "| trial | state | train.lr | train.batch_size |" in (run / "trials.md").read_text()
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Best vs default" in html
    final = summary["final"]
    assert {"best", "default"} <= set(final) and "eval_loss" in final["default"]["test"]
    # rerunning a finished study trains nothing more; asking for more trials continues it
    assert run_tune(config, progress=False)["trials"] == summary["trials"]
    config.study.n_trials = 4
    run_tune(config, progress=False)
    assert len(_finished(open_study(config, run))) == 4


def test_killed_study_resumes_without_losing_or_repeating_trials(tmp_path, tiny_model_dir):
    data = _tiny(tmp_path, tiny_model_dir, n_trials=4, pruner="none")
    data["base"]["train"]["max_steps"] = 40   # long enough trials to be killed in the middle of one
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(data))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "acculturate", "tune", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "runs" / "tiny"
    config = from_dict(TuneConfig, data)
    deadline = time.monotonic() + 300
    try:   # kill it while trial 1 is training, after trial 0 finished
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "trials" / "0001" / "train" / "checkpoint").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    study = open_study(config, run)
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "COMPLETE" and states[1] == "RUNNING"
    killed_params = study.trials[1].params

    run_tune(config, progress=False)
    study = open_study(config, run)
    finished = _finished(study)
    assert len(finished) == 4                                    # none lost, none extra
    assert study.trials[1].state.name == "FAIL"                  # the killed one, marked
    retry = next(t for t in finished if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == killed_params                         # re-run with the same parameters...
    assert retry.user_attrs["dir"] == 1 and retry.user_attrs["train"]["resumed_from_step"] > 0   # ...from its checkpoint
    assert len({t.number for t in finished}) == 4 and sum(1 for t in finished if t.user_attrs.get("default")) == 1


def test_two_workers_share_one_study(tmp_path, tiny_model_dir):
    config = from_dict(TuneConfig, _tiny(tmp_path, tiny_model_dir, n_trials=4))
    run_tune(config, workers=2, progress=False)
    study = open_study(config, tmp_path / "runs" / "tiny")
    assert len(_finished(study)) == 4 and len(study.trials) == 4   # no trial run twice, none beyond the budget


@pytest.mark.slow
def test_real_study_on_the_default_model(tmp_path):
    """Two trials (the default and one sampled learning rate) of a few LoRA steps on the real model."""
    data = {
        "name": "real", "output_dir": str(tmp_path / "runs"),
        "base": {"data": {"sources": [{"path": "blend", "countries": ["UK"], "limit": 16}], "max_length": 64,
                          "test_fraction": 0.25},
                 "method": {"name": "lora", "lora": {"r": 4, "alpha": 8}},
                 "train": {"max_steps": 2, "batch_size": 4, "lr": 2e-4, "save_every": 0}},
        "search": {"train.lr": {"low": 1e-4, "high": 3e-3, "log": True}},
        "objective": {"metric": "eval_loss", "limit": 4},
        "study": {"n_trials": 2, "eval_every_examples": 4},
    }
    summary = run_tune(from_dict(TuneConfig, data), progress=False)
    run = tmp_path / "runs" / "real"
    final = summary["final"]
    assert final["default"]["trial"] == 0 and 0 < final["best"]["validation"]["eval_loss"] < 10
    assert 0 <= final["best"]["test"]["accuracy"] <= 1 and final["best"]["test"]["total"] == 4
    best = load_yaml(FinetuneConfig, run / "best.yaml")
    assert best.model.name == "smollm2-135m" and best.method.lora.r == 4
    rows = json.loads((run / "trials.json").read_text())
    assert all(r["state"] == "COMPLETE" and r["intermediate"] for r in rows)   # reported to the pruner
