"""HINT vs plain instruction concatenation (LoRA) at the same training budget, on the
quickstart task family (``sftlab.quickstart.tasks``: a small stand-in for Super-NI).

Every row's system message is the instruction: a task definition (one of the task's
training templates, its fields shown as ``<field>``) plus ``--shots`` solved examples; the
user turn is the instance (its fields, one ``name: value`` line each). Both methods train
on the SAME tokenized rows for the same steps, batch and learning rate:

- ``concat``: LoRA on the whole row (it reads the instruction with every instance);
- ``hint``: ``method.name: hint`` (it reads the instruction once per task, through the
  hypernetwork, and the instance alone).

Evaluation: greedy exact match (``tasks.exact_match``) on fresh instances of the seen
tasks and of the held-out ``UNSEEN_TASKS``, each with one fixed instruction per task
(definition from template 0, fixed examples), with 95% Wilson intervals. HINT compiles each
task's instruction once (``compile_task``) and decodes the instances on the bare base model
with the compiled modules (``apply_task``).

Cost: mean prompt tokens per instance with and without the instruction, and the prefill
FLOPs per instance, ``2 N tokens`` (N: the base model's non-embedding parameters; attention
scores left out) plus, for HINT, the generated modules' own FLOPs per token and the
once-per-task encoding ``2 N instruction_tokens`` amortised over the task's instances::

    python scripts/hint_vs_concat.py --model tiny --steps 20
    flock /tmp/sftlab-heavy.lock env OMP_NUM_THREADS=2 .venv/bin/python scripts/hint_vs_concat.py \
        --model default --steps 60 --eval-per-task 20
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

from sftlab.config import build_config
from sftlab.data.chat import apply_template, tokenize_conversations
from sftlab.models import load_model, load_tokenizer, pad_id
from sftlab.models.hint import apply_task, compile_task
from sftlab.quickstart.tasks import TASKS, UNSEEN_TASKS, exact_match
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train
from sftlab.types import Conversation, Message


def definition(task, template: int) -> str:
    """The template with its fields as ``<field>``: "Sort these numbers ...: <numbers>"."""
    return re.sub(r"\{(\w+)\}", r"<\1>", task.templates[template])


def instance_text(fields: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in fields.items())


def instruction(task, template: int, rng: random.Random, shots: int) -> str:
    lines = [f"Definition: {definition(task, template)}"]
    for _ in range(shots):
        fields, answer = task.make(rng)
        lines += ["", f"Example input:\n{instance_text(fields)}", f"Example output: {answer}"]
    return "\n".join(lines)


def training_rows(names, rows_per_task: int, shots: int, variants: int, seed: int) -> list[Conversation]:
    """``variants`` instructions per seen task (a training template and examples each)."""
    rng = random.Random(seed)
    out = []
    for name in names:
        task = TASKS[name]
        systems = [instruction(task, rng.choice(task.train_templates()), rng, shots)
                   for _ in range(variants)]
        for index in range(rows_per_task):
            fields, answer = task.make(rng)
            out.append(Conversation([Message("system", systems[index % variants]),
                                     Message("user", instance_text(fields)),
                                     Message("assistant", answer)], id=f"{name}-{index}"))
    rng.shuffle(out)
    return out


def eval_sets(names, per_task: int, shots: int, seed: int) -> dict[str, tuple[str, list]]:
    """task -> (its one instruction, [(instance text, answer)])."""
    out = {}
    for name in names:
        rng = random.Random(f"{seed}-eval-{name}")
        task = TASKS[name]
        system = instruction(task, 0, rng, shots)
        out[name] = (system, [(instance_text(f), a) for f, a in (task.make(rng) for _ in range(per_task))])
    return out


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def prompt_ids(tokenizer, system: str, user: str) -> list[int]:
    text = apply_template(tokenizer, [Message("system", system), Message("user", user)],
                          add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate(model, prompts: list[list[int]], pad: int, max_new_tokens: int, eos) -> list[list[int]]:
    """Greedy, left-padded batch; the new tokens of each prompt."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):] = torch.tensor(prompt)
        mask[b, width - len(prompt):] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             eos_token_id=eos)
    return [row[width:].tolist() for row in out]


def score(tokenizer, outputs, answers) -> int:
    return sum(exact_match(tokenizer.decode(o, skip_special_tokens=True).split("\n")[0], a)
               for o, a in zip(outputs, answers))


def summarise(correct: int, n: int) -> dict:
    low, high = wilson(correct, n)
    return {"correct": correct, "n": n, "accuracy": correct / max(n, 1), "low": low, "high": high}


