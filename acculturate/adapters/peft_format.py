"""Save and load adapters (LoRA, prompt tuning) in PEFT's on-disk format.

A PEFT LoRA adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
whose keys are ``base_model.model.<module path>.lora_A.weight`` (shape (r, in)) and ``...lora_B.weight``
(shape (out, r)). What we save loads with ``peft.PeftModel.from_pretrained(base, dir)``, and what
PEFT saves for plain (rs)LoRA on Linear layers loads here; PEFT variants that change the maths
(DoRA, biases, per-layer ranks...) are refused by name rather than loaded wrongly.

A PEFT prompt-tuning adapter (``peft_type`` ``PROMPT_TUNING``) holds one tensor,
``prompt_embeddings`` of shape (num_virtual_tokens, token_dim), and a config naming the model's
sizes; see :mod:`acculturate.adapters.prompt_tuning`. :func:`load_adapter` reads either kind,
dispatching on ``peft_type`` through :data:`LOADERS`; :func:`save_adapter` writes the kind its config
names (:data:`SAVERS`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from acculturate.adapters.lora import (
    PEFT_PREFIX, LoRAConfig, layer_number, linear_names, lora_modules, lora_state_dict, matches_target,
    wrap_modules,
)
from acculturate.adapters.prompt_tuning import PromptTuningConfig, attach_prompt, prompt_embedding
from acculturate.adapters.token_rows import (DELTA_KEY, apply_token_rows, token_rows_config,
                                             token_rows_state_dict)
from acculturate.io import atomic_dir, write_json
from acculturate.models.loading import embedded_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"  # what PEFT wrote before safetensors became its default

# Keys of PEFT's LoraConfig that only steer initialization or record metadata: a saved adapter's
# weights are final, so they do not change what loading must do.
_IGNORED_KEYS = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "auto_mapping", "inference_mode",
    "peft_version", "init_lora_weights", "eva_config", "corda_config", "loftq_config", "lora_ga_config",
    "megatron_core", "qalora_group_size", "layers_pattern", "ensure_weight_tying",
}
_SUPPORTED_KEYS = {"r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "use_rslora",
                   "trainable_token_indices", "layers_to_transform"}


class AdapterError(ValueError):
    """An adapter directory cannot be loaded; the message names the file and the field or key."""


def peft_config_dict(config: LoRAConfig, base_model_name_or_path: str | None,
                     trainable_token_indices: dict | None = None, layers: list[int] | None = None) -> dict:
    """The ``adapter_config.json`` content for ``config``: the keys peft 0.21 writes for a plain
    LoRA adapter, sorted as PEFT sorts them. ``peft_version`` is left out because PEFT did not
    write this file; PEFT fills in its own version when it reads it. ``trainable_token_indices``
    (``{"embed_tokens": [ids]}``) names embedding rows trained beside the adapter (token_rows.py);
    ``layers`` the layer numbers adapted, where ``config.layers`` chose some (PEFT's ``layers_to_transform``)."""
    d = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "bias": "none",
        "corda_config": None, "ensure_weight_tying": False, "eva_config": None,
        "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "kasa_config": None, "layer_replication": None,
        "layers_pattern": None, "layers_to_transform": layers, "loftq_config": {},
        "lora_alpha": config.alpha, "lora_bias": False, "lora_dropout": config.dropout,
        "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "monteclora_config": None, "peft_type": "LORA",
        "qalora_group_size": 16, "r": config.r, "rank_pattern": {}, "revision": None,
        "target_modules": list(config.targets), "target_parameters": None, "task_type": "CAUSAL_LM",
        "trainable_token_indices": trainable_token_indices, "use_bdlora": None, "use_dora": False, "use_qalora": False,
        "use_rslora": config.use_rslora, "velora_config": None,
    }
    return dict(sorted(d.items()))


