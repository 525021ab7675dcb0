"""Scored samples -> result summaries, the three result files, and the table on stdout.

Every per-sample metric gets its mean with a seeded percentile-bootstrap 95% interval,
standard error and ``n``; subtasks get their own rows and a macro average; a task's own
aggregate (IFEval's instruction-level accuracy) replaces the plain mean where it differs; a
task with several samples per item (HumanEval) reports per-item pass@k, bootstrapped over items::

    summarize(task, samples, seed=1234, resamples=1000)
    # {"metrics": {"exact_match": {"mean": 0.5, "low": 0.0, "high": 1.0, "stderr": 0.35, "n": 2}},
    #  "subtasks": {...}, "extra": {"exact_match_macro": 0.5}}
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.eval.base import Sample
from sftlab.eval.metrics import bootstrap_ci, mean
from sftlab.report.tables import is_count


def summarize(task, samples: list[Sample], *, seed: int, resamples: int) -> dict[str, Any]:
    """Per metric: mean, bootstrap 95% interval, stderr, n; per subtask and macro average."""
    metrics = _intervals(samples, seed, resamples)
    summary: dict[str, Any] = {"metrics": metrics, "subtasks": {}, "extra": {}}
    subtasks = sorted({s.meta.get("subtask") for s in samples if s.meta.get("subtask")})
    for subtask in subtasks:
        summary["subtasks"][subtask] = _intervals([s for s in samples if s.meta.get("subtask") == subtask],
                                                  seed, resamples)
    if subtasks:
        for metric in metrics:
            summary["extra"][f"{metric}_macro"] = mean(
                [summary["subtasks"][t][metric]["mean"] for t in subtasks])
    # a task's own aggregate wins where it is not the plain mean (IFEval's instruction-level
    # accuracy pools instructions over prompts); its interval is a bootstrap of that aggregate
    aggregated = task.aggregate(samples) if hasattr(task, "aggregate") else {}
    # several samples per item (HumanEval's pass@k): per-item values, interval over items
    per_item = task.problem_scores(samples) if hasattr(task, "problem_scores") else {}
    pooled = [k for k, v in aggregated.items()
              if k in metrics and k not in per_item and abs(v - metrics[k]["mean"]) > 1e-9]
    if pooled:
        metrics.update(_bootstrap_aggregate(task, samples, pooled, aggregated, seed, resamples))
    for key, values in per_item.items():
        metrics[key] = {**bootstrap_ci(values, seed=seed, resamples=resamples), "aggregate": "per problem"}
    for key, value in aggregated.items():
        if key not in metrics:
            summary["extra"][key] = value
    return summary


def write_outputs(out: Path, results: dict[str, Any], samples: list[Sample]) -> None:
    """``results.json``, ``settings.json`` (``results["settings"]``) and ``samples.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "settings.json").write_text(json.dumps(results["settings"], indent=2, default=str),
                                       encoding="utf-8")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(dataclasses.asdict(sample), ensure_ascii=False, default=str) + "\n")


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table: task, metric, value, 95% interval, n (values in percent; counts such
    as ``items_with_fewer_shots`` as the integers they are)."""
    lines = [f"{'task':<28} {'metric':<24} {'value':>7}  {'95% CI':<17} {'n':>5}"]
    for task, summary in results["tasks"].items():
        for metric, s in summary["metrics"].items():
            lines.append(f"{task:<28} {metric:<24} {100 * s['mean']:>7.2f}  "
                         f"[{100 * s['low']:6.2f}, {100 * s['high']:6.2f}] {s['n']:>5}")
        for key, value in summary["extra"].items():
            if isinstance(value, (int, float)) and is_count(key):
                lines.append(f"{task:<28} {key:<24} {value:>7}")
            elif isinstance(value, (int, float)):
                lines.append(f"{task:<28} {key:<24} {100 * value:>7.2f}")
    return "\n".join(lines)


# -- internals ----------------------------------------------------------------------------

def _bootstrap_aggregate(task, samples, keys, point, seed: int, resamples: int) -> dict[str, dict[str, float]]:
    """Percentile bootstrap of ``task.aggregate`` itself over resampled items (seeded)."""
    rng = np.random.default_rng(seed)
    draws = {key: [] for key in keys}
    for _ in range(resamples):
        picked = [samples[i] for i in rng.integers(0, len(samples), len(samples))]
        values = task.aggregate(picked)
        for key in keys:
            draws[key].append(values[key])
    return {key: {"mean": float(point[key]), "low": float(np.quantile(draws[key], 0.025)),
                  "high": float(np.quantile(draws[key], 0.975)), "stderr": float(np.std(draws[key], ddof=1)),
                  "n": len(samples), "aggregate": "task"} for key in keys}


def _intervals(samples: list[Sample], seed: int, resamples: int) -> dict[str, dict[str, float]]:
    values: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in sample.scores.items():
            values.setdefault(key, []).append(float(value))
    return {key: bootstrap_ci(v, seed=seed, resamples=resamples) for key, v in values.items()}
