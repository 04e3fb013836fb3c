"""Where training data comes from and how a job reads it: files named in a config (examples or raw
text), or data sets shipped with acculturate; :class:`DataConfig`, the data section of the training
jobs' configs."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from acculturate.config_loading import ConfigError
from acculturate.data.blend import blend_countries, load_blend
from acculturate.data.example import Example
from acculturate.data.formats import read_examples
from acculturate.data.split import train_test_split
from acculturate.data.templates import check_template
from acculturate.data.text import Document, read_documents, text_features
from acculturate.resources import resource_path

log = logging.getLogger(__name__)

SHIPPED_PREFIX = "shipped:"
KINDS = ("examples", "text")
"""``DataConfig.kind``: instructions/chat examples, or raw text (continued pre-training)."""


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
    format: str = "auto"
    """auto | alpaca | chat | sharegpt | csv (the record shape; the container comes from the path: .parquet,
    .arrow, save_to_disk folder)."""
    columns: dict | None = None
    """{"instruction": "<column>", "input": ..., "output": ...}; chat/ShareGPT: {"conversations" or
    "messages": ..., "role": ..., "content": ..., "system": ...}."""
    roles: dict | None = None
    """Chat/ShareGPT role names -> system/user/assistant, e.g. {bot: assistant} (human -> user and gpt ->
    assistant are built in)."""
    split: str = "train"
    """A save_to_disk folder of several splits: the one to read."""
    countries: list[str] | None = None
    """Blend only: which countries (default: all)."""
    limit: int | None = None
    """Keep N examples, chosen by a seeded shuffle."""
    group: str | None = None
    """Text data: the documents' group (language, region) for per-group perplexity and group DRO (default: CSV
    column or file stem)."""

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


def read_sources(data: DataConfig, base_dir: Path | None = None) -> list[Example]:
    """Every example of ``data.sources``, in order (each source's ``limit`` seeded by ``data.seed``)."""
    examples = [ex for src in data.sources
                for ex in read_source(src, seed=data.seed, skip_invalid=data.skip_invalid, base_dir=base_dir)]
    if not examples:
        raise ConfigError("data.sources: no examples were read")
    return examples


def read_text_sources(sources: Sequence[DataSource], *, seed: int = 0, base_dir: Path | None = None) -> list[Document]:
    """Documents of every source (``columns: {text: <CSV column or JSONL key>}``, ``group``,
    ``limit`` by a seeded choice)."""
    docs: list[Document] = []
    for src in sources:
        if src.path == "blend":
            raise ValueError("data.sources: 'blend' is question data, not raw text (data.kind: text)")
        fmt = src.format if src.format in ("auto", "txt", "jsonl", "csv") else None
        if fmt is None:
            raise ValueError(f"data.sources[{src.path}].format: for text data expected auto, txt, jsonl or csv, "
                             f"got {src.format!r}")
        text_field = (src.columns or {}).get("text")
        found = read_documents(resolve_path(src.path, base_dir), format=fmt, field=text_field, group=src.group)
        if src.limit is not None and src.limit < len(found):
            found = random.Random(seed).sample(found, src.limit)
        docs.extend(found)
    return docs


def split_documents(docs: list[Document], test_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Train/held-apart split, stratified by group; the same seed gives the same split (also for
    ``acculturate tokenizer extend``, so its BPE never sees the held-apart text)."""
    if test_fraction == 0:
        return docs, []
    return train_test_split(docs, test_fraction=test_fraction, seed=seed, stratify=lambda d: d.group)


def text_datasets(data, tokenizer, max_length: int, base_dir: Path | None = None):
    """``(train docs, test docs, train features, test features)`` for ``data.kind: text``: packed
    rows of ``max_length`` tokens with a loss on every token, one group per row."""
    docs = read_text_sources(data.sources, seed=data.seed, base_dir=base_dir)
    if not docs:
        raise ValueError("data.sources: no text documents were read")
    train_docs, test_docs = split_documents(docs, data.test_fraction, data.seed)
    return (train_docs, test_docs, text_features(train_docs, tokenizer, max_length, data.text_packing),
            text_features(test_docs, tokenizer, max_length, "stream"))


@dataclass
class DataConfig:
    """Training data and how it becomes token sequences."""

    sources: list[DataSource] = field(default_factory=list)
    """The data sets to read (examples or, with kind 'text', raw text), in order."""
    template: str = "chat"
    """'chat' (the model's chat template) or 'alpaca'."""
    system: str | None = None
    """A system persona put in every prompt, e.g. a region's."""
    max_length: int = 256
    """Tokens per example (longer ones are truncated)."""
    test_fraction: float = 0.1
    """Held apart for evaluation."""
    stratify: str | None = None
    """A meta field to stratify the split by (e.g. 'country')."""
    seed: int = 0
    """Split and sampling seed."""
    skip_invalid: bool = False
    """Skip malformed rows (counted) instead of stopping."""
    kind: str = "examples"
    """'examples' (instructions/chat: loss on responses) or 'text' (raw text, continued pre-training: packed
    rows of max_length, loss on every token)."""
    text_packing: str = "stream"
    """Text: 'stream' (concatenate + cut) or 'document' (see data/text.py)."""
    group_by: str | None = None
    """Examples: a meta field naming each example's group (group DRO)."""
    loss_turns: str = "all"
    """Multi-turn chats: loss on 'all' assistant turns or the 'last' only."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if self.text_packing not in ("stream", "document"):
            raise ValueError(f"text_packing: expected 'stream' or 'document', got {self.text_packing!r}")
        if self.loss_turns not in ("all", "last"):
            raise ValueError(f"loss_turns: expected 'all' or 'last', got {self.loss_turns!r}")
        check_template(self.template)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in [0, 1), got {self.test_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length: expected at least 8 tokens, got {self.max_length}")
