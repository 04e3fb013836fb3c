from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acculturate.config_loading import ConfigError, from_dict, load_yaml, to_dict
from acculturate.jobs.adapt import AdaptConfig
from acculturate.jobs.finetune import FinetuneConfig
from acculturate.resources import ROOT

CONFIGS = sorted((ROOT.parent / "configs").rglob("*.yaml"))


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr: expected a number > 0, got {self.lr}")


@dataclass
class Outer:
    name: str = "x"
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_nested_values_and_yaml_number_strings():
    cfg = from_dict(Outer, {"name": "a", "tags": ["p", "q"], "inner": {"lr": "2e-4", "steps": 3}})
    assert cfg.inner.lr == 2e-4 and cfg.inner.steps == 3 and cfg.tags == ["p", "q"]
    assert to_dict(cfg) == {"name": "a", "tags": ["p", "q"], "inner": {"lr": 2e-4, "steps": 3}}


@pytest.mark.parametrize("data, message", [
    ({"inner": {"lr": "fast"}}, "inner.lr: expected a number, got str ('fast')"),
    ({"inner": {"steps": 1.5}}, "inner.steps: expected"),
    ({"inner": {"lrr": 1}}, "inner.lrr: unknown field"),
    ({"tags": "p"}, "tags: expected a list"),
    ({"inner": {"lr": -1}}, "inner: lr: expected a number > 0"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert message in str(e.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(AdaptConfig, bad)
    bad.write_text("region: Atlantis\n")   # any name, but a region that is no preset brings its questions
    with pytest.raises(ConfigError, match="questions: region 'Atlantis' is not a shipped preset"):
        load_yaml(AdaptConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(AdaptConfig, tmp_path / "missing.yaml")


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: n\n")
    cfg = load_yaml(AdaptConfig, path, ["train.epochs=3", "region=Mexico", "method.lora.r=4"])
    assert cfg.train.epochs == 3 and cfg.region == "Mexico" and cfg.method.lora.r == 4
    with pytest.raises(ConfigError, match="expected key=value"):
        load_yaml(AdaptConfig, path, ["train.epochs"])


def config_classes() -> dict:
    """The config class behind each folder of shipped configs (configs/<task>/<model>_<method>.yaml),
    as the jobs table (jobs/registry.py) names it."""
    from acculturate.jobs.registry import JOBS

    return {job.configs_dir: job.config_class() for job in JOBS.values() if job.configs_dir}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(ROOT.parent).as_posix() for p in CONFIGS])
def test_every_shipped_config_loads(path):
    classes = config_classes()
    assert path.parent.name in classes, f"no config class registered for configs/{path.parent.name}/"
    load_yaml(classes[path.parent.name], path)


def test_configs_are_shipped():
    assert any(Path(p).parent.name == "adapt" for p in CONFIGS)
    assert any(Path(p).parent.name == "train" for p in CONFIGS)


def test_overrides_index_lists():
    from acculturate.config_loading import apply_overrides

    data = {"tasks": [{"name": "a", "limit": 20}, {"name": "b"}], "systems": [{"name": "s", "x": {"y": [1, 2]}}]}
    apply_overrides(data, ["tasks[0].limit=5", "tasks[-1].limit=null", "systems[0].x.y[1]=7",
                           "systems[0].x.z.w=1", "tasks[1].countries=[UK, Mexico]"])
    assert data["tasks"] == [{"name": "a", "limit": 5}, {"name": "b", "limit": None, "countries": ["UK", "Mexico"]}]
    assert data["systems"][0]["x"] == {"y": [1, 7], "z": {"w": 1}}


@pytest.mark.parametrize("override, message", [
    ("tasks[2].limit=5", r"index \[2\] is out of range: tasks has 2 items \(valid: 0..1"),
    ("tasks[-3].limit=5", r"index \[-3\] is out of range"),
    ("tasks[0][1]=5", r"tasks\[0\] is not a list \(it is dict\)"),
    ("name[0]=x", r"name is not a list \(it is str\)"),
    ("tasks.limit=5", r"tasks is not a mapping, so it has no field 'limit'"),
    ("missing[0].limit=5", r"missing is not set in the config, so it has no items to index"),
    ("tasks[x].limit=5", r"cannot read key part 'tasks\[x\]'"),
    ("tasks[0]..limit=5", r"cannot read key part ''"),
])
def test_list_override_errors_are_clear(override, message):
    from acculturate.config_loading import apply_overrides

    with pytest.raises(ConfigError, match=message):
        apply_overrides({"name": "n", "tasks": [{"name": "a"}, {"name": "b"}]}, [override])


def test_list_override_reaches_the_typed_config(tmp_path):
    from acculturate.jobs.system_eval import EvalConfig

    path = tmp_path / "e.yaml"
    path.write_text("tasks:\n  - {name: b, kind: blend, limit: 20}\n  - {name: n, kind: nusax}\n")
    cfg = load_yaml(EvalConfig, path, ["tasks[0].limit=5", "tasks[1].source=sundanese"])
    assert cfg.tasks[0].limit == 5 and cfg.tasks[1].source == "sundanese"
    with pytest.raises(ConfigError, match=r"e.yaml: tasks\[1\].limit: expected"):
        load_yaml(EvalConfig, path, ["tasks[1].limit=many"])


def test_a_partial_mapping_keeps_the_jobs_own_defaults_for_the_rest():
    """`model: {dtype: bf16}` in a user's adapt YAML changes the dtype of the job's default model; it
    does not fall back on ModelConfig's own default model (nor `train: {lr: ...}` on TrainConfig's epochs)."""
    config = from_dict(AdaptConfig, {"model": {"dtype": "fp32"}, "train": {"lr": 5e-4},
                                     "retrieval": {"chunk": {"max_chars": 500}}})
    default = AdaptConfig()
    assert config.model.name == default.model.name and config.model.dtype == "fp32"
    assert (config.train.lr, config.train.epochs, config.train.batch_size, config.train.min_steps) == \
        (5e-4, default.train.epochs, default.train.batch_size, default.train.min_steps)
    assert config.retrieval.chunk.max_chars == 500
    assert config.retrieval.chunk.overlap_chars == default.retrieval.chunk.overlap_chars
    assert config.retrieval.k == default.retrieval.k
