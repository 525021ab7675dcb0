"""What an evaluation task is: data, a prompt per item, and a score per response.

Declarative where it is data (the task's settings), code where it is logic (extract and
score). A generation task never generates by itself: the runner batches prompts through a
``Generator`` (or reads precomputed responses) and calls ``score`` on each response, so the
same task scores a model, a remote endpoint or someone else's output file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
