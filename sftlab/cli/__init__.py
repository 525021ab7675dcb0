"""``sftlab <command>``: thin adapters from argv to the config dataclasses of the API.

Each command group lives in its own module with a ``register(subparsers)`` function; the
modules import heavy libraries (torch, transformers) inside their handlers so that
``sftlab --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from sftlab.errors import SftlabError

# command-group modules, in the order `sftlab --help` lists them
COMMAND_MODULES = ["quickstart", "data", "synth", "train", "models", "eval"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftlab",
        description="Instruction tuning end to end: build data, train, generate, serve, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"sftlab {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"sftlab.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


def _version() -> str:
    from sftlab import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
