"""``sftlab report DIR... -o OUT``: one static HTML page and a Markdown summary.

    write_report(["out/base", "out/tuned"], "out/report")
    # -> out/report/index.html (tables + charts embedded as base64 PNG, no network needed)
    #    out/report/summary.md (the comparison table, a delta column for two runs)
    #    out/report/*.png      (the same charts as files, for slides and READMEs)
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

from sftlab.errors import ConfigError
from sftlab.report.charts import bar_chart, radar_chart
from sftlab.report.tables import Row, Run, comparison_rows, load_runs, markdown_table

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}
.pos{color:#1a7f37}.neg{color:#c62828}img{max-width:100%}
"""


def percent_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows of the 0-100% scores chart: every task's metrics, except counts and MT-Bench."""
    return [r for r in rows if r.task != "mt_bench" and not r.is_count]


def mt_bench_rows(rows: Sequence[Row]) -> list[Row]:
    """MT-Bench's overall and per-turn scores (1-10), for their own chart."""
    return [r for r in rows if r.task == "mt_bench" and r.metric in ("score", "turn_1", "turn_2")]


def build_charts(runs: Sequence[Run], rows: Sequence[Row]) -> dict[str, bytes]:
    """Chart name -> PNG: one bar chart of every task's metrics in percent (axis 0-100),
    one of MT-Bench's overall and per-turn scores (axis 0-10), and an MT-Bench radar when
    present. Counts (``items_with_fewer_shots``) are in the tables only."""
    names = [run.name for run in runs]
    charts: dict[str, bytes] = {}
    scores = percent_rows(rows)
    if scores:
        charts["scores.png"] = bar_chart(names, scores, title="Scores with 95% intervals", ylim=(0, 100))
    mt_rows = mt_bench_rows(rows)
    if mt_rows:
        charts["mt_bench.png"] = bar_chart(names, mt_rows, title="MT-Bench", ylabel="score (1-10)",
                                           ylim=(0, 10))
    categories = sorted({c for run in runs for c in run.results.get("judge", {}).get("mt_bench", {})
                         .get("categories", {})})
    if categories:
        series = {run.name: [run.results.get("judge", {}).get("mt_bench", {}).get("categories", {})
                             .get(c, float("nan")) for c in categories] for run in runs}
        charts["mt_bench_radar.png"] = radar_chart(categories, series)
    return charts


def html_page(runs: Sequence[Run], rows: Sequence[Row], charts: dict[str, bytes]) -> str:
    """The report page: runs, comparison table, settings table, charts embedded as base64 PNG."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sftlab report</title>",
             f"<style>{_STYLE}</style></head><body><h1>sftlab evaluation report</h1>",
             "<p>Runs: " + ", ".join(f"<b>{html.escape(r.name)}</b> ({html.escape(str(r.path))}, "
                                     f"model {html.escape(str(r.results.get('model')))})" for r in runs) + "</p>",
             _html_table(runs, rows), _settings_table(runs)]
    for name, png in charts.items():
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(name[:-4])}</h2><img alt='{name}' src='data:image/png;base64,{encoded}'>")
    parts.append("<p>Values in percent (MT-Bench: 1-10; counts such as items_with_fewer_shots: "
                 "integers); brackets: bootstrap 95% interval (win rates: ±1.96 standard errors)."
                 "</p></body></html>")
    return "\n".join(parts)


def _settings_table(runs: Sequence[Run]) -> str:
    """What produced each run: model, adapter, few-shot counts, chat template, seed."""
    lines = ["<h2>settings</h2><table><tr><th>run</th><th>model</th><th>adapter</th>"
             "<th>few-shot</th><th>chat template</th><th>seed</th></tr>"]
    for run in runs:
        settings = run.results.get("settings", {})
        config = settings.get("config", {})
        shots = ", ".join(f"{task}: {entry.get('num_fewshot')}" for task, entry in settings.get("tasks", {}).items())
        cells = [run.name, run.results.get("model"), run.results.get("adapter"), shots or None,
                 config.get("chat_template"), config.get("seed")]
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>"
                                      for c in cells) + "</tr>")
    return "".join(lines) + "</table>"


def _html_table(runs: Sequence[Run], rows: Sequence[Row]) -> str:
    """The comparison table; with two runs a Δ column coloured by sign."""
    delta = len(runs) == 2
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["task", "metric"] + [r.name for r in runs] + (["Δ"] if delta else []))
    body = []
    for row in rows:
        cells = [html.escape(row.task), html.escape(row.metric)] + [c.text() for c in row.cells]
        line = "".join(f"<td>{c}</td>" for c in cells)
        if delta:
            a, b = row.cells[0].value, row.cells[1].value
            if a is not None and b is not None:
                # a higher score is better; a count (items_with_fewer_shots) is neither good nor bad
                css = "" if row.is_count else "pos" if b > a else "neg" if b < a else ""
                line += f"<td class='{css}'>{row.delta_text()}</td>"
            else:
                line += "<td>–</td>"
        body.append(f"<tr>{line}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(paths: Sequence[str | Path], out: str | Path, *, subtasks: bool = False) -> dict[str, Path]:
    """Write ``index.html``, ``summary.md`` and the chart PNGs; -> their paths by name."""
    runs = load_runs(paths)
    rows = comparison_rows(runs, subtasks=subtasks)
    charts = build_charts(runs, rows)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output: {out} is a file, not a directory; give a new or existing folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, png in charts.items():
        (out / name).write_bytes(png)
        written[name] = out / name
    (out / "index.html").write_text(html_page(runs, rows, charts), encoding="utf-8")
    summary = "# sftlab evaluation summary\n\n" + markdown_table(runs, rows) + "\n"
    (out / "summary.md").write_text(summary, encoding="utf-8")
    written.update({"index.html": out / "index.html", "summary.md": out / "summary.md"})
    return written
