"""`acculturate export --format vllm`: a folder vLLM serves as it is; `--format gguf`: one GGUF file
(base + adapter merged) for llama.cpp, Ollama and LM Studio, with an Ollama ``Modelfile`` (see
``export_gguf`` below).

Two layouts (``vllm serve`` reads both without conversion):

- **merged** (``--merge``, or a model with no adapter): ``model/`` is a plain Hugging Face model
  directory (``config.json``, ``model.safetensors``, tokenizer files), the LoRA update fused into the
  weights: ``vllm serve OUT/model``.
- **multi-LoRA** (the default with ``--adapter``): ``base/`` is the base model's HF directory and
  ``adapters/<name>/`` one PEFT-format LoRA adapter each (``adapter_config.json`` +
  ``adapter_model.safetensors``), served side by side from one copy of the base with
  ``vllm serve OUT/base --enable-lora --max-lora-rank R --lora-modules name=OUT/adapters/name ...``;
  a request picks an adapter by its name in the ``model`` field (vLLM's OpenAI-compatible API).

Both get ``serve.sh`` (the exact command) and ``README.md``. Prompt-tuning adapters cannot be
served by vLLM (they are not LoRA) and are refused; QLoRA adapters are served as LoRA over the full
precision base (merge them with ``--merge --qlora`` to get exactly the weights they trained against).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import torch

from acculturate.adapters import (AdapterError, export_merged, load_adapter, merge_lora, read_adapter_config)
from acculturate.adapters.base_model import pick_base_model
from acculturate.adapters.peft_format import CONFIG_FILE, WEIGHTS_FILE, read_adapter_weights
from acculturate.adapters.registry import parse_adapter_spec
from acculturate.io import atomic_dir, write_text

# vLLM's --max-lora-rank accepts these values (vllm/config/lora.py); the default is 16.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _load_fp32(model: str):
    from acculturate.models import load

    return load(model, device="cpu", dtype="fp32")   # merge in fp32: the merge itself adds no rounding


def _save_model(model, tokenizer, out: Path, dtype: torch.dtype) -> Path:
    model.to(dtype)
    return export_merged(model, tokenizer, out)   # no LoRA left: saves the model and tokenizer as they are


def _max_lora_rank(ranks: list[int]) -> int:
    need = max(ranks)
    return next((r for r in VLLM_LORA_RANKS if r >= need), need)


def export_vllm(model: str | None, adapters: list[str], output: str | Path, *, merge: bool = False,
                quantized_base: bool = False, dtype: str = "bf16") -> dict:
    """Write a vLLM-ready folder; returns ``{"layout", "command", "files"}``.

    Args:
        model: the base model (anything :func:`acculturate.models.load` takes), or a fine-tuned
            full/head model directory; None: the base the adapters record, else the embedded default.
        adapters: ``[NAME=]DIR`` LoRA adapter specs (PEFT format, ours or PEFT's).
        output: the folder to write (replaced whole).
        merge: fuse the (single) adapter into the weights instead of serving it as a LoRA.
        quantized_base: with ``merge``: the adapter was trained with QLoRA; merge into the
            NF4-rounded weights it trained against.
        dtype: weights dtype of the exported model: 'bf16' (vLLM's usual), 'fp16' or 'fp32'.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    specs = [parse_adapter_spec(s) for s in adapters]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names must differ, got {names}")
    configs = {}
    for name, directory in specs:
        raw_path = Path(directory) / "adapter_config.json"
        raw = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
        if raw.get("peft_type") not in (None, "LORA"):
            raise AdapterError(f"{raw_path}: peft_type {raw.get('peft_type')!r}: vLLM serves LoRA adapters only")
        configs[name] = read_adapter_config(directory)[0]   # validates the file (names the field)
    if merge and len(specs) != 1:
        raise ValueError(f"--merge fuses exactly one adapter into the weights, got {len(specs)}")
    model = pick_base_model(model, [d for _, d in specs])
    output = Path(output)
    with atomic_dir(output) as tmp:
        loaded = _load_fp32(model)
        if merge or not specs:
            if specs:
                load_adapter(loaded.model, specs[0][1])
                if quantized_base:
                    from acculturate.adapters.qlora import quantize_lora_bases

                    quantize_lora_bases(loaded.model)
                merge_lora(loaded.model)
            _save_model(loaded.model, loaded.tokenizer, tmp / "model", DTYPES[dtype])
            layout, served = "merged", output / "model"
            command = ["vllm", "serve", str(served), "--served-model-name", specs[0][0] if specs else "model",
                       "--dtype", {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]]
        else:
            for name, directory in specs:   # each adapter must fit this base before it is exported
                check = _load_fp32(model)
                load_adapter(check.model, directory)
                del check
                target = tmp / "adapters" / name
                target.mkdir(parents=True)
                shutil.copy2(Path(directory) / CONFIG_FILE, target / CONFIG_FILE)
                _copy_weights(Path(directory), target)
            _save_model(loaded.model, loaded.tokenizer, tmp / "base", DTYPES[dtype])
            layout, served = "multi-lora", output / "base"
            command = ["vllm", "serve", str(served), "--dtype",
                       {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype], "--enable-lora",
                       "--max-lora-rank", str(_max_lora_rank([c.r for c in configs.values()])),
                       "--max-loras", str(len(specs)), "--lora-modules",
                       *[f"{name}={output / 'adapters' / name}" for name, _ in specs]]
        cmd = " ".join(shlex.quote(c) for c in command)
        write_text(tmp / "serve.sh", f"#!/usr/bin/env bash\n# Serve this export with vLLM (pip install vllm).\n"
                                     f"exec {cmd} \"$@\"\n")
        (tmp / "serve.sh").chmod(0o755)
        write_text(tmp / "README.md", _readme(layout, cmd, names))
    return {"layout": layout, "command": cmd, "files": sorted(str(p.relative_to(output)) for p in output.rglob("*")
                                                              if p.is_file())}


def _copy_weights(adapter_dir: Path, target: Path) -> None:
    """The adapter's weights as ``adapter_model.safetensors``: copied as they are, or converted from
    a legacy ``adapter_model.bin`` (which the loader also accepts), so every export has the same layout."""
    source, tensors = read_adapter_weights(adapter_dir)
    if source.name == WEIGHTS_FILE:
        shutil.copy2(source, target / WEIGHTS_FILE)
        return
    from safetensors.torch import save_file

    save_file({k: t.contiguous() for k, t in tensors.items()}, str(target / WEIGHTS_FILE), metadata={"format": "pt"})


def _readme(layout: str, cmd: str, names: list[str]) -> str:
    lines = ["# vLLM export (written by `acculturate export --format vllm`)", "", "Serve it:", "",
             "```bash", cmd, "```", ""]
    if layout == "multi-lora":
        lines += [f"`base/` is the base model; `adapters/` holds {len(names)} LoRA adapter(s) in PEFT format: "
                  + ", ".join(f"`{n}`" for n in names) + ". Pick one per request by name:", "",
                  "```bash",
                  "curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\",
                  f"  -d '{{\"model\": \"{names[0]}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
                  "```", "", "Requests naming the base model's path get the base model without an adapter.", ""]
    else:
        lines += ["`model/` is a plain Hugging Face model directory (the adapter, if any, merged into the weights).",
                  ""]
    return "\n".join(lines)


# --- GGUF (llama.cpp, Ollama, LM Studio) ------------------------------------------------------


def export_gguf(model: str | None, adapters: list[str], output: str | Path, *, quant: str = "f16",
                quantized_base: bool = False, name: str | None = None) -> dict:
    """Write ``OUT/<name>.gguf`` (the base with the adapter merged in, new vocabulary rows included,
    tokenizer and chat template inside) and an Ollama ``Modelfile`` beside it.

    Args:
        model: the base model (anything :func:`acculturate.models.load` takes; a vocabulary-extended
            model directory brings its added tokens), or a fine-tuned full/head model directory;
            None: the base the adapter records, else the embedded default.
        adapters: at most one ``[NAME=]DIR`` LoRA adapter (merged into the weights).
        output: the folder to write (replaced whole).
        quant: ``f16``, ``q8_0``, ``q4_0`` or ``q4_1`` (:mod:`acculturate.models.gguf_export`).
        quantized_base: the adapter was trained with QLoRA: merge into the NF4-rounded weights.
        name: the file's and Ollama model's name (default: the adapter's name, else ``model``).

    Returns:
        ``{"path", "quant", "rounding", "bytes", "modelfile", "command"}`` (``rounding``: stochastic
        when the adapter was merged into a base already on the q4 grid, see
        :mod:`acculturate.models.gguf_export`).
    """
    from acculturate.models.gguf_export import QUANTS, base_pre_tokenizer, check_architecture, on_grid, write_gguf

    if quant not in QUANTS:
        raise ValueError(f"quant: expected one of {QUANTS}, got {quant!r}")
    if len(adapters) > 1:
        raise ValueError(f"--format gguf merges one adapter into the weights, got {len(adapters)}")
    specs = [parse_adapter_spec(s) for s in adapters]
    name = name or (specs[0][0] if specs else "model")
    model = pick_base_model(model, [d for _, d in specs])
    output = Path(output)
    with atomic_dir(output) as tmp:
        loaded = _load_fp32(model)
        arch = check_architecture(loaded.model.config, model)   # before the merge: a clear error, early
        rounding = "nearest"
        if specs:
            # Nearest rounding would put a merged delta back on the base's own 4-bit values and export
            # the base: round stochastically when the base already sits on the target grid.
            first = next(v for k, v in loaded.model.state_dict().items() if k.endswith("q_proj.weight"))
            if on_grid(first.detach().float().cpu().numpy(), quant):
                rounding = "stochastic"
            load_adapter(loaded.model, specs[0][1])   # refuses adapters that do not fit this base
            if quantized_base:
                from acculturate.adapters.qlora import quantize_lora_bases

                quantize_lora_bases(loaded.model)
            merge_lora(loaded.model)
        filename = f"{name}-{quant}.gguf"
        # A byte-level BPE's pre-tokenizer name comes from the base GGUF; SentencePiece has none to read.
        pre = base_pre_tokenizer(model) if arch.tokenizer == "gpt2" else None
        write_gguf(loaded.model, loaded.tokenizer, tmp / filename, quant=quant, name=name, pre=pre,
                   rounding=rounding)
        write_text(tmp / "Modelfile", modelfile(filename, loaded.tokenizer,
                                                loaded.model.generation_config.eos_token_id))
        command = f"ollama create {name} -f {output / 'Modelfile'} && ollama run {name}"
        write_text(tmp / "README.md", "\n".join([
            f"# GGUF export (written by `acculturate export --format gguf --quant {quant}`)", "",
            f"`{filename}`: the merged model with its tokenizer and chat template. Run it with", "",
            "```bash", f"llama-cli -m {output / filename} -cnv", command, "```", ""]))
    path = output / filename
    return {"path": str(path), "quant": quant, "rounding": rounding, "bytes": path.stat().st_size,
            "modelfile": str(output / "Modelfile"), "command": command}


def modelfile(filename: str, tokenizer, eos_ids: int | list[int] | None = None) -> str:
    """An Ollama Modelfile for the GGUF file: ``FROM`` it, a Go ``TEMPLATE`` for ChatML models
    (SmolLM2's ``<|im_start|>`` format; other templates, Gemma's among them, are left to Ollama, which
    reads ``tokenizer.chat_template`` from the file), and the end-of-turn token as the stop string
    (the tokens of ``eos_ids``, the model's generation EOS ids, e.g. Gemma's ``<eos>`` and
    ``<end_of_turn>``; else the tokenizer's EOS token)."""
    lines = [f"FROM ./{filename}", ""]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if "<|im_start|>" in template:
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system',
                  "{{ .System }}<|im_end|>",
                  "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
                  "{{ .Content }}<|im_end|>",
                  '{{ end }}<|im_start|>assistant',
                  '"""', 'PARAMETER stop "<|im_end|>"']
    else:
        ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        stops = [tokenizer.convert_ids_to_tokens(i) for i in ids] or [tokenizer.eos_token]
        lines += [f'PARAMETER stop "{stop}"' for stop in dict.fromkeys(stops) if stop]
    return "\n".join(lines) + "\n"
