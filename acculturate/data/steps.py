"""Pre-processing steps as one registry: each reads examples, returns the examples to keep (or the
augmented set) and a report, and :func:`run_step` does the file work around it: read any supported
format, write chat JSONL atomically, a ``<out>.report.json`` beside it, and a before/after summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from acculturate.data.balance import BalanceConfig, balance, group_value
from acculturate.data.counterfactual import CounterfactualConfig, counterfactual
from acculturate.data.dedupe import DedupeConfig, dedupe
from acculturate.data.errors import DataError
from acculturate.data.example import Example
from acculturate.data.filters import LengthFilterConfig, blocklist_filter, length_filter, load_blocklist
from acculturate.data.formats import read_examples, write_examples
from acculturate.data.langid import LangIdConfig, langid_filter
from acculturate.data.summary import format_comparison, summarize
from acculturate.io import write_json


@dataclass
class BlocklistFilterConfig:
    """Drop examples matching blocklists (shipped region names or YAML files) or extra patterns."""

    lists: tuple[str, ...] = ("default",)
    """Blocklists: shipped region names (e.g. 'uk', 'indonesia', 'default') or YAML files."""
    words: tuple[str, ...] = ()
    """Extra words or phrases to block."""
    patterns: tuple[str, ...] = ()
    """Extra regular expressions to block."""
    part: str = "all"
    """What is checked: 'all' messages, the 'prompt' turns or the 'response'."""


def _blocklist(examples, config: BlocklistFilterConfig):
    blocklist = load_blocklist(list(config.lists), list(config.words), list(config.patterns))
    return blocklist_filter(examples, blocklist, config.part)


@dataclass
class Step:
    config: type
    run: Callable[[list[Example], Any], tuple[list[Example], Any]]
    help: str


STEPS: dict[str, Step] = {
    "dedupe": Step(DedupeConfig, dedupe, "drop exact and near duplicates (MinHash LSH)"),
    "length": Step(LengthFilterConfig, length_filter, "keep examples within word/character bounds"),
    "blocklist": Step(BlocklistFilterConfig, _blocklist, "drop examples matching blocklists or regexes"),
    "langid": Step(LangIdConfig, langid_filter, "keep examples in the given languages (py3langid)"),
    "balance": Step(BalanceConfig, balance, "down-sample, up-sample or weight to a target group distribution"),
    "counterfactual": Step(CounterfactualConfig, counterfactual, "add copies with gendered/group terms swapped"),
}


@dataclass(frozen=True)
class Generator:
    """A data step that generates with a model (`acculturate.augment`), run by ``jobs/data.py``.
    Named as 'module:attribute' so that listing the steps (the CLI's help) loads no model code."""

    config: str
    run: str
    help: str

    def config_class(self) -> type:
        import importlib

        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)


GENERATORS: dict[str, Generator] = {
    "backtranslate": Generator("acculturate.augment:BackTranslateConfig", "acculturate.augment:backtranslate",
                               "paraphrase prompts by round-trip translation through a pivot language (model)"),
    "self-instruct": Generator("acculturate.augment:SelfInstructConfig", "acculturate.augment:self_instruct",
                               "generate new instruction/answer pairs from seed tasks (Self-Instruct, model)"),
}
"""The model-driven steps; with :data:`STEPS`, the one catalogue of data steps (`acculturate data`)."""


def step_names() -> list[str]:
    return list(STEPS) + list(GENERATORS)


def step_help(name: str) -> str:
    return STEPS[name].help if name in STEPS else GENERATORS[name].help


def step_config_class(name: str) -> type:
    from acculturate.config_loading import ConfigError

    if name in STEPS:
        return STEPS[name].config
    if name in GENERATORS:
        return GENERATORS[name].config_class()
    raise ConfigError(f"step: expected one of {step_names()}, got {name!r}")


def read_input(path: str | os.PathLike, format: str = "auto", skip_invalid: bool = False,
               columns: dict[str, str] | None = None) -> list[Example]:
    """Read a step's input: any format ``read_examples`` reads (Alpaca, chat, CSV with ``columns``)."""
    errors: list[DataError] = []
    examples = read_examples(path, format=format, columns=columns, skip_invalid=skip_invalid, errors=errors)
    if errors:
        print(f"{path}: skipped {len(errors)} invalid rows; first: {errors[0]}")
    return examples


def run_step(name: str, config, input_path: str | os.PathLike, output_path: str | os.PathLike,
             group: str | None = None, format: str = "auto", skip_invalid: bool = False,
             quiet: bool = False, columns: dict[str, str] | None = None) -> dict:
    """Run step ``name`` on a file.

    Args:
        name: a key of :data:`STEPS`.
        config: that step's config dataclass.
        input_path, output_path: the data in (any supported format) and out (chat JSONL, written
            atomically); ``<output>.report.json`` gets the summary and the step's report (which rows
            were removed and why).
        group: a field whose balance the summary reports (default: the balance step's group).
        format, skip_invalid, columns: how the input is read (see ``read_examples``).
        quiet: do not print the summary.

    Returns:
        ``{"step", "input", "output", "before", "after", "report"}``.
    """
    if name not in STEPS:
        raise ValueError(f"step: expected one of {sorted(STEPS)}, got {name!r}")
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise ValueError(f"{name}: the output {output_path} must differ from the input (the input is kept as it was)")
    examples = read_input(input_path, format, skip_invalid, columns)
    group = group or getattr(config, "group", None)
    group_of = (lambda ex: group_value(ex, group)) if group else None
    before = summarize(examples, group, group_of)
    out, report = STEPS[name].run(examples, config)
    if not out:
        raise ValueError(f"{name}: no example is left of {len(examples)}; output {output_path} not written")
    write_examples(output_path, out)
    after = summarize(out, group, group_of)
    result = {"step": name, "input": str(input_path), "output": str(output_path), "before": before,
              "after": after, "report": report}
    write_json(str(output_path) + ".report.json", result)
    if not quiet:
        print(format_comparison(name, before, after))
    return result