def prompt_tuning_config_dict(model: nn.Module, config: PromptTuningConfig,
                              base_model_name_or_path: str | None) -> dict:
    """The ``adapter_config.json`` content of a prompt-tuning adapter: the keys peft 0.21 writes,
    sorted. ``tokenizer_name_or_path`` is the base model's (PEFT requires one for TEXT init)."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    module = prompt_embedding(model)
    d = {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": text.num_attention_heads,
        "num_layers": text.num_hidden_layers, "num_transformer_submodules": 1,
        "num_virtual_tokens": config.num_virtual_tokens, "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "TEXT" if config.init_text is not None else "RANDOM",
        "prompt_tuning_init_text": config.init_text, "revision": None, "task_type": "CAUSAL_LM",
        "token_dim": module.prompt_embeddings.embedding_dim if module is not None else text.hidden_size,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": base_model_name_or_path if config.init_text is not None else None,
    }
    return dict(sorted(d.items()))


def _write(out_dir: str | os.PathLike, config: dict, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
    return out_dir


def save_lora_adapter(model: nn.Module, out_dir, base_model_name_or_path: str | None, config: LoRAConfig) -> Path:
    """:func:`save_adapter` for LoRA (and QLoRA, whose adapter is a plain LoRA adapter)."""
    state = lora_state_dict(model)
    if not state:
        raise AdapterError("the model has no LoRA layers to save; apply_lora() or load_adapter() it first")
    state.update(token_rows_state_dict(model, PEFT_PREFIX))   # new-vocabulary rows, if any
    layers = sorted({layer_number(n) for n in lora_modules(model)}) if config.layers is not None else None
    return _write(out_dir, peft_config_dict(config, base_model_name_or_path, token_rows_config(model), layers), state)


def save_prompt_tuning_adapter(model: nn.Module, out_dir, base_model_name_or_path: str | None,
                               config: PromptTuningConfig) -> Path:
    """:func:`save_adapter` for prompt tuning: ``prompt_embeddings`` (n, d) and PEFT's config."""
    module = prompt_embedding(model)
    if module is None:
        raise AdapterError("the model is not prompt-tuned; apply_prompt_tuning() or load_adapter() it first")
    if module.num_virtual_tokens != config.num_virtual_tokens:
        raise AdapterError(f"PromptTuningConfig.num_virtual_tokens is {config.num_virtual_tokens} but the "
                           f"model has {module.num_virtual_tokens} virtual tokens")
    if config.init_text is not None and not base_model_name_or_path:
        raise AdapterError("a text-initialised prompt needs base_model_name_or_path: PEFT requires a "
                           "tokenizer_name_or_path with prompt_tuning_init TEXT, and records the base's")
    return _write(out_dir, prompt_tuning_config_dict(model, config, base_model_name_or_path),
                  {"prompt_embeddings": module.prompt_embeddings.weight})


# The writer for each kind of adapter config.
SAVERS = {LoRAConfig: save_lora_adapter, PromptTuningConfig: save_prompt_tuning_adapter}


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, base_model_name_or_path: str | None,
                 config: LoRAConfig | PromptTuningConfig) -> Path:
    """Write the model's adapter weights and ``config`` as a PEFT adapter directory, atomically.

    Args:
        model: for a :class:`LoRAConfig`, a model with LoRA layers (from :func:`apply_lora` or
            ``apply_qlora``; unmerged or merged alike, since merging leaves ``A`` and ``B`` in place);
            for a :class:`PromptTuningConfig`, a prompt-tuned model.
        out_dir: the adapter directory; replaced whole if it exists.
        base_model_name_or_path: recorded in the config (PEFT's ``AutoPeftModel``, and acculturate's
            commands given no model, load the base from it); an embedded model's file or cache
            directory is recorded as its name (``"gemma3-270m"``), so the adapter is portable.
        config: the config the adapter was built with; its type picks the format (:data:`SAVERS`).
    Returns:
        ``out_dir`` as a Path.
    """
    saver = SAVERS.get(type(config))
    if saver is None:
        raise TypeError(f"save_adapter: config must be one of {[t.__name__ for t in SAVERS]}, "
                        f"got {type(config).__name__}")
    if base_model_name_or_path:
        base_model_name_or_path = embedded_name(base_model_name_or_path) or str(base_model_name_or_path)
    return saver(model, out_dir, base_model_name_or_path, config)


