"""``sftlab train CONFIG.yaml [section.key=value ...]``: supervised fine-tuning.

The YAML file and the overrides build one ``sftlab.train.config.TrainConfig``; the run
writes its resolved config, metrics, checkpoints and the trained model into
``output_dir``. Multi-process: ``accelerate launch -m sftlab train CONFIG.yaml`` or
``torchrun --nproc-per-node 2 -m sftlab train CONFIG.yaml``.
"""
from __future__ import annotations

import os

from sftlab.cli.options import add_config_arguments, config_from_args
from sftlab.train.config import TrainConfig

EXAMPLES = """\
examples:
  sftlab train examples/sft_tiny.yaml
  sftlab train examples/sft_lora_smollm2.yaml optim.lr=2.0e-4 max_steps=100 output_dir=runs/lora1
  sftlab train examples/sft_tiny.yaml output_dir=runs/a --resume
  torchrun --nproc-per-node 2 -m sftlab train examples/sft_tiny.yaml          # 2 processes (CPU: gloo)
  accelerate launch --config_file examples/accelerate/fsdp.yaml -m sftlab train examples/sft_full_smollm2.yaml
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model on instruction data (full, LoRA, QLoRA, ...)",
        description="Fine-tune a causal LM on chat/instruction data with one training loop. "
                    "Writes run.json, metrics.jsonl, loss.png, checkpoints/ and model/ "
                    "(or adapter/) into output_dir.",
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml",
                        help="YAML config file (optional: all keys have defaults)")
    add_config_arguments(parser, TrainConfig, config_option=False, epilog=EXAMPLES)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in output_dir (same as resume=true)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, model and data, print the plan, do not train")
    parser.set_defaults(handler=run)


def run(args) -> int:
    config_path = args.config
    if config_path is not None and "=" in config_path:  # only overrides were given
        args.overrides, config_path = [config_path] + list(args.overrides), None
    if args.resume:
        args.overrides = list(args.overrides) + ["resume=true"]
    config = config_from_args(TrainConfig, args, config_file=config_path)
    if args.dry_run:
        from sftlab.train.sft import setup  # lazy: the training loop loads torch and accelerate

        run_ = setup(config)
        print(f"dry run: {run_.total_steps} steps of {len(run_.units)} units "
              f"({run_.steps_per_epoch} per epoch); output_dir {run_.output_dir}")
        return 0
    from sftlab.train.sft import train  # lazy: see above

    result = train(config)
    final = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    line = f"done: {result.steps} steps, final train loss {final}"
    if result.eval_loss is not None:
        line += f", eval loss {result.eval_loss:.4f}"
    if result.saved_to is not None:
        line += f"; saved {result.saved_to}"
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per process
        print(line)
    return 0
