"""``sftlab quickstart``: the main job, end to end, on the embedded default model."""
from __future__ import annotations

import argparse

DESCRIPTION = """Instruction tuning in one command, in about 15 minutes on a 2-core CPU.

1. builds instruction data from a dozen exactly-checkable tasks through several natural-language
   templates each (Flan style), holding out some templates and whole tasks for evaluation;
2. evaluates SmolLM2-135M-Instruct on the held-out instances (exact match);
3. fine-tunes it with LoRA through `sftlab train` (the config is saved in the run directory);
4. evaluates again and writes report.html and summary.json with 95% intervals.

Everything lands in one run directory, printed first. A second run reuses the converted model,
the built data and the base model's answers."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="the main job: build data, evaluate, LoRA-tune, evaluate, report",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sftlab quickstart\n  sftlab quickstart --fast --model tiny\n"
               "  sftlab quickstart train_per_task=96 epochs=2 threads=2")
    parser.add_argument("overrides", nargs="*", help="key=value settings (see --show-config)")
    parser.add_argument("--model", help="model to tune (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--output-dir", help="run directory (default: runs/quickstart-<date>-<time>)")
    parser.add_argument("--fast", action="store_true", help="a tiny version (seconds): for tests and dry runs")
    parser.add_argument("--show-config", action="store_true", help="print the settings and exit")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from dataclasses import asdict

    from sftlab.config import build_config
    from sftlab.quickstart import QuickstartConfig, run_quickstart

    values = {}
    if args.model:
        values["model"] = args.model
    if args.output_dir:
        values["output_dir"] = args.output_dir
    if args.fast:
        values["fast"] = True
    config = build_config(QuickstartConfig, values, args.overrides)
    if args.show_config:
        for key, value in asdict(config).items():
            print(f"{key}: {value}")
        return 0
    run_quickstart(config)
    return 0
