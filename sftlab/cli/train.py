"""``sftlab train CONFIG.yaml [section.key=value ...]``: supervised fine-tuning.

The YAML file and the overrides build one ``sftlab.train.config.TrainConfig``; the run
writes its resolved config, metrics, checkpoints and the trained model into
``output_dir``. Multi-process: ``accelerate launch -m sftlab train CONFIG.yaml`` or
``torchrun --nproc-per-node 2 -m sftlab train CONFIG.yaml``.
"""
from __future__ import annotations

import argparse
import os

EXAMPLES = """\
examples:
  sftlab train examples/sft_tiny.yaml
  sftlab train examples/sft_lora.yaml method.name=lora optim.lr=2.0e-4 max_steps=100
  sftlab train examples/sft_tiny.yaml output_dir=runs/a --resume
  torchrun --nproc-per-node 2 -m sftlab train examples/sft_tiny.yaml          # 2 processes (CPU: gloo)
  accelerate launch --config_file examples/accelerate/fsdp.yaml -m sftlab train examples/sft_full_smollm2.yaml

keys (section.key=value):
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model on instruction data (full, LoRA, QLoRA, ...)",
        description="Fine-tune a causal LM on chat/instruction data with one training loop. "
                    "Writes run.json, metrics.jsonl, loss.png, checkpoints/ and model/ "
                    "(or adapter/) into output_dir.",
        epilog=EXAMPLES + _keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML config file (optional: all keys have defaults)")
    # REMAINDER: flags may come after the overrides too (``cfg.yaml lr=... --resume``)
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="section.key=value overrides, e.g. optim.lr=1.0e-4")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in output_dir (same as resume=true)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, model and data, print the plan, do not train")
    parser.set_defaults(handler=run)


def _keys_help() -> str:
    try:
        from sftlab.config import field_docs
        from sftlab.train.config import TrainConfig
    except ImportError:  # keep --help working whatever happens
        return "  (see sftlab/train/config.py)\n"
    return "".join(f"  {key}: {doc}\n" for key, doc in field_docs(TrainConfig).items())


def run(args) -> int:
    from sftlab.config import load_config
    from sftlab.train.config import TrainConfig

    config_path = args.config
    overrides = [o for o in args.overrides if o not in ("--resume", "--dry-run")]
    args.resume = args.resume or "--resume" in args.overrides
    args.dry_run = args.dry_run or "--dry-run" in args.overrides
    if config_path is not None and "=" in config_path:  # only overrides were given
        overrides.insert(0, config_path)
        config_path = None
    if args.resume:
        overrides.append("resume=true")
    config = load_config(TrainConfig, config_path, overrides)
    if args.dry_run:
        from sftlab.train.sft import setup

        run_ = setup(config)
        print(f"dry run: {run_.total_steps} steps of {len(run_.units)} units "
              f"({run_.steps_per_epoch} per epoch); output_dir {run_.output_dir}")
        return 0
    from sftlab.train.sft import train

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
