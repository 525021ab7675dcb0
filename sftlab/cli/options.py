"""A command's arguments built from its config dataclass: one way for every command.

Every command that has a config gets, from ``add_config_arguments``:

- ``--config FILE.yaml``: any of the config's keys, nested as the dataclass is;
- ``KEY=VALUE`` dotted overrides (``sampling.temperature=0.7``), anywhere on the line;
- ``--flag`` options for the keys used most, generated from the dataclass: the type from
  the annotation, the help from the field's attribute docstring, choices from ``Literal``;
- an epilog listing every key with its type, default and docstring.

Later sources win: dataclass defaults < the YAML file < flags < ``KEY=VALUE`` overrides.
``config_from_args`` turns the parsed namespace back into the config::

    add_config_arguments(parser, ExportConfig, flags={
        "source": Flag("source", metavar="RUN_OR_ADAPTER"), "output": ("-o", "--output"),
        "merge": "--merge"})
    ...
    config = config_from_args(ExportConfig, args)   # ExportConfig(source=..., output=..., merge=True)
"""
from __future__ import annotations

import argparse
import dataclasses
import textwrap
import types
import typing
from typing import Any, Iterable

from sftlab.config import build_config, field_docs, format_field_docs, read_config_file, set_dotted
from sftlab.errors import ConfigError

# namespace attribute of a flag's value: "config:<dotted key>" cannot clash with other options
_DEST = "config:"


class Flag:
    """How one config key appears on the command line.

    ``Flag("-o", "--output")`` is an option; ``Flag("model", nargs="?")`` (a name without a
    dash) is a positional argument. The help text is the field's attribute docstring.
    """

    def __init__(self, *names: str, help: str | None = None, metavar: str | None = None,
                 nargs: str | None = None, append: bool = False, choices: Iterable = (),
                 required: bool = False) -> None:
        self.names = names
        self.help = help
        """Help text instead of the docstring (for a flag whose meaning is narrower)."""
        self.metavar = metavar
        self.nargs = nargs
        """Positional arguments only: ``?`` (optional), ``*`` (any number; with ``required``,
        at least one here, in an override or in the YAML file)."""
        self.append = append
        """Repeatable, one list item per use (``--stop A --stop B``) instead of ``a,b``."""
        self.choices = tuple(choices)
        """Allowed values where the annotation is not a ``Literal``."""
        self.required = required
        """The key must be given: by this flag, a ``KEY=VALUE`` override or the YAML file."""

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, *,
                         flags: dict[str, Flag | str | tuple[str, ...]] | None = None,
                         config_option: bool = True, epilog: str = "") -> None:
    """Add ``flags`` (dotted key -> ``Flag``, or its option names), ``--config`` and the
    ``KEY=VALUE`` overrides to ``parser``; the key listing goes after ``epilog``."""
    flags = {key: _as_flag(spec) for key, spec in (flags or {}).items()}
    docs = field_docs(config_class)
    for key, flag in flags.items():
        if key not in docs:
            raise KeyError(f"{config_class.__name__} has no key '{key}'")
        _add_flag(parser, key, flag, docs[key], _hint(config_class, key))
    if config_option:
        parser.add_argument("--config", dest="config_file", metavar="FILE.yaml",
                            help="YAML file holding any of the keys listed below; flags and "
                                 "KEY=VALUE overrides win over it")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="set any key listed below, dotted for sections (e.g. seed=3)")
    listing = _mark_required(format_field_docs(config_class), [docs[k] for k, f in flags.items() if f.required])
    parser.epilog = (epilog.rstrip("\n") + "\n\n" if epilog else "") + listing
    # raw: the epilog's examples and key listing keep their lines; the description is
    # wrapped here instead
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = wrap_paragraphs(parser.description or "")
    parser.set_defaults(config_class=config_class, config_flags=flags)


def config_from_args(config_class: type, args: argparse.Namespace, config_file: str | None = None):
    """The config the command line means: YAML file, then flags, then overrides.

    ``config_file`` names the YAML file where the command takes it as a positional
    argument (``sftlab train CONFIG.yaml``); otherwise ``--config`` gives it.
    """
    flags: dict[str, Flag] = getattr(args, "config_flags", {})
    overrides = list(getattr(args, "overrides", None) or [])
    values = {}
    for key, flag in flags.items():
        value = getattr(args, _DEST + key, None)
        if flag.positional and isinstance(value, str) and _is_override(value, config_class):
            overrides.insert(0, value)  # `sftlab eval limit=3 --responses F`: no MODEL given
        elif flag.positional and isinstance(value, list):  # nargs "*" also swallows KEY=VALUE words
            overrides[:0] = [word for word in value if _is_override(word, config_class)]
            words = [word for word in value if not _is_override(word, config_class)]
            if words:  # none given: the YAML file or the default applies
                values[key] = words
        elif value is not None:
            values[key] = value
    path = config_file or getattr(args, "config_file", None)
    data = read_config_file(path) if path else {}
    for key, value in values.items():
        set_dotted(data, key, value)
    _check_required(flags, data, overrides)
    return build_config(config_class, data, overrides)


