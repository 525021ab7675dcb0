"""``sftlab quickstart``: the main job, end to end, on the embedded default model."""
from __future__ import annotations

from dataclasses import asdict

from sftlab.cli.options import Flag, add_config_arguments, config_from_args
from sftlab.errors import ConfigError
from sftlab.quickstart.config import QuickstartConfig

DESCRIPTION = """Instruction tuning in one command, in about 15 minutes on a 2-core CPU.

1. builds instruction data from 16 exactly-checkable tasks through several natural-language
   templates each (Flan style), holding out some templates and whole tasks for evaluation;
2. evaluates SmolLM2-135M-Instruct on the held-out instances (exact match);
3. fine-tunes it with LoRA through `sftlab train` (the config is saved in the run directory);
4. evaluates again and writes report.html and summary.json with 95% intervals.

Everything lands in one run directory, printed first. A second run reuses the converted model,
the built data and the base model's answers."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="the main job: build data, evaluate, LoRA-tune, evaluate, report",
        description=DESCRIPTION)
    add_config_arguments(parser, QuickstartConfig, flags={
        "model": "--model",
        "output_dir": Flag("--output-dir", "-o"), "fast": "--fast", "vision": "--vision",
        "objective": "--objective"},
        epilog="examples:\n  sftlab quickstart\n  sftlab quickstart --fast --model tiny\n"
               "  sftlab quickstart train_per_task=96 epochs=2 threads=2\n"
               "  sftlab quickstart --vision -o runs/qs-vision   # visual instruction tuning (LLaVA-style)\n"
               "  sftlab quickstart --objective dpo -o runs/qs-dpo   # or grpo, ppo: preference / RL objectives")
    parser.add_argument("--show-config", action="store_true", help="print the settings and exit")
    parser.set_defaults(handler=run)


def run(args) -> int:
    config = config_from_args(QuickstartConfig, args)
    if args.show_config:
        for key, value in asdict(config).items():
            print(f"{key}: {value}")
        return 0
    if config.objective != "sft":  # DPO, GRPO or PPO on the quickstart's tasks
        if config.vision:
            raise ConfigError(f"--objective {config.objective} runs on the text tasks; drop --vision "
                              "(the vision quickstart trains objective=vision)")
        from sftlab.quickstart.preference import run_preference_quickstart  # lazy, as below

        run_preference_quickstart(config)
        return 0
    if config.vision:  # the visual instruction-tuning quickstart
        from sftlab.quickstart.vision import run_vision_quickstart  # lazy, as below

        run_vision_quickstart(config)
        return 0
    from sftlab.quickstart.pipeline import run_quickstart  # lazy: torch and the trainer; keeps --help fast

    run_quickstart(config)
    return 0
