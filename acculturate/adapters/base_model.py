"""Which base model adapters load on: the model the user names, else the one the adapters record.

PEFT's ``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` loads the base model named by
``base_model_name_or_path`` in the adapter's ``adapter_config.json``; every acculturate command and
config that takes adapters does the same when no model is named, so an adapter trained on
``gemma3-270m`` loads on Gemma without ``--model``. The rule (:func:`pick_base_model`):

1. a model named explicitly wins (an adapter that does not fit it is refused by the loader, with a
   message naming both models);
2. else the base the adapters record: an embedded name (or one of its Hugging Face names), or a model
   directory / GGUF file that exists; adapters recording different bases cannot share one model;
3. else (no adapter records one) the embedded default, ``smollm2-135m``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from acculturate.adapters.peft_format import AdapterError, read_config_json
from acculturate.models.loading import DEFAULT_MODEL, EMBEDDED, embedded_name

BASE_KEY = "base_model_name_or_path"


def recorded_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model ``adapter_dir``'s ``adapter_config.json`` records, as :func:`acculturate.models.load`
    takes it (an embedded name, or the recorded path), or None where it records none.

    Raises:
        FileNotFoundError: no adapter there. AdapterError: the recorded base is not a string, or is
            neither an embedded model nor an existing path (models are not downloaded from a hub).
    """
    path, raw = read_config_json(adapter_dir)
    value = raw.get(BASE_KEY)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AdapterError(f"{path}: {BASE_KEY} must be a string, got {value!r}")
    name = embedded_name(value)
    if name is not None:
        return name
    if Path(value).expanduser().exists():
        return value
    raise AdapterError(
        f"{path}: {BASE_KEY} is {value!r}, which is neither an embedded model ({', '.join(sorted(EMBEDDED))}) "
        f"nor an existing model directory or .gguf file (models are not downloaded from a hub); "
        f"name the base model it was trained on with --model (or the config's model field)")


def pick_base_model(model: str | os.PathLike | None, adapter_dirs: Iterable[str | os.PathLike]) -> str:
    """The base model to load for ``adapter_dirs``.

    Args:
        model: the model the user named (``--model``, a config's ``model``); None or "" when not named.
        adapter_dirs: the adapter directories to load on it (may be empty).
    Returns:
        ``model`` when given; else the base the adapters record; else :data:`DEFAULT_MODEL`.
    Raises:
        AdapterError: no model named and the adapters record different bases (the message names each
            base with its adapters), or a recorded base that cannot be loaded (:func:`recorded_base`).
        FileNotFoundError: an adapter directory or its config is missing.
    """
    if model:
        return str(model)
    bases: dict[str, list[str]] = {}
    for directory in adapter_dirs:
        base = recorded_base(directory)
        if base is not None:
            bases.setdefault(base, []).append(str(directory))
    if not bases:
        return DEFAULT_MODEL
    if len(bases) > 1:
        listed = "; ".join(f"{base!r} ({', '.join(dirs)})" for base, dirs in bases.items())
        raise AdapterError(f"the adapters were trained on different base models: {listed}. Adapters share one "
                           "base model: pass --model (or the config's model field) to choose it, and load "
                           "only the adapters trained on it")
    return next(iter(bases))


def pick_base_model_for_specs(model: str | os.PathLike | None, specs: Iterable[str]) -> str:
    """:func:`pick_base_model` for the CLI's ``[NAME=]DIR`` adapter specs."""
    from acculturate.adapters.registry import parse_adapter_spec

    return pick_base_model(model, [parse_adapter_spec(s)[1] for s in specs])
