"""Typed configuration from YAML/dicts: every field checked against its dataclass, errors name the field.

Each concern owns its dataclass (``TrainConfig`` in train, ``LoRAConfig`` in adapters, ...); this module
only turns nested dicts into those dataclasses, so the same objects back YAML, the CLI and the Python API.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's ``true`` would pass ``isinstance(value, int)``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:   # one real alternative (X | None): its own error names the field inside
            raise errors[0]
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got "
                          f"{type(value).__name__} ({value!r})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} ({value!r})")
        return dict(value)
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "2e-4" as a string (YAML 1.1); accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} ({value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} ({value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} ({value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} ({value!r})")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {type(value).__name__} ({value!r})")
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and invalid values raise
    :class:`ConfigError` naming the dotted field (``train.lr``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; valid fields of "
                          f"{where or cls.__name__} are {sorted(fields)}")
    kwargs = {name: _convert(_over_default(fields[name], value), hints[name], f"{prefix}{name}")
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        # __post_init__ validation names the field; add where it sits in the config tree.
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a field whose default is a dataclass sets fields *of that default*: the
    adapt job's ``train`` default is ``TrainConfig(epochs=1, batch_size=8, ...)``, so a user's
    ``train: {lr: 5e-4}`` keeps those and changes the rate, rather than falling back on every other
    ``TrainConfig`` default (a user's ``model: {dtype: bf16}`` silently ran another model that way)."""
    if not isinstance(value, dict):
        return value
    default = field_default(f)
    return _merged(to_dict(default), value) if dataclasses.is_dataclass(default) else value


def field_default(f: dataclasses.Field) -> Any:
    """The field's default value (its factory called), or ``dataclasses.MISSING`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for saving next to a run), paths as strings."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Read a YAML file into ``cls``; ``overrides`` are ``dotted.key=value`` strings (YAML-parsed values)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``cls`` from a YAML file, or from its defaults when ``path`` is None; ``overrides``
    (``dotted.key=value``) apply either way, so ``--set`` never depends on a config file being given."""
    if path is not None:
        return load_yaml(cls, path, overrides)
    data = apply_overrides({}, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"--set (no config file): {e}") from e


_KEY_PART = re.compile(r"([^.\[\]]+)((?:\[-?\d+\])*)")


def _key_path(key: str, item: str) -> list[str | int]:
    """``tasks[0].limit`` -> ``["tasks", 0, "limit"]``; a malformed key raises ConfigError."""
    path: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.fullmatch(part.strip())
        if not match:
            raise ConfigError(f"override {item!r}: cannot read key part {part!r}; expected name, "
                              "name[index] or name[i][j] (e.g. tasks[0].limit=5)")
        path.append(match.group(1))
        path += [int(i) for i in re.findall(r"-?\d+", match.group(2))]
    return path


def _describe(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides in place (the value is parsed as YAML: ``3``, ``2e-4``, ``[a, b]``).

    A key may index a list: ``tasks[0].limit=5``, ``systems[-1].adapter=null``. Missing mappings on
    the way are created; a list index must name an existing item.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4 or tasks[0].limit=5")
        key, raw = item.split("=", 1)
        path = _key_path(key, item)
        node: Any = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            where = _describe(path[:depth]) or "the config"
            if isinstance(part, int):
                if not isinstance(node, list):
                    raise ConfigError(f"override {item!r}: {where} is not a list (it is "
                                      f"{type(node).__name__}), so [{part}] cannot index it")
                if not -len(node) <= part < len(node):
                    raise ConfigError(f"override {item!r}: index [{part}] is out of range: {where} has "
                                      f"{len(node)} item{'s' if len(node) != 1 else ''} "
                                      f"(valid: 0..{len(node) - 1}, or -1 for the last)")
            elif not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {where} is not a mapping, so it has no field {part!r}")
            if last:
                try:
                    node[part] = yaml.safe_load(raw)
                except yaml.YAMLError as e:
                    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                    raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it, "
                                      f"e.g. {key}='\"...\"'") from None
            elif isinstance(part, str) and node.get(part) is None:  # absent (or empty in the YAML)
                if isinstance(path[depth + 1], int):
                    raise ConfigError(f"override {item!r}: {_describe(path[:depth + 1])} is not set in the "
                                      "config, so it has no items to index; set the whole list instead "
                                      f"(e.g. {_describe(path[:depth + 1])}=[...])")
                node[part] = {}
                node = node[part]
            else:
                node = node[part]
    return data
