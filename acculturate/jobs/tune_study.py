"""What both halves of `acculturate tune` use (the search in ``tune.py``, the report in
``tune_report.py``): the config, a trial's `acculturate train` config, the data every trial shares,
the accuracy objective, and where trials and the study are stored."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from acculturate.config_loading import ConfigError, from_dict, to_dict
from acculturate.data import Example, train_test_split
from acculturate.data.sources import SHIPPED_PREFIX, read_sources, resolve_path
from acculturate.jobs.common import RunConfig
from acculturate.jobs.finetune import Datasets, FinetuneConfig, MethodConfig, split_examples, tokenize
from acculturate.train import TrainConfig
from acculturate.train.hpo import Param

log = logging.getLogger(__name__)

METRICS = {"eval_loss": "minimize", "accuracy": "maximize"}   # objective -> study direction
SEARCHABLE = ("train.", "method.")   # data and model stay fixed: trials must see the same split


def _default_search() -> dict[str, Param]:
    return {"train.lr": Param(low=1e-4, high=3e-3, log=True), "train.epochs": Param(low=1, high=2),
            "method.lora.r": Param(choices=[8, 16, 32])}


@dataclass
class ObjectiveConfig:
    """What a trial is scored on: a validation slice split off the training data."""

    metric: str = "eval_loss"
    """'eval_loss' (token-weighted, minimized) or 'accuracy' (BLEnD answers, maximized; needs QA examples)."""
    validation_fraction: float = 0.2
    """Share of the training split held apart from trial training to score trials."""
    limit: int | None = None
    """'accuracy': answer at most this many validation (and test) questions."""
    max_new_tokens: int = 24
    """'accuracy': tokens generated per answer (BLEnD answers are a few words)."""
    batch_size: int = 16
    """'accuracy': questions answered per batch."""

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {sorted(METRICS)}, got {self.metric!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected None or an integer >= 1, got {self.limit!r}")


@dataclass
class StudyConfig:
    """The Optuna study: how many trials, where it is stored, sampler and pruner."""

    n_trials: int = 8
    """Trials to finish (completed or pruned) in all, counting those of earlier runs of this study."""
    storage: str | None = None
    """SQLAlchemy URL of the study database; default ``sqlite:///<run>/study.db``."""
    seed: int = 0
    """Seed of the TPE sampler (worker k uses seed + k)."""
    startup_trials: int = 3
    """Random trials before TPE starts modelling the space (the default trial counts)."""
    pruner: str = "median"
    """'median' (stop a trial worse than the median of finished ones at the same point) or 'none'."""
    prune_after_trials: int = 2
    """Finished trials needed before any trial is pruned."""
    eval_every_examples: int = 64
    """Report the validation loss to the pruner every this many training examples (0: never)."""
    include_default: bool = True
    """Trial 0 trains the base config as it is: the reference the best trial is compared with."""
    heartbeat_s: int = 10
    """Seconds between a running trial's heartbeats; a trial silent for 3x this is taken as dead."""

    def __post_init__(self):
        for name in ("n_trials", "heartbeat_s"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        for name in ("startup_trials", "prune_after_trials", "eval_every_examples", "seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {getattr(self, name)!r}")
        if self.pruner not in ("median", "none"):
            raise ValueError(f"pruner: expected 'median' or 'none', got {self.pruner!r}")


@dataclass
class TuneConfig(RunConfig):
    """`acculturate tune CONFIG`: search ``search`` around the `acculturate train` config ``base``."""

    name: str = "tune"
    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    search: dict[str, Param] = field(default_factory=_default_search)
    """Field path -> the space searched for it, e.g. train.lr: {low: 1e-4, high: 3e-3, log: true} or method.name:
    {choices: [lora, full]} (train.* and method.* fields only)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def __post_init__(self):
        if not self.search:
            raise ConfigError("search: expected at least one field to search, e.g. train.lr: {low: 1e-4, high: 3e-3, log: true}")
        self.search = {key: _param(key, value) for key, value in self.search.items()}
        base = to_dict(self.base)
        for key, param in self.search.items():
            if not key.startswith(SEARCHABLE):
                raise ConfigError(f"search.{key}: only train.* and method.* fields can be searched (the data "
                                  f"split and the model stay fixed so every trial is scored on the same examples)")
            section, cls = (("train", TrainConfig) if key.startswith("train.") else ("method", MethodConfig))
            for value in param.values():   # only the searched section is rebuilt: the data is left alone
                try:
                    from_dict(cls, set_dotted(base, key, value)[section], section)
                except ConfigError as e:
                    raise ConfigError(f"search.{key}: the value {value!r} does not make a valid train config: {e}") from None
            if self.study.include_default and not param.contains(get_dotted(base, key)):
                raise ConfigError(f"search.{key}: the base config's value {get_dotted(base, key)!r} is outside this space; "
                                  f"widen it, or set study.include_default: false (no default trial then)")
        if self.study.eval_every_examples:
            for per_step in _examples_per_step(self):
                if self.study.eval_every_examples % per_step:
                    raise ConfigError(f"study.eval_every_examples: {self.study.eval_every_examples} is not a multiple of "
                                      f"batch_size x grad_accum = {per_step} (a value this space can take); pruning "
                                      f"compares trials after the same number of examples")
        if self.base.data.test_fraction == 0:
            raise ConfigError("base.data.test_fraction: expected > 0: the test split is the held-apart data the "
                              "best config is checked on")


def _param(key: str, value: Any) -> Param:
    if isinstance(value, Param):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"search.{key}: expected a mapping such as {{low: 1e-4, high: 3e-3, log: true}} or "
                          f"{{choices: [8, 16]}}, got {type(value).__name__} ({value!r})")
    return from_dict(Param, value, f"search.{key}")


def get_dotted(data: dict, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"search.{dotted}: no such field in an `acculturate train` config")
        node = node[part]
    return node


def set_dotted(data: dict, dotted: str, value: Any) -> dict:
    """A copy of ``data`` with ``dotted`` set to ``value`` (the field must exist)."""
    get_dotted(data, dotted)
    out = json.loads(json.dumps(data))
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return out


def _examples_per_step(config: TuneConfig) -> set[int]:
    def values(key: str, base_value: int) -> list[int]:
        p = config.search.get(key)
        if p is None:
            return [base_value]
        return list(p.choices) if p.choices is not None else list(range(int(p.low), int(p.high) + 1))

    return {b * a for b in values("train.batch_size", config.base.train.batch_size)
            for a in values("train.grad_accum", config.base.train.grad_accum)}


def trial_config(config: TuneConfig, values: dict[str, Any]) -> FinetuneConfig:
    """The `acculturate train` config of a trial: ``base`` with the trial's ``values`` set."""
    data = to_dict(config.base)
    for key, value in values.items():
        data = set_dotted(data, key, value)
    return from_dict(FinetuneConfig, data)


# ---------------------------------------------------------------------------------------------------
# data shared by every trial of a worker


@dataclass
class TuneData:
    fit: Datasets
    """Trains on fit, scored (eval loss, pruning) on validation."""
    test_examples: list[Example]
    test_features: list[dict]


def tune_data(config: TuneConfig, tokenizer, base_dir: Path | None) -> TuneData:
    """Split the base config's data as `acculturate train` would (train / test), then the train part
    again into fit / validation with the same seed and stratification."""
    data = config.base.data
    train_ex, test_ex = split_examples(read_sources(data, base_dir), data)
    fit_ex, valid_ex = train_test_split(train_ex, config.objective.validation_fraction, seed=data.seed,
                                        stratify=data.stratify)
    if config.objective.metric == "accuracy" and not question_examples(valid_ex, None):
        raise ConfigError("objective.metric: 'accuracy' needs question-answer examples (a `blend` source) in the "
                          "validation slice; none has meta['answers']. Use metric: eval_loss or add BLEnD data.")
    return TuneData(Datasets(fit_ex, valid_ex, tokenize(fit_ex, tokenizer, data), tokenize(valid_ex, tokenizer, data)),
                    test_ex, tokenize(test_ex, tokenizer, data))


def question_examples(examples: list[Example], limit: int | None) -> list[Example]:
    qa = [ex for ex in examples if "answers" in ex.meta]
    return qa[:limit] if limit else qa


def accuracy(model, tokenizer, config: TuneConfig, examples: list[Example], path: Path, progress: bool) -> dict:
    from acculturate.decode import GenerationConfig
    from acculturate.evaluate.qa import evaluate_qa

    gen = GenerationConfig(max_new_tokens=config.objective.max_new_tokens, batch_size=config.objective.batch_size,
                           stop=("\n",))
    qa = evaluate_qa(model, tokenizer, examples, gen, template=config.base.data.template,
                     system=config.base.data.system, predictions_path=path, progress=progress,
                     desc=f"answering {len(examples)} questions")
    return {"accuracy": qa.accuracy, "correct": qa.correct, "total": qa.total, "ci95": list(qa.ci95)}


def trial_dir(run: Path, trial) -> Path:
    """A retried trial reuses the directory (and the training checkpoint) of the trial it replaces:
    the ``dir`` user attribute is set when a trial first starts and copied into its retries."""
    return run / "trials" / f"{trial.user_attrs.get('dir', trial.number):04d}"


def storage_url(config: TuneConfig, run: Path) -> str:
    return config.study.storage or f"sqlite:///{(run / 'study.db').resolve()}"


def best_config_dict(config: TuneConfig, params: dict[str, Any], base_dir: Path | None) -> dict:
    """The best trial's `acculturate train` config as plain data: named ``<tune name>-best``, its
    relative data paths made absolute (best.yaml lives in the run folder, not beside the tune config)."""
    ft = trial_config(config, params)
    ft = replace(ft, name=f"{config.name}-best")
    data = to_dict(ft)
    for src in data["data"]["sources"]:
        if src["path"] != "blend" and not src["path"].startswith(SHIPPED_PREFIX):
            src["path"] = str(resolve_path(src["path"], base_dir).resolve())
    return data
