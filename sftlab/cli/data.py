"""``sftlab data ...``: convert, stats, show-mask, mix.

The group is defined here; each subcommand registers itself from the module that owns it.
"""
from __future__ import annotations

import importlib

# module -> owner: data_io (convert, stats), data_mask (show-mask), data_mix (mix)
SUBCOMMAND_MODULES = ["data_io", "data_mask", "data_mix"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="convert, inspect, mask-preview and mix instruction data",
                                   description="Instruction data: convert between formats, count and plot "
                                               "lengths, show which tokens train, mix sources, apply templates.")
    group = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help())
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"sftlab.cli.{name}").register(group)
