"""Result directories -> comparison rows, and those rows as Markdown.

A result directory holds a ``results.json`` written by ``sftlab eval`` (``tasks``), by
``sftlab judge alpaca-eval`` (``judge.alpaca_eval``) or by ``sftlab judge mt-bench``
(``judge.mt_bench``). ``load_runs`` reads several; ``comparison_rows`` lines them up:

    runs = load_runs(["out/base", "out/tuned"])
    rows = comparison_rows(runs)     # [Row("gsm8k", "exact_match_strict", [Cell, Cell])]
    print(markdown_table(runs, rows))
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sftlab.errors import DataError


@dataclass
class Run:
    name: str
    path: Path
    results: dict[str, Any]


@dataclass
class Cell:
    """One value; ``low``/``high`` when an interval is known, ``scale`` 100 for percentages."""

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if self.value is not None and self.value != self.value:  # NaN: nothing was measured
            self.value = None

    def text(self) -> str:
        if self.value is None:
            return "–"
        interval = f" [{self.low:.1f}, {self.high:.1f}]" if self.low is not None else ""
        return f"{self.value:.1f}{interval}"


@dataclass
class Row:
    task: str
    metric: str
    cells: list[Cell] = field(default_factory=list)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Read ``results.json`` of each directory; names are the directory names (made unique)."""
    runs, names = [], set()
    for path in map(Path, paths):
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError("no results.json here", file=str(path),
                            hint="pass directories written by `sftlab eval -o DIR` or `sftlab judge`")
        name = path.name if path.is_dir() else path.parent.name
        while name in names:
            name += "'"
        names.add(name)
        runs.append(Run(name, path, json.loads(file.read_text(encoding="utf-8"))))
    return runs


def _task_cells(results: dict[str, Any]) -> dict[tuple[str, str], Cell]:
    """(task, metric) -> Cell in percent, from every source a results.json may hold."""
    cells: dict[tuple[str, str], Cell] = {}
    for task, summary in results.get("tasks", {}).items():
        for metric, s in summary.get("metrics", {}).items():
            cells[(task, metric)] = Cell(100 * s["mean"], 100 * s["low"], 100 * s["high"], s.get("n"))
        for key, value in summary.get("extra", {}).items():
            if isinstance(value, (int, float)):
                cells[(task, key)] = Cell(100 * value)
        for subtask, metrics in summary.get("subtasks", {}).items():
            for metric, s in metrics.items():
                cells[(f"{task}/{subtask}", metric)] = Cell(100 * s["mean"], 100 * s["low"],
                                                            100 * s["high"], s.get("n"))
    judge = results.get("judge", {})
    if "alpaca_eval" in judge:
        a = judge["alpaca_eval"]
        for key, error in (("win_rate", "standard_error"), ("length_controlled_winrate", "lc_standard_error")):
            cells[("alpaca_eval", key)] = Cell(a[key], a[key] - 1.96 * a[error], a[key] + 1.96 * a[error],
                                               a.get("n_total"))
    if "mt_bench" in judge:
        m = judge["mt_bench"]
        for key in ("score", "turn_1", "turn_2"):
            cells[("mt_bench", key)] = Cell(m.get(key))
        for category, value in m.get("categories", {}).items():
            cells[("mt_bench", category)] = Cell(value)
    return cells


def comparison_rows(runs: Sequence[Run], *, subtasks: bool = False) -> list[Row]:
    """One row per (task, metric) seen in any run; a run without it gets an empty cell."""
    per_run = [_task_cells(run.results) for run in runs]
    keys: list[tuple[str, str]] = []
    for cells in per_run:
        keys += [k for k in cells if k not in keys and (subtasks or "/" not in k[0])]
    return [Row(task, metric, [cells.get((task, metric), Cell(None)) for cells in per_run])
            for task, metric in keys]


def markdown_table(runs: Sequence[Run], rows: Sequence[Row]) -> str:
    """Markdown table; with exactly two runs a ``Δ`` column (second minus first)."""
    header = ["task", "metric"] + [run.name for run in runs]
    delta = len(runs) == 2
    if delta:
        header.append(f"Δ ({runs[1].name} − {runs[0].name})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [row.task, row.metric] + [cell.text() for cell in row.cells]
        if delta:
            a, b = row.cells[0].value, row.cells[1].value
            values.append(f"{b - a:+.1f}" if a is not None and b is not None else "–")
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)
