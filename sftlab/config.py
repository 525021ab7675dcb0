"""YAML files and dotted overrides (``lora.rank=32``) into nested config dataclasses.

Every command has one dataclass config shared by the CLI, YAML files and the Python API.
Unknown keys are errors that name the key and the closest valid one; values are checked
against the field's type; the resolved config is dumped beside every result.

Example, with ``TrainConfig`` holding an ``optim: OptimConfig`` section::

    load_config(TrainConfig, "run.yaml", ["optim.lr=3e-4", "max_steps=20"])
    # a typo is an error before anything runs:
    # ConfigError: unknown key 'optim.rl'; did you mean 'optim.lr'? (valid keys: ...)

Each field documents itself with an attribute docstring (the string on the line after it);
``field_docs`` reads them from the source, with the type, default and ``Literal`` choices,
and ``format_field_docs`` lays them out for ``--help``. YAML 1.1 reads ``no``/``yes``/``on``/
``off`` as booleans: a string field gets the word back (``mixed_precision: no`` is ``"no"``).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sftlab.errors import ConfigError

C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] = ()) -> C:
    """Read a YAML file (optional), apply ``key.sub=value`` overrides, build ``cls``."""
    return build_config(cls, read_config_file(path) if path is not None else {}, overrides)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML config file (``{}`` for an empty file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, loader: type[yaml.SafeLoader] = _StrictLoader) -> Any:
    """The YAML value in ``path`` (safe tags only, no key twice); a file that cannot be read
    or parsed raises ``ConfigError`` naming the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML file (give a file inside it)")
    try:
        return yaml.load(path.read_text(encoding="utf-8-sig"), Loader=loader)  # noqa: S506 (safe subclass)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None


def build_config(cls: type[C], data: dict[str, Any], overrides: list[str] = ()) -> C:
    """Build ``cls`` from nested ``data`` (as YAML reads it), then ``key.sub=value`` overrides."""
    data = _deep_copy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' is not of the form section.key=value")
        set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return _build(cls, data, prefix="")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 1e-3)``: ``d["optim"]["lr"] = 1e-3``, sections created."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys: ``{"optim": {"lr": 2e-5}}`` -> ``{"optim.lr": 2e-5}``.

    >>> flatten({"seed": 1, "optim": {"lr": 0.1}})
    {'seed': 1, 'optim.lr': 0.1}
    """
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (``.yaml``/``.yml``) or JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(config) if dataclasses.is_dataclass(config) else config
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class FieldDoc:
    """One documented config key, as ``--help`` lists it.

    ``FieldDoc("optim.lr", "float", 2e-05, (), "Peak learning rate.")``
    """

    key: str
    """Dotted key (``optim.lr``); fields of list items read ``sources[].path``."""
    type: str
    """The annotation, spelled as in the source (``int | None``, ``list[str]``)."""
    default: Any
    """The default value; ``dataclasses.MISSING`` when the field must be given."""
    choices: tuple = ()
    """The allowed values of a ``Literal`` field, else empty."""
    doc: str = ""
    """The field's attribute docstring as one paragraph; empty when it has none."""

    def signature(self) -> str:
        """``"data.packing: bool = False"`` or ``"name: {adamw,sgd} = 'adamw'"``."""
        kind = "{" + ",".join(map(str, self.choices)) + "}" if self.choices else self.type
        default = "(required)" if self.default is dataclasses.MISSING else f"= {self.default!r}"
        return f"{self.key}: {kind} {default}"


def field_docs(cls: type, prefix: str = "", defaults: Any = None) -> dict[str, FieldDoc]:
    """Dotted key -> ``FieldDoc`` for every leaf field of ``cls``, sections recursed.

    A nested dataclass section contributes ``section.key`` entries (defaults as the
    parent's ``default_factory`` sets them), a ``list[Section]`` field ``field[].key``
    entries (after one entry for the list itself)::

        field_docs(TrainConfig)["data.packing"].doc
        # 'Bin-pack examples into rows of `max_length` (attention isolated per example).'
    """
    docs = attribute_docstrings(cls)
    hints = typing.get_type_hints(cls)
    out: dict[str, FieldDoc] = {}
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], prefix + f.name
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if dataclasses.is_dataclass(hint):
            out.update(field_docs(hint, f"{key}.", _instance_or_none(default)))
            continue
        out[key] = FieldDoc(key, _type_name(hint), default, literal_choices(hint), docs.get(f.name, ""))
        item = _list_item_section(hint)
        if item is not None:
            out.update(field_docs(item, f"{key}[]."))
    return out


