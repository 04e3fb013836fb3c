"""The adapt job's config: the dataclass defaults are the shipped YAML's."""

from acculturate.config_loading import load_config, to_dict
from acculturate.jobs.adapt import AdaptConfig
from acculturate.jobs.registry import JOBS


def test_the_shipped_yaml_and_the_defaults_are_the_same_job():
    """A user's own YAML (region, documents, questions) falls back on the dataclass defaults, so they
    must be the measured job's settings, not older ones."""
    shipped = JOBS["adapt"].default_config
    assert shipped is not None and shipped.is_file()
    assert to_dict(load_config(AdaptConfig, shipped, [])) == to_dict(AdaptConfig())