def wrap_paragraphs(text: str, width: int = 92) -> str:
    """Re-wrap each blank-line separated paragraph; indented lines (examples) stay as they are."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        indented = any(line.startswith(" ") for line in paragraph.splitlines())
        paragraphs.append(paragraph if indented else textwrap.fill(" ".join(paragraph.split()), width))
    return "\n\n".join(paragraphs)


def split_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, where ``KEY=VALUE`` words after the options join ``overrides``.

    argparse fills a ``nargs="*"`` positional only in one run of positional words, so
    ``sftlab eval tiny --tasks gsm8k limit=3`` would reject ``limit=3`` as unrecognised.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args


# -- internals ----------------------------------------------------------------------------

def _as_flag(spec: Flag | str | tuple[str, ...]) -> Flag:
    if isinstance(spec, Flag):
        return spec
    return Flag(spec) if isinstance(spec, str) else Flag(*spec)


def _add_flag(parser, key: str, flag: Flag, doc, hint: Any) -> None:
    """One argparse argument for ``key``: its value lands in ``args.<_DEST><key>``, None
    when not given (so the YAML file or the dataclass default applies)."""
    kwargs: dict[str, Any] = {"help": _help(flag, doc), "default": None}
    base = _unwrap_optional(hint)
    choices = flag.choices or doc.choices
    if base is bool and not flag.positional:
        kwargs["action"] = "store_true"
    else:
        # choices: argparse shows {a,b,c} itself unless a metavar is given
        kwargs["metavar"] = flag.metavar or (None if choices else key.rsplit(".", 1)[-1].upper())
        if flag.append:
            kwargs["action"] = "append"
        else:
            kwargs["type"] = type(choices[0]) if choices else (base if base in (int, float) else str)
        if choices:
            kwargs["choices"] = choices
    if flag.positional:
        if flag.nargs:
            kwargs["nargs"] = flag.nargs
        parser.add_argument(_DEST + key, **kwargs)
    else:
        parser.add_argument(*flag.names, dest=_DEST + key, **kwargs)


def _help(flag: Flag, doc) -> str:
    """The attribute docstring and the default: ``"Evaluate only the first N items."``,
    ``"Sampling seed. (default: 1234)"``; ``%`` escaped for argparse."""
    text = flag.help or doc.doc
    if flag.required:
        text += " (required)"
    elif _worth_showing(doc.default):
        text += f" (default: {doc.default!r})"
    return text.replace("%", "%%")


def _mark_required(listing: str, required: list) -> str:
    """The key listing with ``(required)`` instead of the default of each required key: the
    command line must give it, so its dataclass default never applies there."""
    for doc in required:
        line = f"\n  {doc.signature()}\n"
        listing = listing.replace(line, f"\n  {dataclasses.replace(doc, default=dataclasses.MISSING).signature()}\n", 1)
    return listing


def _worth_showing(default: Any) -> bool:
    """None, False, empty and missing defaults say nothing a reader needs."""
    return not (default is None or default is False or default is dataclasses.MISSING
                or (isinstance(default, (str, list, dict)) and not default))


def _hint(config_class: type, key: str) -> Any:
    """The annotation of dotted ``key`` (``sampling.top_p`` -> ``float``)."""
    cls = config_class
    *sections, leaf = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[leaf]


def _unwrap_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _is_override(word: str, config_class: type) -> bool:
    """``limit=3`` is an override of ``EvalConfig``; ``out=x/a.json`` or a path is not."""
    key = word.partition("=")[0]
    return "=" in word and key in field_docs(config_class)


def _check_required(flags: dict[str, Flag], data: dict[str, Any], overrides: list[str]) -> None:
    given = {o.partition("=")[0].strip() for o in overrides}
    for key, flag in flags.items():
        if flag.required and key not in given and not _has_dotted(data, key):
            name = flag.names[-1] if not flag.positional else (flag.metavar or key.upper())
            raise ConfigError(f"{name} is required (or {key}=... , or `{key}:` in the --config file)")


def _has_dotted(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