def read_config_json(adapter_dir: str | os.PathLike) -> tuple[Path, dict]:
    """Read ``adapter_dir/adapter_config.json`` as a dict, of any ``peft_type``.

    Returns:
        ``(path of the file, dict)``.
    Raises:
        FileNotFoundError: the directory or the file is missing. AdapterError: invalid JSON, or not an object.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter directory {adapter_dir} does not exist")
    path = adapter_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an adapter directory needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return path, raw


def read_adapter_config(adapter_dir: str | os.PathLike) -> tuple[LoRAConfig, dict]:
    """Read and check a LoRA adapter's ``adapter_config.json``.

    Returns:
        ``(LoRAConfig, raw dict)``; the raw dict keeps PEFT's ``target_modules`` form (list or regex).
    Raises:
        FileNotFoundError: the directory or the file is missing.
        AdapterError: invalid JSON, not LoRA, or a LoRA variant we do not implement.
    """
    path, raw = read_config_json(adapter_dir)
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; expected a 'LORA' adapter here")
    for key, value in raw.items():
        if key in _IGNORED_KEYS or key in _SUPPORTED_KEYS:
            continue
        if value in (None, False, {}, []) or (key == "bias" and value == "none"):
            continue
        raise AdapterError(
            f"{path}: {key}={value!r} is a LoRA variant acculturate does not implement "
            f"(it supports plain LoRA and use_rslora on Linear layers)")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in raw:
            raise AdapterError(f"{path}: field {key!r} is missing")
    targets = raw["target_modules"]
    if isinstance(targets, str):
        targets = (targets,)  # a regex; the weights file says which modules it matched
    try:
        config = LoRAConfig(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0),
                            targets=tuple(targets), use_rslora=bool(raw.get("use_rslora", False)),
                            layers=raw.get("layers_to_transform"))
    except ValueError as e:
        raise AdapterError(f"{path}: {e}") from None
    return config, raw


def read_adapter_weights(adapter_dir: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor]]:
    """The file an adapter's weights come from and its tensors: ``adapter_model.safetensors``, else
    the legacy ``adapter_model.bin`` (read with ``weights_only``). FileNotFoundError if neither."""
    return _read_weights(Path(adapter_dir))


def _read_weights(adapter_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = adapter_dir / WEIGHTS_FILE
    if path.is_file():
        from safetensors.torch import load_file

        return path, load_file(str(path))
    legacy = adapter_dir / LEGACY_WEIGHTS_FILE
    if legacy.is_file():
        return legacy, torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path} not found (nor {LEGACY_WEIGHTS_FILE}): the adapter has no weights")


def _expected_modules(model: nn.Module, raw: dict) -> list[str] | None:
    """The Linear modules PEFT would wrap for this config, or None where the config does not say
    (``all-linear``)."""
    targets, exclude = raw["target_modules"], raw.get("exclude_modules")
    if targets == "all-linear":
        return None
    names = linear_names(model)
    if isinstance(targets, str):
        names = [n for n in names if re.fullmatch(targets, n)]
    else:
        names = [n for n in names if any(matches_target(n, t) for t in targets)]
    if isinstance(exclude, str):
        names = [n for n in names if not re.fullmatch(exclude, n)]
    elif exclude:
        names = [n for n in names if not any(matches_target(n, t) for t in exclude)]
    layers = raw.get("layers_to_transform")
    if layers is not None:
        layers = {layers} if isinstance(layers, int) else set(layers)
        pattern = raw.get("layers_pattern")
        if pattern:   # PEFT's rule: the number after one of these module names
            pattern = "|".join(map(re.escape, [pattern] if isinstance(pattern, str) else pattern))
            found = [re.match(rf".*\.(?:{pattern})\.(\d+)\.", n) for n in names]
            names = [n for n, m in zip(names, found) if m and int(m.group(1)) in layers]
        else:
            names = [n for n in names if layer_number(n) in layers]
    return names


def _other_base(raw: dict, model: nn.Module) -> str:
    """The sentence a does-not-fit error ends with: the base the adapter records and the model it met."""
    name = getattr(model, "name_or_path", "") or ""
    loaded = embedded_name(name) or name or type(model).__name__
    recorded = raw.get("base_model_name_or_path")
    if not recorded:
        return f" Is it for another base model than {loaded}?"
    recorded_as = embedded_name(recorded) or recorded
    if recorded_as == loaded or (name and Path(recorded).exists() and Path(recorded).resolve() == Path(name).resolve()):
        return ""
    return (f" The adapter was trained on {recorded!r} (base_model_name_or_path in its adapter_config.json) and "
            f"is being loaded onto {loaded!r}: leave out --model (or the config's model) to load it on its own "
            f"base, or name the base it was trained on.")


def _sample(names, k: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (f" ... ({len(names)} in all)" if len(names) > k else "")


def load_lora_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> LoRAConfig:
    """Apply LoRA to ``model`` as an adapter directory says and load its weights.

    Reads adapters saved by :func:`save_adapter` or by PEFT (``save_pretrained``). The modules
    wrapped are exactly those the weights file names, checked against the config's
    ``target_modules``; every other parameter is frozen and ``A``/``B`` stay trainable.

    Args:
        model: the base model the adapter was trained on, without LoRA layers; modified in place.
        adapter_dir: the adapter directory.
    Returns:
        The adapter's :class:`LoRAConfig`.
    Raises:
        FileNotFoundError: missing directory or file. AdapterError: unsupported config, or weight
            keys or shapes that do not match the model (the message names them).
    """
    adapter_dir = Path(adapter_dir)
    if lora_modules(model):
        raise ValueError("the model already has LoRA layers; load an adapter onto the base model")
    config, raw = read_adapter_config(adapter_dir)
    weights_path, state = _read_weights(adapter_dir)

    modules: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    token_rows = {k: state.pop(k) for k in [k for k in state if k.endswith("." + DELTA_KEY)]}
    for key, tensor in state.items():
        m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key)
        if m is None:
            bad.append(key)
        else:
            modules.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not modules:
        raise AdapterError(f"{weights_path}: holds no LoRA weights")
    if bad:
        raise AdapterError(f"{weights_path}: keys that are not LoRA A/B weights of a Linear layer: {_sample(bad)}")
    linears = set(linear_names(model))
    unknown = [n for n in modules if n not in linears]
    if unknown:
        raise AdapterError(
            f"{weights_path}: the adapter has weights for modules that are not nn.Linear modules of "
            f"{type(model).__name__}: {_sample(unknown)}.{_other_base(raw, model) or ' Is it for another base model?'}")
    incomplete = [f"{n} (has only {list(p)})" for n, p in modules.items() if set(p) != {"lora_A", "lora_B"}]
    if incomplete:
        raise AdapterError(f"{weights_path}: modules without both lora_A and lora_B: {_sample(incomplete)}")
    expected = _expected_modules(model, raw)
    if expected is not None:
        missing = sorted(set(expected) - set(modules))
        extra = sorted(set(modules) - set(expected))
        if missing:
            raise AdapterError(f"{weights_path}: no weights for modules that target_modules matches: "
                               f"{_sample(missing)}.{_other_base(raw, model)}")
        if extra:
            raise AdapterError(f"{weights_path}: weights for modules target_modules does not match: "
                               f"{_sample(extra)}.{_other_base(raw, model)}")

    names = [n for n in linear_names(model) if n in modules]  # model order
    for name in names:
        base = model.get_submodule(name)
        want = {"lora_A": (config.r, base.in_features), "lora_B": (base.out_features, config.r)}
        for part, shape in want.items():
            got = tuple(modules[name][part].shape)
            if got != shape:
                raise AdapterError(f"{weights_path}: {PEFT_PREFIX}{name}.{part}.weight has shape {got}, "
                                   f"expected {shape} (r={config.r}, layer {base.in_features}->{base.out_features})."
                                   f"{_other_base(raw, model)}")
    if [n for n in linear_names(model) if any(matches_target(n, t) for t in config.targets)] != names:
        # A regex, exclude_modules or a layer subset: name the modules exactly, so that
        # apply_lora(model, config) wraps the same ones.
        config = replace(config, targets=tuple(names))
    wrap_modules(model, names, config)
    with torch.no_grad():
        for name in names:
            layer = model.get_submodule(name)
            layer.lora_A.weight.copy_(modules[name]["lora_A"])
            layer.lora_B.weight.copy_(modules[name]["lora_B"])
    if token_rows or raw.get("trainable_token_indices"):
        _load_token_rows(model, raw, token_rows, adapter_dir / CONFIG_FILE, weights_path)
    return config


def _load_token_rows(model: nn.Module, raw: dict, rows: dict[str, torch.Tensor], config_path: Path,
                     weights_path: Path) -> None:
    """Apply PEFT's ``trainable_token_indices`` (embedding rows trained beside the adapter)."""
    indices = raw.get("trainable_token_indices")
    if isinstance(indices, dict):
        if len(indices) != 1:
            raise AdapterError(f"{config_path}: trainable_token_indices names {sorted(indices)}; acculturate "
                               "loads rows of one layer, the input embedding")
        (layer_name, ids), = indices.items()
    else:
        layer_name, ids = None, indices
    embed_path = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    if layer_name is not None and not (embed_path == layer_name or embed_path.endswith("." + layer_name)):
        raise AdapterError(f"{config_path}: trainable_token_indices names {layer_name!r}, which is not the "
                           f"model's input embedding ({embed_path})")
    key = f"{PEFT_PREFIX}{embed_path}.{DELTA_KEY}"
    if set(rows) != {key}:
        raise AdapterError(f"{weights_path}: expected the token rows under {key}, got {_sample(rows) or 'none'}")
    if not isinstance(ids, list) or tuple(rows[key].shape) != (len(ids), model.get_input_embeddings().weight.shape[1]):
        raise AdapterError(f"{weights_path}: {key} has shape {tuple(rows[key].shape)}, expected "
                           f"({len(ids) if isinstance(ids, list) else '?'}, hidden size) for trainable_token_indices")
    if ids != sorted(set(ids)):
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        ids, rows[key] = [ids[i] for i in order], rows[key][order]
    try:
        layer = apply_token_rows(model, ids)
    except ValueError as e:
        raise AdapterError(f"{config_path}: trainable_token_indices: {e} (is the base the extended model?)") from None
    with torch.no_grad():
        layer.rows.copy_(rows[key])


