"""train.report_to: the runs written offline are read back with TensorBoard's and MLflow's own readers."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

from acculturate.config_loading import ConfigError, from_dict
from acculturate.jobs.finetune import FinetuneConfig
from acculturate.train import TrainConfig, train
from acculturate.train.tracking import log_report

_spec = importlib.util.spec_from_file_location("resume_script", Path(__file__).with_name("resume_script.py"))
resume_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_script)

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def _train(out, report_to, steps=4):
    (out.parent / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "config.json").write_text(json.dumps({"name": "tiny", "method": {"name": "full"}}))
    model = resume_script.tiny_model()
    feats = resume_script.tiny_features(16)
    cfg = TrainConfig(max_steps=steps, batch_size=4, eval_every=2, log_every=1, save_every=0, report_to=report_to)
    return train(model, feats[:12], feats[12:], cfg, out, pad_id=0, progress=False)


def test_tensorboard_and_mlflow_runs_hold_config_metrics_and_report(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tiny" / "train"
    result = _train(out, ["tensorboard", "mlflow"])
    (tmp_path / "tiny" / "report.md").write_text("# tiny\n\naccuracy 0.5\n")
    log_report(out, ["tensorboard", "mlflow"], [tmp_path / "tiny" / "report.md", tmp_path / "nope.json"],
               summary={"train": {"steps": 4}, "adapted": {"accuracy": 0.5}})

    events = EventAccumulator(str(out / "tracking" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("loss", "lr", "tokens_per_s", "eval_loss", "peak_memory_mib", "final/adapted.accuracy"):
        assert tag in tags
    losses = [e.value for e in events.Scalars("loss")]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert losses == pytest.approx([r["loss"] for r in result.history if "loss" in r])
    assert events.Scalars("eval_loss")[-1].value == pytest.approx(result.eval_loss, rel=1e-5)
    assert {"config", "report.md"} <= {t.split("/")[0] for t in events.Tags()["tensors"]}

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'tracking' / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "4" and run.data.params["job.method.name"] == "full"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(losses)
    assert {"lr", "tokens_per_s", "eval_loss", "peak_memory_mib", "final/adapted.accuracy"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.md"]


def test_resumed_training_continues_the_same_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "tiny" / "train"
    _train(out, ["mlflow"], steps=2)
    _train(out, ["mlflow"], steps=2)   # the same folder again: same run ids, no second run
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'tracking' / 'mlflow.db').resolve()}")
    assert len(client.search_runs([client.get_experiment_by_name("tiny").experiment_id])) == 1


def test_unknown_or_missing_backends_fail_at_config_load(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.*report_to: expected trackers among .*got 'comet'"):
        from_dict(FinetuneConfig, {"train": {"report_to": ["comet"]}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package.*acculturate\[wandb\]"):
        from_dict(FinetuneConfig, {"train": {"report_to": ["tensorboard", "wandb"]}})
    assert from_dict(FinetuneConfig, {"train": {"report_to": ["tensorboard"]}}).train.report_to == ["tensorboard"]


def test_wandb_offline_run_is_written_in_the_run_folder(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "tiny" / "train"
    result = _train(out, ["wandb"], steps=2)
    (run_dir,) = (out / "tracking" / "wandb").glob("offline-run-*")
    run_id = json.loads((out / "tracking" / "runs.json").read_text())["wandb"]
    # wandb ships no reader for its offline log (`wandb sync` uploads it): the protobuf records hold
    # the metric and config names as plain UTF-8.
    # the wandb service process writes the log after finish() returns: wait for it (up to 60 s)
    deadline = time.monotonic() + 60
    while b"peak_memory_mib" not in (data := (run_dir / f"run-{run_id}.wandb").read_bytes()) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    for key in (b"loss", b"eval_loss", b"tokens_per_s", b"peak_memory_mib", b"max_steps"):
        assert key in data
    assert result.eval_loss is not None
