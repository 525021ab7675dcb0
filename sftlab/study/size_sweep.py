"""``sftlab study size-sweep``: how much instruction data is enough (LIMA; Gupta et al.).

For each seed the pool is shuffled once and the first n_i examples train run i, so the
subsets are nested (n_1's examples are among n_2's): a difference between sizes is the
added data, not a different draw. ``mode: task_fraction`` (Gupta et al. 2023, on
Super-NaturalInstructions) takes a fraction of *each task's* examples instead, nested the
same way per task, either in one multi-task run per fraction or in one run per task
(``single_task``, evaluated on that task's items only).

Every run is evaluated on the same held-out items; the score at each size pools its seeds
per item and carries a bootstrap interval over items. The headline of each curve is the
smallest size whose score reaches the interval of the largest (at or above its lower
end): by this evaluation, more data than that buys nothing measurable.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Sequence

from sftlab.errors import ConfigError
from sftlab.study.common import Clock, open_study, run_info
from sftlab.study.config import SizeSweepConfig
from sftlab.report.charts import png, pyplot
from sftlab.study.report import pct, score_block, write_outputs
from sftlab.study.runs import Benchmark
from sftlab.types import Conversation

RULE = "smallest size whose mean score is at or above the lower end of the largest size's 95% interval"


def check_sizes(sizes: Sequence[int], pool_size: int) -> None:
    """``ConfigError`` (naming ``sizes``) unless 0 < n_1 < n_2 < ... <= the pool's size."""
    if not sizes or any(n <= 0 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise ConfigError(f"sizes: must be positive and strictly increasing, got {list(sizes)} "
                          "(e.g. sizes=[32,128,512])")
    if sizes[-1] > pool_size:
        raise ConfigError(f"sizes: the largest size {sizes[-1]} exceeds the pool of {pool_size} training "
                          f"examples; use sizes up to {pool_size}, or raise train_per_task")


def check_fractions(fractions: Sequence[float]) -> None:
    if not fractions or any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ConfigError(f"fractions: must be strictly increasing and in (0, 1], got {list(fractions)} "
                          "(e.g. fractions=[0.0625,0.25,1.0])")


def nested_subsets(pool: Sequence[Conversation], sizes: Sequence[int], seed: int) -> dict[int, list[Conversation]]:
    """n -> the first n examples of the pool shuffled by ``seed``: nested by construction.

    >>> subsets = nested_subsets(list(range(10)), [2, 5], seed=0)
    >>> subsets[2] == subsets[5][:2]
    True
    """
    check_sizes(sizes, len(pool))
    order = list(pool)
    random.Random(f"size-sweep:{seed}").shuffle(order)
    return {n: order[:n] for n in sizes}


def task_of(conversation: Conversation) -> str:
    task = (conversation.meta or {}).get("task")
    if not task:
        raise ConfigError(f"mode: task_fraction needs each example's task in meta.task; example "
                          f"{conversation.id} has none (use mode=examples for data without tasks)")
    return task


def per_task_count(fraction: float, total: int) -> int:
    """Examples a task keeps at ``fraction``: rounded up, at least one.

    >>> per_task_count(0.0625, 64), per_task_count(0.1, 5), per_task_count(1.0, 7)
    (4, 1, 7)
    """
    return max(1, math.ceil(fraction * total - 1e-9))


def task_fraction_subsets(pool: Sequence[Conversation], fractions: Sequence[float], seed: int,
                          tasks: Sequence[str] = ()) -> dict[float, list[Conversation]]:
    """fraction -> the first ``per_task_count`` examples of each task, shuffled per task by
    ``seed``: nested per task (and so overall). ``tasks``: only these (default: all)."""
    check_fractions(fractions)
    by_task: dict[str, list[Conversation]] = {}
    for conversation in pool:
        by_task.setdefault(task_of(conversation), []).append(conversation)
    unknown = [t for t in tasks if t not in by_task]
    if unknown:
        raise ConfigError(f"tasks: {unknown} not in the pool; its tasks are {sorted(by_task)}")
    orders = {}
    for task in tasks or sorted(by_task):
        orders[task] = list(by_task[task])
        random.Random(f"size-sweep:{seed}:{task}").shuffle(orders[task])
    return {f: [c for order in orders.values() for c in order[:per_task_count(f, len(order))]] for f in fractions}


def smallest_within(points: dict[float, dict]) -> float:
    """The smallest size whose ``mean`` reaches the largest size's interval (``>= low``).

    >>> smallest_within({8: {"mean": 0.2, "low": 0.1, "high": 0.3},
    ...                  32: {"mean": 0.5, "low": 0.4, "high": 0.6},
    ...                  128: {"mean": 0.55, "low": 0.45, "high": 0.65}})
    32
    """
    largest = points[max(points)]
    return min(x for x, block in points.items() if block["mean"] >= largest["low"])


@dataclass
class Curve:
    """One line of the plot: its runs' subsets (seed -> size -> examples) and its items."""

    label: str
    size_key: str  # "n" or "fraction"
    items: list[dict]
    subsets: dict[int, dict]


def plan(config: SizeSweepConfig, benchmark: Benchmark) -> list[Curve]:
    """The curves to measure; every bad key fails here, before anything loads or trains."""
    pool, seeds = benchmark.pool, config.seeds
    if config.mode == "examples":
        check_sizes(config.sizes, len(pool))
        return [Curve("all tasks", "n", benchmark.items, {s: nested_subsets(pool, config.sizes, s) for s in seeds})]
    if config.setting == "multi_task":
        return [Curve("multi-task", "fraction", benchmark.items,
                      {s: task_fraction_subsets(pool, config.fractions, s, config.tasks) for s in seeds})]
    tasks = config.tasks or sorted({task_of(c) for c in pool})
    for task in tasks:
        if not any(item.get("task") == task for item in benchmark.items):
            raise ConfigError(f"tasks: {task!r} has no evaluation items (single_task evaluates each task on its own)")
    return [Curve(task, "fraction", [i for i in benchmark.items if i.get("task") == task],
                  {s: task_fraction_subsets(pool, config.fractions, s, [task]) for s in seeds}) for task in tasks]


def run_size_sweep(config: SizeSweepConfig, benchmark: Benchmark) -> dict:
    """Train every (size, seed) of every curve, evaluate each, write study.json, the plot
    and report.html; returns the summary written to study.json."""
    curves = plan(config, benchmark)
    clock = Clock()
    out, store = open_study(config, "size-sweep")
    stats = {"seed": config.data_seed, "resamples": config.bootstrap_resamples}
    base_rows = store.evaluate(benchmark, None) if config.include_base else None
    measured = []
    for curve in curves:
        items = Benchmark(benchmark.name, benchmark.pool, curve.items, benchmark.score, benchmark.metric)
        points = []
        for size in curve.subsets[config.seeds[0]]:  # smallest first: the curve's start comes early
            print(f"[{curve.label}: {curve.size_key}={size}] {len(config.seeds)} seed(s)", flush=True)
            runs = [store.train(curve.subsets[seed][size], seed) for seed in config.seeds]
            rows = [store.evaluate(items, run) for run in runs]
            points.append({curve.size_key: size, "score": score_block(rows, **stats), "runs": [run_info(r) for r in runs]})
        ids = {item["id"] for item in curve.items}
        base = score_block([[r for r in base_rows if r["id"] in ids]], **stats) if base_rows else None
        by_size = {p[curve.size_key]: p["score"] for p in points}
        measured.append({"label": curve.label, "size_key": curve.size_key, "eval_items": len(curve.items),
                         "points": points, "base": base, "largest": max(by_size),
                         "smallest_within_largest_interval": smallest_within(by_size)})
    summary = {
        "study": "size-sweep", "model": config.model, "benchmark": benchmark.name, "metric": benchmark.metric,
        "mode": config.mode, "setting": config.setting if config.mode == "task_fraction" else None,
        "pool_size": len(benchmark.pool), "eval_items": len(benchmark.items), "seeds": config.seeds,
        "curves": measured, "rule": RULE,
        "jobs": {"trained": store.trained, "reused": store.reused}, "timings_s": {"total": clock.seconds()},
        "config": asdict(config),
    }
    store.release()
    charts = {"score_vs_size.png": sweep_chart(measured, benchmark.metric)}
    report = write_outputs(out, summary, charts, _sections(summary), f"sftlab study size-sweep: {config.model}")
    for curve in measured:
        scores = {p[curve["size_key"]]: p["score"] for p in curve["points"]}
        smallest = curve["smallest_within_largest_interval"]
        print(f"{curve['label']}: smallest {curve['size_key']} within the largest's interval: {smallest} "
              f"({pct(scores[smallest])} vs {pct(scores[curve['largest']])} at {curve['largest']})")
    print(f"report: {report}")
    return summary


def _sections(summary: dict) -> list[str]:
    what = ("nested random subsets" if summary["mode"] == "examples"
            else f"nested fractions of each task's examples ({summary['setting'].replace('_', '-')})")
    parts = [f"<p>LoRA runs on {what} of {summary['pool_size']} training examples ({summary['benchmark']}), "
             f"seeds {summary['seeds']}, evaluated on held-out items ({summary['metric']}). Headline per curve: "
             f"the {summary['rule']}.</p>"]
    for curve in summary["curves"]:
        key = curve["size_key"]
        rows = "".join(
            f"<tr><td>{p[key]}</td><td>{', '.join(str(r['examples']) for r in p['runs'])}</td>"
            f"<td>{pct(p['score'])}</td><td>{p['score']['n']}</td>"
            f"<td>{', '.join(pct(s) for s in p['score']['seeds'])}</td>"
            f"<td>{', '.join(str(r['trained_tokens']) for r in p['runs'])}</td>"
            f"<td>{', '.join(str(r['steps']) for r in p['runs'])}</td></tr>" for p in curve["points"])
        base = f" Untuned model: {pct(curve['base'])}." if curve["base"] else ""
        parts.append(f"<h2>{curve['label']}</h2><p><b>Smallest {key} within the largest's interval: "
                     f"{curve['smallest_within_largest_interval']}</b>.{base}</p>"
                     f"<table><tr><th>{key}</th><th>examples per seed</th><th>score (seeds pooled)</th><th>items</th>"
                     f"<th>per seed</th><th>trained tokens</th><th>steps</th></tr>{rows}</table>")
    return parts


def sweep_chart(curves: list[dict], metric: str) -> bytes:
    """Score against size (log axis) with 95% intervals and seeds as dots; with one curve,
    the largest size's interval as a band and the untuned model as a dashed line."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    key = curves[0]["size_key"]
    for curve in curves:
        sizes = [p[key] for p in curve["points"]]
        means = [100 * p["score"]["mean"] for p in curve["points"]]
        errors = [[m - 100 * p["score"]["low"] for m, p in zip(means, curve["points"])],
                  [100 * p["score"]["high"] - m for m, p in zip(means, curve["points"])]]
        line = axes.errorbar(sizes, means, yerr=errors, fmt="o-", capsize=3, label=curve["label"])
        for p in curve["points"]:
            axes.scatter([p[key]] * len(p["score"]["seeds"]), [100 * s["mean"] for s in p["score"]["seeds"]],
                         s=10, color="#888888", zorder=3)
    if len(curves) == 1:
        last, base = curves[0]["points"][-1]["score"], curves[0]["base"]
        axes.axhspan(100 * last["low"], 100 * last["high"], color=line[0].get_color(), alpha=0.12,
                     label="interval of the largest")
        if base is not None:
            axes.axhline(100 * base["mean"], linestyle="--", color="#999999", label="untuned")
    axes.set_xscale("log")
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()  # the log axis's minor labels (6x10^0) only clutter a few sizes
    axes.set_xlabel("training examples n" if key == "n" else "fraction of each task's training examples")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2 if len(curves) > 6 else 1)
    return png(figure)
