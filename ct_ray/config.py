"""Typed configs: dataclasses filled from YAML, with unknown keys and impossible values rejected by name.

``load_config(ExperimentConfig, "experiments/x.yaml", ["optim.lr=1e-4"])`` reads the file, applies ``key=value``
overrides (values parsed as YAML), converts every section to its dataclass and runs each class's checks, all before
any cluster work starts. Errors are ``ConfigError`` and name the dotted key.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from ct_ray.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key that is unknown, of the wrong type or of an impossible value; the message names the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(errors) == 1 else
                          f"{key}: {value!r} fits none of {[_type_name(a) for a in args if a is not type(None)]}")
    if value is None:
        raise ConfigError(f"{key}: a value is required (got null)")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return tp(value)
    if origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping; unknown keys, wrong types and failed checks raise ConfigError."""
    where = prefix or cls.__name__
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        names = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known at this level: {sorted(known)})")
    values = {name: _convert(value, hints[name], f"{prefix + '.' if prefix else ''}{name}")
              for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(config: Any) -> Any:
    """A config as plain YAML-ready data (enums as their values)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, enum.Enum):
        return config.value
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists kept as values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Applies ``a.b=value`` overrides (values parsed as YAML) to nested config data."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from exc
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """Reads ``path`` (or the class defaults when None), applies overrides, returns a checked ``cls``."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))
