"""Charts as PNG bytes (matplotlib, Agg backend: no display needed).

``bar_chart(runs, rows, ylim=(0, 100))``: grouped bars, one group per (task, metric), one
bar per run, with the 95% interval as error bars, on a fixed axis so that charts of
different runs compare at a glance (``bar_figure`` is the same chart as a matplotlib
figure). ``radar_chart(categories, series)``: MT-Bench per-category scores, one polygon
per run.
"""
from __future__ import annotations

import io
import math
from typing import Sequence


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    # lazy: matplotlib is only needed at plot time, and importing it costs ~0.5 s
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> bytes:
    """``figure`` as PNG bytes (closed afterwards)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def bar_chart(run_names: Sequence[str], rows, *, title: str = "", ylabel: str = "score (%)",
              ylim: tuple[float, float] | None = (0, 100)) -> bytes:
    """PNG of ``bar_figure`` (grouped bars of ``rows`` with interval error bars)."""
    return png(bar_figure(run_names, rows, title=title, ylabel=ylabel, ylim=ylim))


def bar_figure(run_names: Sequence[str], rows, *, title: str = "", ylabel: str = "score (%)",
               ylim: tuple[float, float] | None = (0, 100)):
    """Grouped bars of ``rows`` (``sftlab.report.tables.Row``) with interval error bars.

    ``ylim``: the value axis, fixed (0-100 for percentages) so that no single value, such as
    a count put in by mistake, rescales the chart; None lets matplotlib choose.
    """
    plt = pyplot()
    groups = len(rows)
    width = 0.8 / max(1, len(run_names))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * groups * max(1, len(run_names)) ** 0.5 + 2), 3.6))
    for r, name in enumerate(run_names):
        xs, heights, errors = [], [], [[], []]
        for g, row in enumerate(rows):
            cell = row.cells[r]
            if cell.value is None:
                continue
            xs.append(g + (r - (len(run_names) - 1) / 2) * width)
            heights.append(cell.value)
            errors[0].append(cell.value - cell.low if cell.low is not None else 0.0)
            errors[1].append(cell.high - cell.value if cell.high is not None else 0.0)
        axes.bar(xs, heights, width, yerr=errors, capsize=3, label=name)
    axes.set_xticks(range(groups))
    axes.set_xticklabels([f"{row.task}\n{row.metric}" for row in rows], fontsize=8, rotation=0)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return figure


def radar_chart(categories: Sequence[str], series: dict[str, Sequence[float]], *,
                title: str = "MT-Bench", maximum: float = 10.0) -> bytes:
    """One closed polygon per run over the categories (scores 0..maximum)."""
    plt = pyplot()
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    figure = plt.figure(figsize=(4.6, 4.6))
    axes = figure.add_subplot(111, polar=True)
    for name, values in series.items():
        values = [0.0 if (v is None or v != v) else float(v) for v in values]
        axes.plot(angles + angles[:1], values + values[:1], label=name)
        axes.fill(angles + angles[:1], values + values[:1], alpha=0.15)
    axes.set_xticks(angles)
    axes.set_xticklabels(categories, fontsize=8)
    axes.set_ylim(0, maximum)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.3, 1.1))
    return png(figure)
