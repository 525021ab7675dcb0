"""The intrinsic dimension of a small task (Aghajanyan et al. 2021's measurement, at toy scale).

Full fine-tuning and ``method.name=intrinsic`` (SAID) at several d train the same base on
the same data through sftlab's one loop (``sftlab.train.sft.train``); each run's held-out
loss is compared with the base model's. The improvement ``base_loss - loss`` of each d is
divided by full fine-tuning's, and the script reports the smallest d reaching 90% (the
paper's d_90, measured on a loss instead of a task metric).

The setting, all built here from the repository (no download):
- base: the tiny 2-layer Llama (``sftlab.models.tiny``, D = 139,584 parameters), first
  "pre-trained" by full fine-tuning on ``../shared/data/formats/alpaca_en_demo.json``
  (``--pretrain-steps``; 0 keeps the random model), because the paper's claim is about
  pre-trained models;
- task: the quickstart's checkable task family (``sftlab.quickstart.data.build``: 12 seen
  tasks for training; held out: seen tasks through unseen templates and unseen tasks),
  loss on the answer tokens;
- the same steps, batch and schedule (cosine, 10% warm-up) for every run; full fine-tuning
  at the best of ``--full-lrs`` and each d at the best of ``--intrinsic-lrs`` (lowest
  held-out loss: both sides tuned alike; the paper also tunes per d).

Prints one JSON object (also written to ``--out``)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/intrinsic_dimension.py            # ~5 minutes
    .venv/bin/python bench/intrinsic_dimension.py --dims 64,256 --steps 40     # a quick look
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "formats" / "alpaca_en_demo.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="64,256,1024,4096,16384")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each task run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--intrinsic-lrs", default="0.03,0.1,0.3,1.0")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "intrinsic_dimension.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sftlab-intrinsic-") as tmp:
        result = measure(args, Path(tmp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def measure(args, tmp: Path) -> dict:
    started = time.time()
    train_file, eval_file = write_task(tmp / "task", args.seed)
    base = pretrain(tmp / "base", args) if args.pretrain_steps else "tiny"
    common = {"model": {"name": base}, "data": {"paths": [str(train_file)], "eval_path": str(eval_file),
                                                "format": "canonical", "padding_free": True},
              "batch_size": args.batch_size, "max_steps": args.steps, "seed": args.seed}
    base_loss = run(tmp / "base-eval", common, {"name": "full"}, lr=0.0, steps=1)["eval_loss"]
    full = best_of([run(tmp / f"full-lr{lr}", common, {"name": "full"}, lr=float(lr))
                    for lr in args.full_lrs.split(",")])
    improvement = base_loss - full["eval_loss"]
    rows = []
    for dimension in [int(d) for d in args.dims.split(",")]:
        best = best_of([run(tmp / f"d{dimension}-lr{lr}", common,
                            {"name": "intrinsic", "intrinsic": {"dimension": dimension}}, lr=float(lr))
                        for lr in args.intrinsic_lrs.split(",")])
        rows.append({"dimension": dimension, **best,
                     "share_of_full": round((base_loss - best["eval_loss"]) / improvement, 4)})
    reached = [r["dimension"] for r in rows if r["share_of_full"] >= 0.9]
    return {"base": "tiny" if base == "tiny" else f"tiny after {args.pretrain_steps} full-FT steps on alpaca_en_demo",
            "task": "quickstart task family (held out: unseen templates + unseen tasks), answer-token loss",
            "steps": args.steps, "batch_size": args.batch_size, "base_eval_loss": round(base_loss, 4),
            "full": full, "intrinsic": rows, "d90": min(reached) if reached else None,
            "seconds": round(time.time() - started, 1)}


def best_of(tries: list[dict]) -> dict:
    """The try with the lowest held-out loss, with every try's loss by learning rate."""
    best = min(tries, key=lambda r: r["eval_loss"])
    return {**best, "eval_loss_by_lr": {t["lr"]: t["eval_loss"] for t in tries}}


def write_task(directory: Path, seed: int) -> tuple[Path, Path]:
    """The quickstart's training conversations and its held-out items as conversations."""
    from sftlab.quickstart import data as qdata
    from sftlab.types import Conversation, Message

    built = qdata.build(seed=seed, train_per_task=48, eval_per_task=12)
    directory.mkdir(parents=True)
    held_out = [Conversation([Message("user", item.prompt), Message("assistant", item.answer)], id=item.id)
                for item in built.eval]
    paths = directory / "train.jsonl", directory / "eval.jsonl"
    for path, conversations in zip(paths, (built.train, held_out)):
        path.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in conversations))
    return paths


def pretrain(directory: Path, args) -> str:
    """Full fine-tuning of the random tiny model on the Alpaca demo file; returns its model dir."""
    settings = {"model": {"name": "tiny"}, "data": {"paths": [str(ALPACA)], "max_length": 256,
                                                    "padding_free": True},
                "method": {"name": "full"}, "batch_size": 8, "max_steps": args.pretrain_steps,
                "seed": args.seed}
    run(directory, settings, {"name": "full"}, lr=1e-3, save=True)
    return str(directory / "model")


def run(directory: Path, common: dict, method: dict, lr: float, steps: int | None = None,
        save: bool = False) -> dict:
    """One ``sftlab train`` run; its final held-out loss, lr, trained count and seconds."""
    from sftlab.config import build_config
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    settings = {**common, "method": method, "output_dir": str(directory), "save_model": save,
                "plot": False, "progress": False, "threads": 1,
                "optim": {"lr": lr, "schedule": "cosine", "warmup_ratio": 0.1}}
    if steps is not None:
        settings["max_steps"] = steps
    started = time.time()
    result = train(build_config(TrainConfig, settings))
    trained = result.prepared.summary[0]
    return {"lr": lr, "eval_loss": None if result.eval_loss is None else round(result.eval_loss, 4),
            "train_loss": None if result.final_loss is None else round(result.final_loss, 4),
            "trainable": trained, "seconds": round(time.time() - started, 1)}


if __name__ == "__main__":
    main()
