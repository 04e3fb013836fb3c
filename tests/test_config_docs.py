"""Config field documentation (acculturate/config_docs.py): read from the dataclass source, shown by
`acculturate <verb> --help`."""

from dataclasses import dataclass, field

import pytest

from acculturate.config_docs import describe_config, field_docs
from acculturate.jobs.registry import JOBS


@dataclass
class Inner:
    """Nested settings."""

    depth: int = 2
    """How deep."""


@dataclass
class Sample:
    rate: float = 0.5
    """Share of rows kept.

    Longer text wraps."""
    mode: str = "a"   # 'a' or 'b'
    # what the inner part does
    inner: Inner = field(default_factory=Inner)
    bare: int = 0


def test_docstrings_and_comments_are_read_and_nested_configs_expanded():
    assert field_docs(Sample) == {"rate": "Share of rows kept. Longer text wraps.", "mode": "'a' or 'b'",
                                  "inner": "what the inner part does"}
    assert describe_config(Sample) == [
        "rate (float, default 0.5): Share of rows kept. Longer text wraps.",
        "mode (str, default 'a'): 'a' or 'b'",
        "inner: what the inner part does",
        "inner.depth (int, default 2): How deep.",
        "bare (int, default 0)",
    ]


@pytest.mark.parametrize("verb", sorted(JOBS))
def test_every_field_of_every_job_config_is_documented(verb):
    lines = describe_config(JOBS[verb].config_class())
    undocumented = {line.split(" (")[0] for line in lines if line.endswith(")") and "): " not in line}
    assert not undocumented, undocumented


def test_a_nested_section_shows_the_jobs_own_defaults():
    """`acculturate adapt --help` shows the adapt job's model and training defaults, which a config that
    leaves them out gets, not those of ModelConfig and TrainConfig alone."""
    from acculturate.jobs.adapt import AdaptConfig

    lines = describe_config(AdaptConfig)
    default = AdaptConfig()
    assert any(line.startswith(f"model.name (str, default {default.model.name!r})") for line in lines), lines
    assert any(line.startswith(f"train.lr (float, default {default.train.lr!r})") for line in lines)
    assert any(line.startswith(f"eval.batch_size (int, default {default.eval.batch_size!r})") for line in lines)
