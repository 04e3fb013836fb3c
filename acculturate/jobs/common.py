"""What every job shares: the config header (``name``, ``output_dir``, ``model``) and the run folder.

A job's config subclasses :class:`RunConfig` (a run folder) or :class:`JobConfig` (a run folder and
one model), and its ``run_*`` function starts with ``out = open_run(config, overwrite)``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from acculturate.config_loading import ConfigError, to_dict
from acculturate.io import write_json
from acculturate.models import DEFAULT_MODEL


@dataclass
class ModelConfig:
    """Which model to adapt and where it runs."""

    name: str = DEFAULT_MODEL
    """An embedded model ('smollm2-135m', 'gemma3-270m'), an HF model directory or a .gguf file."""
    device: str | None = None
    """Where it runs; default: a GPU if present, else the CPU."""
    dtype: str | None = None
    """Weights dtype; default: bf16 on a GPU that has it, else fp32."""


@dataclass
class AdaptedModelConfig(ModelConfig):
    """The base model under an adapter: unless named, the one the adapter was trained on."""

    name: str | None = None
    """'smollm2-135m', 'gemma3-270m' (embedded), an HF model directory or a .gguf file; default (null):
    the base model the adapter records (its adapter_config.json), else smollm2-135m."""


def resolve_model_name(model: ModelConfig, adapters) -> str:
    """Fill in an unset ``model.name`` with the base the ``adapters`` (directories; None entries are
    skipped) record, else the embedded default, and return it
    (:func:`acculturate.adapters.base_model.pick_base_model`); ConfigError naming the field."""
    from acculturate.adapters import AdapterError
    from acculturate.adapters.base_model import pick_base_model

    try:
        model.name = pick_base_model(model.name, [a for a in adapters if a])
    except (AdapterError, FileNotFoundError) as e:
        raise ConfigError(f"model.name: {e}") from None
    return model.name


@dataclass
class RunConfig:
    """The header of a job config that writes a run folder."""

    name: str = "run"
    """The run's name: its folder under ``output_dir`` (a rerun of the same config continues it)."""
    output_dir: str = "runs"
    """Where run folders are written."""


@dataclass
class JobConfig(RunConfig):
    """The header of a job config that writes a run folder and works on one model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model the job loads."""


def run_dir(output_dir: str, name: str) -> Path:
    return Path(output_dir) / name


def check_run_dir(out: Path, config, overwrite: bool) -> None:
    """A run directory holds one configuration. Re-running the same config continues it; a different
    config in the same directory is refused unless ``overwrite`` (which deletes the old run), so no
    finished run is mixed with another's outputs."""
    saved = out / "config.json"
    if not saved.exists():
        return
    if overwrite:
        shutil.rmtree(out)
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(to_dict(config)))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{out} already holds a run with a different configuration (differs in: "
                          f"{', '.join(changed)}). Use another name, or --restart to replace it.")


def open_run(config: RunConfig, overwrite: bool = False) -> Path:
    """The run folder ``output_dir/name``, checked to hold this config's run (or none; ``overwrite``
    deletes another's), with the config saved as ``config.json``. Returns the folder."""
    out = run_dir(config.output_dir, config.name)
    check_run_dir(out, config, overwrite)
    write_json(out / "config.json", to_dict(config))
    return out
