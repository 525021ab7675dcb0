"""YAML files and dotted overrides (``lora.rank=32``) into nested config dataclasses.

Every command has one dataclass config shared by the CLI, YAML files and the Python API.
Unknown keys are errors that name the key and the closest valid one; values are checked
against the field's type; the resolved config is dumped beside every result.

Example, with ``TrainConfig`` holding an ``optim: OptimConfig`` section::

    load_config(TrainConfig, "run.yaml", ["optim.lr=3e-4", "max_steps=20"])
    # a typo is an error before anything runs:
    # ConfigError: unknown key 'optim.rl'; did you mean 'optim.lr'? (valid keys: ...)
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sftlab.errors import ConfigError

C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] = ()) -> C:
    """Read a YAML file (optional), apply ``key.sub=value`` overrides, build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        with path.open() as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return build_config(cls, data, overrides)


def build_config(cls: type[C], data: dict[str, Any], overrides: list[str] = ()) -> C:
    data = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' is not of the form section.key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return _build(cls, data, prefix="")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (``.yaml``/``.yml``) or JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(config) if dataclasses.is_dataclass(config) else config
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def field_docs(cls: type) -> dict[str, str]:
    """Map of dotted key -> type and default, for ``--help`` texts and error messages."""
    out = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update({f"{f.name}.{k}": v for k, v in field_docs(hint).items()})
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out[f.name] = f"{_type_name(hint)} = {default!r}"
    return out


# -- internals ----------------------------------------------------------------------------

def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' is a section: give it keys, not {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            valid = _all_keys(cls, prefix)
            close = difflib.get_close_matches(prefix + key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint} (valid keys: {', '.join(valid)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, hint, prefix + f.name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation, converting the obvious cases (int -> float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):  # a section inside a list, e.g. `sources: list[Source]`
        return value if isinstance(value, hint) else _build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"'{key}' cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(map(str, args))
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"'{key}' is {value!r}{hint_text} (allowed: {allowed})")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # `a,b,c` on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"'{key}' must be {_type_name(hint)}, got {value!r}")
    return value
