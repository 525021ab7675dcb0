"""Result directories -> comparison rows, and those rows as Markdown.

A result directory holds a ``results.json`` written by ``sftlab eval`` (``tasks``), by
``sftlab judge alpaca-eval`` (``judge.alpaca_eval``) or by ``sftlab judge mt-bench``
(``judge.mt_bench``). ``load_runs`` reads several; ``comparison_rows`` lines them up:

    runs = load_runs(["out/base", "out/tuned"])
    rows = comparison_rows(runs)     # [Row("gsm8k", "exact_match_strict", [Cell, Cell])]
    print(markdown_table(runs, rows))

Percentages and counts: a result is a fraction (shown x 100, as a percentage with one
decimal) unless its key names a count (``is_count``: ``n``, ``n_*``, ``*_count``,
``items_*``, e.g. ``items_with_fewer_shots``), which is shown as the integer it is and
kept out of the percentage bar chart. Win rates and MT-Bench scores are stored on their own
scale (0-100, 1-10) and shown as they are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sftlab.errors import DataError

# result keys that are counts whatever their name says; other counts follow ``is_count``'s rule
COUNT_KEYS = frozenset({"n", "items_with_fewer_shots", "num_fewshot"})


def is_count(key: str) -> bool:
    """True when the result ``key`` is a count of things, not a fraction to show in percent.

    >>> [is_count(k) for k in ("items_with_fewer_shots", "n_total", "refusal_count", "exact_match")]
    [True, True, True, False]
    """
    return key in COUNT_KEYS or key.startswith(("n_", "items_")) or key.endswith("_count")


@dataclass
class Run:
    """One result directory: its (unique) name, its path and its parsed ``results.json``."""

    name: str
    path: Path
    results: dict[str, Any]


@dataclass
class Cell:
    """One value on its display scale (percent, or a 1-10 score); ``low``/``high`` when an
    interval is known; ``count`` for a count of things, shown as an integer.

    >>> Cell(35.0, 30.0, 40.0).text(), Cell(6, count=True).text(), Cell(None).text()
    ('35.0 [30.0, 40.0]', '6', '–')
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    count: bool = False

    def __post_init__(self) -> None:
        if self.value is not None and self.value != self.value:  # NaN: nothing was measured
            self.value = None

    def text(self) -> str:
        if self.value is None:
            return "–"
        if self.count:
            return _count_text(self.value)
        interval = f" [{self.low:.1f}, {self.high:.1f}]" if self.low is not None else ""
        return f"{self.value:.1f}{interval}"


def _count_text(value: float, sign: bool = False) -> str:
    """A count as an integer (``6``, ``+3``); a mean count keeps one decimal (``2.5``)."""
    if float(value).is_integer():
        return f"{int(value):+d}" if sign else f"{int(value)}"
    return f"{value:+.1f}" if sign else f"{value:.1f}"


@dataclass
class Row:
    """One (task, metric) line of the comparison: one cell per run, in run order."""

    task: str
    metric: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def is_count(self) -> bool:
        """True for a row of counts (shown as integers, never in a percentage chart)."""
        return any(cell.count for cell in self.cells)

    def delta_text(self) -> str | None:
        """Second run minus first, on the row's own scale; None when either is missing."""
        a, b = self.cells[0].value, self.cells[1].value
        if a is None or b is None:
            return None
        return _count_text(b - a, sign=True) if self.is_count else f"{b - a:+.1f}"


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


def _metric_cell(metric: str, s: dict[str, Any]) -> Cell:
    """A metric summary ``{"mean", "low", "high", "n"}``: a fraction -> percent, a count as is."""
    scale = 1 if is_count(metric) else 100
    return Cell(scale * s["mean"], scale * s["low"], scale * s["high"], s.get("n"), count=is_count(metric))


def _extra_cell(key: str, value: float) -> Cell:
    """A task's extra number (a macro average, ``items_with_fewer_shots``, ...)."""
    return Cell(value, count=True) if is_count(key) else Cell(100 * value)


def _task_cells(results: dict[str, Any]) -> dict[tuple[str, str], Cell]:
    """(task, metric) -> Cell on its display scale, from every source a results.json may hold."""
    cells: dict[tuple[str, str], Cell] = {}
    for task, summary in results.get("tasks", {}).items():
        for metric, s in summary.get("metrics", {}).items():
            cells[(task, metric)] = _metric_cell(metric, s)
        for key, value in summary.get("extra", {}).items():
            if isinstance(value, (int, float)):
                cells[(task, key)] = _extra_cell(key, value)
        for subtask, metrics in summary.get("subtasks", {}).items():
            for metric, s in metrics.items():
                cells[(f"{task}/{subtask}", metric)] = _metric_cell(metric, s)
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
            values.append(row.delta_text() or "–")
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)