def load_prompt_tuning_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> PromptTuningConfig:
    """Prompt-tune ``model`` with the vectors of a PEFT prompt-tuning adapter directory.

    Every parameter of the model is frozen; the loaded vectors stay trainable.

    Returns:
        The adapter's :class:`PromptTuningConfig`.
    Raises:
        AdapterError: a config or weights file that does not fit (another task type, several
            transformer submodules, a token_dim or shape that is not the model's); the message
            names the file and field.
    """
    adapter_dir = Path(adapter_dir)
    path, raw = read_config_json(adapter_dir)
    if raw.get("task_type") != "CAUSAL_LM":
        raise AdapterError(f"{path}: task_type is {raw.get('task_type')!r}; only 'CAUSAL_LM' prompt tuning is supported")
    if raw.get("num_transformer_submodules", 1) != 1:
        raise AdapterError(f"{path}: num_transformer_submodules is {raw['num_transformer_submodules']!r}; "
                           f"a decoder-only model has 1")
    for key in ("num_virtual_tokens", "token_dim"):
        if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool) or raw[key] <= 0:
            raise AdapterError(f"{path}: field {key!r} must be a positive integer, got {raw.get(key)!r}")
    n, d = raw["num_virtual_tokens"], raw["token_dim"]
    hidden = model.get_input_embeddings().weight.shape[1]
    if d != hidden:
        raise AdapterError(f"{path}: token_dim is {d} but {type(model).__name__}'s embeddings have "
                           f"{hidden} dimensions.{_other_base(raw, model) or ' Is it for another base model?'}")
    weights_path, state = _read_weights(adapter_dir)
    if set(state) != {"prompt_embeddings"}:
        raise AdapterError(f"{weights_path}: expected exactly the key 'prompt_embeddings', got {_sample(state)}")
    weight = state["prompt_embeddings"]
    if tuple(weight.shape) != (n, d):
        raise AdapterError(f"{weights_path}: prompt_embeddings has shape {tuple(weight.shape)}, "
                           f"expected ({n}, {d}) (num_virtual_tokens, token_dim)")
    text = raw.get("prompt_tuning_init_text") if raw.get("prompt_tuning_init") == "TEXT" else None
    try:
        config = PromptTuningConfig(num_virtual_tokens=n, init_text=text or None)
    except ValueError as e:
        raise AdapterError(f"{path}: {e}") from None
    attach_prompt(model, weight)
    return config


# The loader for each PEFT peft_type we implement.
LOADERS = {"LORA": load_lora_adapter, "PROMPT_TUNING": load_prompt_tuning_adapter}


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> LoRAConfig | PromptTuningConfig:
    """Apply a saved adapter (ours or PEFT's) to ``model`` and load its weights.

    Dispatches on the config's ``peft_type`` (:data:`LOADERS`): ``LORA`` wraps exactly the modules
    the weights file names (:func:`load_lora_adapter`), ``PROMPT_TUNING`` prepends the saved
    virtual tokens (:func:`load_prompt_tuning_adapter`). The adapter's weights stay trainable,
    every other parameter is frozen.

    Args:
        model: the base model the adapter was trained on; modified in place.
        adapter_dir: the adapter directory.
    Returns:
        The adapter's config (:class:`LoRAConfig` or :class:`PromptTuningConfig`).
    Raises:
        FileNotFoundError: missing directory or file. AdapterError: an unsupported ``peft_type``
            or config, or weights that do not fit the model (the message names them).
    """
    path, raw = read_config_json(adapter_dir)
    loader = LOADERS.get(raw.get("peft_type"))
    if loader is None:
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; supported: {sorted(LOADERS)}")
    return loader(model, adapter_dir)
