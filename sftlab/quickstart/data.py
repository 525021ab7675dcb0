"""Build the quickstart's instruction data by integration (Flan style) from ``tasks.py``.

Training data: seen tasks through their training templates. Evaluation data, on
instances never trained on: seen tasks through held-out templates, and unseen tasks
through all their templates. Deterministic from the seed.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from sftlab.data.io import read_rows
from sftlab.quickstart.tasks import TASKS, UNSEEN_TASKS, Task
from sftlab.types import Conversation, Message

SEEN_UNSEEN_TEMPLATE = "seen task, unseen template"
UNSEEN_TASK = "unseen task"
GROUPS = (SEEN_UNSEEN_TEMPLATE, UNSEEN_TASK)


@dataclass
class EvalItem:
    id: str
    task: str
    group: str
    template: int
    prompt: str
    answer: str


@dataclass
class QuickstartData:
    train: list[Conversation]
    eval: list[EvalItem]


def build(seed: int = 0, train_per_task: int = 48, eval_per_task: int = 12) -> QuickstartData:
    """Instances are drawn once per task and split, so train and eval never share one.
    Each task has its own random stream and its eval instances are drawn first, so the eval
    set depends only on (seed, eval_per_task): runs with more or less training data are
    compared on the same items."""
    train: list[Conversation] = []
    evaluation: list[EvalItem] = []
    for name, task in TASKS.items():
        unseen = name in UNSEEN_TASKS
        rng = random.Random(f"{seed}:{name}")
        instances = _distinct_instances(task, rng, (0 if unseen else train_per_task) + eval_per_task)
        eval_instances, train_instances = instances[:eval_per_task], instances[eval_per_task:]
        eval_templates = list(range(len(task.templates))) if unseen else task.eval_templates()
        for k, (fields, answer) in enumerate(eval_instances):
            template = eval_templates[k % len(eval_templates)]
            evaluation.append(EvalItem(
                id=f"{name}-eval-{k}", task=name, group=UNSEEN_TASK if unseen else SEEN_UNSEEN_TEMPLATE,
                template=template, prompt=task.render(template, fields), answer=answer))
        for k, (fields, answer) in enumerate(train_instances):
            template = rng.choice(task.train_templates())
            train.append(Conversation(
                [Message("user", task.render(template, fields)), Message("assistant", answer)],
                id=f"{name}-train-{k}", source="quickstart", meta={"task": name, "template": template}))
    random.Random(seed).shuffle(train)
    return QuickstartData(train, evaluation)


def _distinct_instances(task: Task, rng: random.Random, count: int) -> list[tuple[dict, str]]:
    seen, out = set(), []
    for _ in range(count * 50):
        fields, answer = task.make(rng)
        key = json.dumps(fields, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((fields, answer))
            if len(out) == count:
                return out
    raise RuntimeError(f"task {task.name}: could not draw {count} distinct instances")


def save(data: QuickstartData, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "train.jsonl").open("w") as f:
        for conversation in data.train:
            f.write(json.dumps(conversation.to_dict()) + "\n")
    with (directory / "eval.jsonl").open("w") as f:
        for item in data.eval:
            f.write(json.dumps(item.__dict__) + "\n")


def load(directory: Path) -> QuickstartData:
    """The data ``save`` wrote to ``directory`` (train.jsonl and eval.jsonl)."""
    train = [Conversation.from_dict(row) for row in read_rows(directory / "train.jsonl")]
    evaluation = [EvalItem(**row) for row in read_rows(directory / "eval.jsonl")]
    return QuickstartData(train, evaluation)