def compare(model: str = "tiny", steps: int = 20, batch_size: int = 8, lr: float = 1e-3,
            rows_per_task: int = 64, variants: int = 4, shots: int = 2, eval_per_task: int = 10,
            max_new_tokens: int = 16, seed: int = 0, output_dir: str | Path = "runs/hint_vs_concat",
            hint_overrides: list[str] = (), lora_rank: int = 8, max_length: int = 384) -> dict:
    """Train both methods on the same rows; evaluate; return the report dict."""
    output_dir = Path(output_dir)
    tokenizer = load_tokenizer(model)
    seen = [name for name in TASKS if name not in UNSEEN_TASKS]
    rows = training_rows(seen, rows_per_task, shots, variants, seed)
    examples = tokenize_conversations(rows, tokenizer, max_length=max_length).examples
    evals = {"seen": eval_sets(seen, eval_per_task, shots, seed),
             "unseen": eval_sets(UNSEEN_TASKS, eval_per_task, shots, seed)}
    pad = pad_id(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    report: dict = {"model": model, "steps": steps, "batch_size": batch_size, "lr": lr,
                    "train_rows": len(examples), "shots": shots}
    for method in ("concat", "hint"):
        started = time.perf_counter()
        overrides = ([f"method.{o}" if o.startswith("hint.") else f"method.hint.{o}"
                      for o in hint_overrides] if method == "hint"
                     else [f"method.lora.rank={lora_rank}", f"method.lora.alpha={2 * lora_rank}"])
        config = build_config(TrainConfig, {
            "model": {"name": model}, "method": {"name": "hint" if method == "hint" else "lora"},
            "max_steps": steps, "batch_size": batch_size, "seed": seed,
            "optim": {"lr": lr, "schedule": "constant", "warmup_steps": 0},
            "data": {"max_length": max_length}, "output_dir": str(output_dir / method),
            "progress": False, "plot": False, "save_model": False}, overrides)
        result = train(config, model=load_model(model).train(), tokenizer=tokenizer,
                       train_examples=examples)
        trained = result.prepared.model.eval()
        losses = [row["loss"] for row in result.history if "loss" in row]
        entry = {"first_loss": losses[0], "last_loss": losses[-1],
                 "trainable": result.prepared.summary[0], "train_s": time.perf_counter() - started}
        started = time.perf_counter()
        for split, sets in evals.items():
            correct = n = 0
            for name, (system, items) in sets.items():
                prompts = [prompt_ids(tokenizer, system, user) for user, _ in items]
                if method == "hint":
                    cut = trained.split.boundary(prompts[0])
                    task = compile_task(trained, prompts[0][:cut])  # once per task
                    with apply_task(trained.base, task):
                        outputs = generate(trained.base, [p[cut:] for p in prompts], pad,
                                           max_new_tokens, eos)
                else:
                    outputs = generate(trained, prompts, pad, max_new_tokens, eos)
                correct += score(tokenizer, outputs, [a for _, a in items])
                n += len(items)
            entry[split] = summarise(correct, n)
        entry["eval_s"] = time.perf_counter() - started
        report[method] = entry
        print(f"{method}: {json.dumps(entry)}", flush=True)
        if method == "hint":
            report["flops"] = flops(trained, evals, tokenizer, eval_per_task)
            report["tokens"] = report["flops"].pop("tokens")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def flops(hint, evals, tokenizer, per_task: int) -> dict:
    """Prefill FLOPs per instance, with and without the instruction (see the docstring)."""
    base = hint.base
    embedding = {id(p) for p in base.get_input_embeddings().parameters()}
    embedding |= {id(p) for p in base.get_output_embeddings().parameters()}
    n_base = sum(p.numel() for p in base.parameters() if id(p) not in embedding)
    settings, shape = hint.settings, hint.hypernetwork.shape
    # per token and layer: each adapter's down and up, the prefix's scores and read
    per_token_modules = 2 * shape.layers * (
        shape.sites * 2 * shape.dim * settings["bottleneck"]
        + 2 * settings["prefix_tokens"] * shape.heads * shape.head_dim)
    full, instance, instruction = [], [], []
    for sets in evals.values():
        for system, items in sets.values():
            for user, _ in items:
                ids = prompt_ids(tokenizer, system, user)
                cut = hint.split.boundary(ids)
                full.append(len(ids))
                instance.append(len(ids) - cut)
                instruction.append(cut)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    concat = 2 * n_base * mean(full)
    hint_cost = (2 * n_base + per_token_modules) * mean(instance) + 2 * n_base * mean(instruction) / per_task
    return {"tokens": {"prompt_with_instruction": mean(full), "prompt_instance_only": mean(instance),
                       "instruction": mean(instruction), "saved_fraction": 1 - mean(instance) / mean(full)},
            "non_embedding_params": n_base, "concat_prefill": concat, "hint_prefill": hint_cost,
            "ratio": concat / hint_cost, "instances_per_task": per_task}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--eval-per-task", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--hint", action="append", default=[],
                        help="a method.hint setting, KEY=VALUE (e.g. bottleneck=8)")
    parser.add_argument("--output-dir", default="runs/hint_vs_concat")
    args = parser.parse_args(argv)
    report = compare(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     shots=args.shots, eval_per_task=args.eval_per_task,
                     max_new_tokens=args.max_new_tokens, output_dir=args.output_dir,
                     hint_overrides=args.hint, lora_rank=args.lora_rank)
    for method in ("concat", "hint"):
        entry = report[method]
        print(f"{method:6} trainable {entry['trainable']:,}  loss {entry['first_loss']:.3f} -> "
              f"{entry['last_loss']:.3f}  train {entry['train_s']:.0f}s eval {entry['eval_s']:.0f}s")
        for split in ("seen", "unseen"):
            row = entry[split]
            print(f"  {split:6} exact match {row['correct']}/{row['n']} = {row['accuracy']:.3f} "
                  f"[{row['low']:.3f}, {row['high']:.3f}]")
    tokens, cost = report["tokens"], report["flops"]
    print(f"prompt tokens per instance: {tokens['prompt_with_instruction']:.1f} with the instruction, "
          f"{tokens['prompt_instance_only']:.1f} without ({100 * tokens['saved_fraction']:.0f}% saved)")
    print(f"prefill FLOPs per instance: concat {cost['concat_prefill']:.3g}, hint {cost['hint_prefill']:.3g} "
          f"(encoding amortised over {cost['instances_per_task']}): ratio {cost['ratio']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
