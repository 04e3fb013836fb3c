"""Report training runs to experiment trackers: TensorBoard, MLflow, Weights & Biases (``report_to``).

All three work offline, inside the run folder (``<out_dir>/tracking/``):
- ``tensorboard``: event files in ``tracking/tensorboard`` (``tensorboard --logdir <run>``).
- ``mlflow``: a SQLite store ``tracking/mlflow.db`` with artifacts in ``tracking/mlflow-artifacts``
  (``mlflow ui --backend-store-uri sqlite:///<run>/train/tracking/mlflow.db``). MLflow 3 refuses its
  plain-file store by default (maintenance mode); SQLite is its local store now, still one file, offline.
- ``wandb``: an offline run in ``tracking/wandb`` (``wandb sync`` uploads it later).

Each backend is an optional extra, imported only when asked for; ``check_backends`` runs when the
config loads, so a missing package fails there, not after the model has loaded. The ids of the runs
are kept in ``tracking/runs.json``: a resumed training and the job's final report (``log_report``)
go to the same runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

# name -> (module that must be importable, the extra that installs it)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}


def check_backends(names, field: str = "report_to") -> None:
    """Raise ValueError naming ``field`` for an unknown backend or one whose package is missing."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{field}: expected a list of trackers among {sorted(BACKENDS)}, got {names!r}")
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"{field}: expected trackers among {sorted(BACKENDS)}, got {name!r}")
        module, extra = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"{field}: {name!r} needs the {module} package, which is not installed "
                             f"(pip install 'acculturate[{extra}]')")


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step"}


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"train.lr": "0.0002", ...}`` (trackers take flat string parameters)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)
    return out


class _TensorBoard:
    def __init__(self, root: Path, name: str, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))
        self.run_id = run_id or name

    def params(self, config: dict) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in _flat(config).items())
        self.writer.add_text("config", "| field | value |\n|---|---|\n" + table)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def artifact(self, path: Path) -> None:
        if path.suffix in (".md", ".json", ".txt"):
            self.writer.add_text(path.name, path.read_text(encoding="utf-8"))

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, root: Path, name: str, run_id: str | None):
        from mlflow.tracking import MlflowClient

        root = root.resolve()
        self.client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        if run_id is None:
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(
                name, artifact_location=(root / "mlflow-artifacts").as_uri())
            run_id = self.client.create_run(experiment, run_name=name).info.run_id
        self.run_id = run_id

    def params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in _flat(config).items()]
        existing = self.client.get_run(self.run_id).data.params
        params = [p for p in params if p.key not in existing]   # a resumed run: parameters are write-once
        for i in range(0, len(params), 100):   # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Wandb:
    def __init__(self, root: Path, name: str, run_id: str | None):
        import wandb

        (root / "wandb").mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=str(root), project="acculturate", name=name,
                              id=run_id, resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def params(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def artifact(self, path: Path) -> None:
        art = self.wandb.Artifact(path.stem.replace(".", "-") or "report", type="report")
        art.add_file(str(path))
        self.run.log_artifact(art)

    def close(self) -> None:
        self.run.finish()


_CLASSES = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}


class Tracker:
    """The trackers of one training run, written under ``out_dir/tracking``.

    Args:
        out_dir: the training output folder (``<run>/train``); None: nothing is tracked.
        report_to: backend names (see ``BACKENDS``); empty: a tracker that does nothing.
        name: the run's name in the trackers (default: the run folder's name).
    """

    def __init__(self, out_dir: str | Path | None, report_to, name: str | None = None):
        self.backends: dict = {}
        if not report_to or out_dir is None:
            return
        self.root = Path(out_dir) / "tracking"
        check_backends(report_to)
        name = name or _run_name(Path(out_dir))
        ids_path = self.root / "runs.json"
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        self.root.mkdir(parents=True, exist_ok=True)
        for backend in report_to:
            self.backends[backend] = _CLASSES[backend](self.root, name, ids.get(backend))
        ids.update({k: b.run_id for k, b in self.backends.items()})
        ids_path.write_text(json.dumps(ids, indent=1))

    def params(self, config: dict) -> None:
        """Log the configuration (nested dicts are flattened to dotted keys)."""
        for backend in self.backends.values():
            backend.params(config)

    def metrics(self, row: dict, step: int | None = None) -> None:
        """Log the numeric fields of a metrics row at ``step`` (default: ``row["step"]``)."""
        values = _numbers(row)
        step = int(row.get("step", 0) if step is None else step)
        if values:
            for backend in self.backends.values():
                backend.metrics(values, step)

    def artifacts(self, paths) -> None:
        """Attach files (the final report, metrics.json); missing ones are skipped."""
        for path in map(Path, paths):
            if path.is_file():
                for backend in self.backends.values():
                    backend.artifact(path)

    def close(self) -> None:
        for name, backend in self.backends.items():
            try:
                backend.close()
            except Exception as e:   # a tracker failing to flush must not lose the trained run
                log.warning("tracker %s did not close cleanly: %s", name, e)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_name(out_dir: Path) -> str:
    """``runs/adapt-uk/train`` -> ``adapt-uk``: the job's run folder names the run."""
    out_dir = out_dir.resolve()
    return out_dir.parent.name if out_dir.name == "train" else out_dir.name


def log_report(out_dir: str | Path, report_to, files, summary: dict | None = None) -> None:
    """After a job wrote its report: attach ``files`` (report.md, metrics.json) and log the numbers
    of ``summary`` (flattened: ``adapted.accuracy``...) to the runs its training opened in ``out_dir``."""
    if not report_to:
        return
    with Tracker(out_dir, report_to) as tracker:
        if summary:
            step = (summary.get("train") or {}).get("steps", 0) if isinstance(summary.get("train"), dict) else 0
            tracker.metrics({f"final/{k}": v for k, v in _flat_numbers(summary).items()}, step=step)
        tracker.artifacts(files)


def _flat_numbers(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out
