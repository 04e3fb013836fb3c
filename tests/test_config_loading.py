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
    bad.write_text("region: Atlantis\n")
    with pytest.raises(ConfigError, match="region: expected one of the BLEnD countries"):
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
    """The config class behind each folder of shipped configs (configs/<task>/<model>_<method>.yaml)."""
    from acculturate.jobs.evaluate import EvalConfig
    from acculturate.jobs.prompt_eval import PromptEvalConfig

    from acculturate.jobs.data import DataPipelineConfig

    classes = {"adapt": AdaptConfig, "train": FinetuneConfig, "eval": EvalConfig, "prompt_eval": PromptEvalConfig,
               "data": DataPipelineConfig}
    try:
        from acculturate.jobs.compare import CompareConfig
        classes["compare"] = CompareConfig
    except ImportError:
        pass
    return classes


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(ROOT.parent).as_posix() for p in CONFIGS])
def test_every_shipped_config_loads(path):
    classes = config_classes()
    assert path.parent.name in classes, f"no config class registered for configs/{path.parent.name}/"
    load_yaml(classes[path.parent.name], path)


def test_configs_are_shipped():
    assert any(Path(p).parent.name == "adapt" for p in CONFIGS)
    assert any(Path(p).parent.name == "train" for p in CONFIGS)
