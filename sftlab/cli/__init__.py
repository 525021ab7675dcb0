"""``sftlab <command>``: thin adapters from argv to the config dataclasses of the API.

Each command group lives in its own module with a ``register(subparsers)`` function that
builds its options from the command's config dataclass (``sftlab.cli.options``). Only the
module of the command being run is imported, so ``sftlab --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from sftlab.cli.options import split_overrides
from sftlab.errors import SftlabError

# command -> (the module that registers it, its line in `sftlab --help`), in listing order.
# `sftlab --help` imports none of the modules (they import the configs, and those torch);
# `sftlab CMD ...` imports only CMD's module. tests/unit/cli/test_help.py checks that these
# lines are the ones the modules register.
COMMANDS = {
    "quickstart": ("quickstart", "the main job: build data, evaluate, LoRA-tune, evaluate, report"),
    "data": ("data", "convert, inspect, mask-preview and mix instruction data"),
    "synth": ("synth", "synthesise instruction data with a teacher (distill, self-instruct, evol, ...)"),
    "train": ("train", "fine-tune a model on instruction data (full, LoRA, QLoRA, ...)"),
    "models": ("models", "list the models available locally"),
    "generate": ("models", "complete a file of prompts (resumable)"),
    "chat": ("models", "chat with a model in the terminal"),
    "serve": ("models", "serve a model over an OpenAI-compatible HTTP API"),
    "export": ("models", "export a trained model or adapter (optionally merged)"),
    "check": ("models", "prove a model is served as it was trained (templates, stops, parsing)"),
    "eval": ("eval", "evaluate a model on close-ended tasks (GSM8K, MATH, BBH, MC, ...)"),
    "judge": ("eval", "LLM-as-a-judge: win rates (AlpacaEval, LC) and MT-Bench"),
    "report": ("eval", "compare result directories: HTML page + Markdown summary"),
    "study": ("study", "the survey's analyses: size-sweep, compare-data, superficial, imitation, helm"),
}


def build_parser(argv: list[str] | None = None, *, everything: bool = False) -> argparse.ArgumentParser:
    """The parser for ``argv``: the full parser of the command it names, a one-line entry
    for every other command; ``everything=True`` registers every command in full."""
    parser = argparse.ArgumentParser(
        prog="sftlab",
        description="Instruction tuning end to end: build data, train, generate, serve, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"sftlab {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((word for word in argv or [] if not word.startswith("-")), None)
    to_load = {module for module, _ in COMMANDS.values()} if everything else \
        {COMMANDS[wanted][0]} if wanted in COMMANDS else set()
    loaded: set[str] = set()
    for name, (module, help) in COMMANDS.items():
        if module not in to_load:
            subparsers.add_parser(name, help=help)
        elif module not in loaded:  # registers all of the module's commands at once
            importlib.import_module(f"sftlab.cli.{module}").register(subparsers)
            loaded.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = _warning_line
    parser = build_parser(argv)
    args = split_overrides(parser, argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except SftlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`sftlab data stats F | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line for a terminal (``warning: ...``), without the file, line number
    and source line of the code that raised it, which say nothing to the user."""
    return f"warning: {message}\n"


def _version() -> str:
    from sftlab import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
