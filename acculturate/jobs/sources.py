"""Where training examples come from: files named in a config, or data sets shipped with acculturate."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from acculturate.data import Example, blend_countries, load_blend, read_examples
from acculturate.resources import resource_path

log = logging.getLogger(__name__)

SHIPPED_PREFIX = "shipped:"


@dataclass
class DataSource:
    """One data set to read.

    ``path`` is a file (Alpaca JSON/JSONL, chat or ShareGPT JSON/JSONL, CSV, Parquet, Arrow) or a
    ``datasets`` folder written with ``save_to_disk``, ``shipped:<file under resources/data>``
    (e.g. ``shipped:instructions/instruction-data.json``), or ``blend`` for the shipped BLEnD questions.
    For raw text (``data.kind: text``): a ``.txt``, ``.jsonl`` or ``.csv`` file, with
    ``columns: {text: <JSONL key or CSV column>}`` (see :mod:`acculturate.data.text`).
    """

    path: str
    format: str = "auto"                 # auto | alpaca | chat | sharegpt | csv (the record shape; the
                                         # container comes from the path: .parquet, .arrow, save_to_disk folder)
    columns: dict | None = None          # {"instruction": "<column>", "input": ..., "output": ...}; chat/ShareGPT:
                                         # {"conversations" or "messages": ..., "role": ..., "content": ..., "system": ...}
    roles: dict | None = None            # chat/ShareGPT role names -> system/user/assistant, e.g. {bot: assistant}
                                         # (human -> user and gpt -> assistant are built in)
    split: str = "train"                 # a save_to_disk folder of several splits: the one to read
    countries: list[str] | None = None   # blend only: which countries (default: all)
    limit: int | None = None             # keep N examples, chosen by a seeded shuffle
    group: str | None = None             # text data: the documents' group (language, region) for
                                         # per-group perplexity and group DRO (default: CSV column or file stem)

    def __post_init__(self):
        if not self.path:
            raise ValueError("path: expected a file, 'shipped:<file>' or 'blend'")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: expected a positive integer, got {self.limit}")
        if self.countries:
            unknown = sorted(set(self.countries) - set(blend_countries()))
            if unknown:
                raise ValueError(f"countries: unknown {unknown}; available: {blend_countries()}")


def resolve_path(path: str, base_dir: Path | None = None) -> Path:
    """``shipped:x`` -> the packaged file; a relative path -> relative to ``base_dir`` (the config's folder)
    when it exists there, else to the working directory."""
    if path.startswith(SHIPPED_PREFIX):
        return resource_path("data/" + path[len(SHIPPED_PREFIX):])
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        return base_dir / p
    return p


def read_source(source: DataSource, *, seed: int = 0, skip_invalid: bool = False,
                base_dir: Path | None = None) -> list[Example]:
    """Read one source into examples, honouring ``limit`` with a seeded (reproducible) choice."""
    if source.path == "blend":
        examples = load_blend(countries=source.countries)
    else:
        path = resolve_path(source.path, base_dir)
        errors: list = []
        examples = read_examples(path, format=source.format, columns=source.columns,
                                 skip_invalid=skip_invalid, errors=errors, roles=source.roles, split=source.split)
        for error in errors:
            log.warning("skipped: %s", error)
        if errors:
            print(f"{path}: skipped {len(errors)} invalid rows, kept {len(examples)}")
        for ex in examples:
            ex.meta.setdefault("source", str(source.path))
    if source.limit is not None and source.limit < len(examples):
        rng = random.Random(seed)
        examples = rng.sample(examples, source.limit)
    return examples