def format_field_docs(cls: type, *, title: str = "keys (key=value overrides, or in the YAML file):",
                      width: int = 92, exclude: typing.Iterable[str] = ()) -> str:
    """The keys of ``cls`` for an argparse epilog (use ``RawDescriptionHelpFormatter``)::

        keys (key=value overrides, or in the YAML file):
          data.packing: bool = False
              Bin-pack examples into rows of `max_length` (attention isolated per
              example).
    """
    skipped = set(exclude)
    lines = [title]
    for key, doc in field_docs(cls).items():
        if key in skipped:
            continue
        lines.append(f"  {doc.signature()}")
        if doc.doc:
            lines += textwrap.wrap(doc.doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def attribute_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal written on the line after the field, read from the
    class source (bases first, so a subclass can redocument a field).

    ``{"lr": "Peak learning rate."}``; ``{}`` when the source cannot be read (a class
    built at run time, a frozen executable).
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(attribute_docstrings(base))
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return docs
    body = next((node.body for node in ast.parse(source).body if isinstance(node, ast.ClassDef)), [])
    for field_node, next_node in zip(body, body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(next_node, ast.Expr) and isinstance(next_node.value, ast.Constant)
                and isinstance(next_node.value.value, str)):
            docs[field_node.target.id] = _one_paragraph(next_node.value.value)
    return docs


def literal_choices(hint: Any) -> tuple:
    """The values of ``Literal[...]`` (also inside ``Optional``), else ``()``."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(hint) for v in literal_choices(arg))
    return ()


# -- internals ----------------------------------------------------------------------------

def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _instance_or_none(value: Any) -> Any:
    """``value`` when it is a dataclass instance (a section's default), else None."""
    return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


def _list_item_section(hint: Any) -> type | None:
    """``Source`` for ``list[Source]`` (a list of sections), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _one_paragraph(text: str) -> str:
    """A docstring as one line for wrapping; RST ````code```` becomes `code`."""
    return " ".join(inspect.cleandoc(text).split()).replace("``", "`")


def _build(cls: type, data: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """``cls`` from ``data``; keys ``data`` lacks keep their values in ``base`` (the
    section's default instance, e.g. SPIN's ``optim`` with its own ``lr``), else the
    class defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' is a section: give it keys, not {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            valid = list(field_docs(cls, prefix))
            close = difflib.get_close_matches(prefix + key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint} (valid keys: {', '.join(valid)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(hint):
            section_base = getattr(base, f.name) if base is not None else _instance_or_none(_default(f))
            kwargs[f.name] = _build(hint, value, f"{prefix}{f.name}.", section_base)
        else:
            kwargs[f.name] = _coerce(value, hint, prefix + f.name)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _type_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``str | None``, ``list[Source]`` (module paths dropped)."""
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return hint.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", str(hint))


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
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            value = _yaml_bool_word(value, args)  # `mixed_precision: no` means the string
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
    if hint is str and isinstance(value, bool):  # YAML 1.1 read `no`/`yes`/`on`/`off` as a bool
        return _yaml_bool_word(value, ())
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"'{key}' must be {_type_name(hint)}, got {value!r}")
    return value


# the words YAML 1.1 reads as booleans, in the order a plain string field gets them back
_YAML_BOOL_WORDS = {True: ("yes", "on", "true"), False: ("no", "off", "false")}


def _yaml_bool_word(value: bool, allowed: tuple) -> str:
    """The word YAML turned into ``value``: the one ``allowed`` holds (``off`` for
    ``Literal["auto", "on", "off"]``), else ``yes``/``no``."""
    words = _YAML_BOOL_WORDS[value]
    return next((w for w in words if w in allowed), words[0])
