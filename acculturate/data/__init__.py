"""Data: the canonical Example, file formats, prompt templates, tokenization with response-only
labels, splits, and the BLEnD cultural QA set."""

from acculturate.data.blend import (
    BLEND_PROMPT,
    blend_countries,
    is_correct,
    load_blend,
    normalize_answer,
)
from acculturate.data.errors import DataError
from acculturate.data.example import Example
from acculturate.data.formats import read_examples, write_examples
from acculturate.data.split import train_test_split
from acculturate.data.templates import ALPACA_PREAMBLE, TEMPLATES, render_prompt, render_segments, with_system
from acculturate.data.tokenize import IGNORE_INDEX, tokenize_example, tokenize_examples

__all__ = [
    "ALPACA_PREAMBLE",
    "BLEND_PROMPT",
    "DataError",
    "Example",
    "IGNORE_INDEX",
    "TEMPLATES",
    "blend_countries",
    "is_correct",
    "load_blend",
    "normalize_answer",
    "read_examples",
    "render_prompt",
    "render_segments",
    "tokenize_example",
    "tokenize_examples",
    "train_test_split",
    "with_system",
]
