"""What an evaluation task is: data, a prompt per item, and a score per response.

Declarative where it is data (the task's settings), code where it is logic (extract and
score). A generation task never generates by itself: the runner batches prompts through a
``Generator`` (or reads precomputed responses) and calls ``score`` on each response, so the
same task scores a model, a remote endpoint or someone else's output file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.io import read_rows
from sftlab.errors import DataError
from sftlab.infer.base import Prompt, SamplingConfig
from sftlab.registry import Registry

TASKS: Registry = Registry("task")


@dataclass
class Sample:
    """One scored item, as written to ``samples.jsonl``: the prompt exactly as rendered,
    the raw output, the extracted answer and the scores (metric name -> value)."""

    task: str
    id: str
    prompt: Any
    target: Any
    output: str | None
    extracted: Any
    scores: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)


class GenerationTask:
    """Base of tasks scored on generated text. Subclasses set ``name``/``sampling`` and
    implement ``docs``, ``prompt`` and ``score``; ``aggregate`` may add derived metrics."""

    name: str = ""
    sampling: SamplingConfig = SamplingConfig()
    # the task's file(s) relative to a data folder (``--data-dir``); "" = the folder itself
    data_file: str = ""
    # few-shot examples in the prompt; None = the task has no few-shot setting
    num_fewshot: int | None = None

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        """The evaluation items; each has a stable ``id``."""
        raise NotImplementedError

    def prompt(self, doc: dict[str, Any]) -> Prompt:
        raise NotImplementedError

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        """-> (extracted answer, {metric: value})."""
        raise NotImplementedError

    def aggregate(self, samples: list[Sample]) -> dict[str, float]:
        """Default: the mean of every per-sample metric."""
        metrics: dict[str, list[float]] = {}
        for sample in samples:
            for key, value in sample.scores.items():
                metrics.setdefault(key, []).append(value)
        return {key: sum(values) / len(values) for key, values in metrics.items()}


class LoglikelihoodTask:
    """Base of multiple-choice tasks scored by the log-likelihood of each choice.

    The runner scores ``context(doc) + choice`` for every choice with one batched forward
    pass (``sftlab.eval.loglik``); the prediction is the choice with the highest summed
    log-probability (``acc``) or the highest log-probability per character (``acc_norm``).
    """

    name: str = ""
    data_file: str = ""
    num_fewshot: int | None = None

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def context(self, doc: dict[str, Any]) -> str:
        """The text before a choice, e.g. ``"Question: ...\\nAnswer:"``."""
        raise NotImplementedError

    def choices(self, doc: dict[str, Any]) -> list[str]:
        """The continuations to score, e.g. ``[" A", " B", " C", " D"]``."""
        raise NotImplementedError

    def gold(self, doc: dict[str, Any]) -> int:
        """Index of the right choice."""
        raise NotImplementedError


def data_path_for(task, data_dir: str | None) -> str | None:
    """``data_dir / task.data_file`` (or ``data_dir`` when the task names no file); None
    when no folder is given, so the task uses its own default or asks for one."""
    if data_dir is None:
        return None
    relative = getattr(task, "data_file", "") or ""
    return str(Path(data_dir) / relative) if relative else str(data_dir)


def read_task_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a task's data file (JSONL or a JSON list, gzipped or not) as
    ``sftlab.data.io.read_rows`` reads them; a bad line is a ``DataError`` naming file and
    line, a missing file says how to point a task at its data."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path), hint="pass --data-dir DIR (the folder "
                        "holding the task's files) or TASK=PATH in --tasks")
    return read_rows(path)
