"""What every study writes: ``study.json``, PNG plots and one HTML page.

Numbers: every score is a mean over evaluation items with a seeded bootstrap 95% interval
and ``n`` (``sftlab.eval.metrics.bootstrap_ci``). Several seeds are pooled per item first
(each item's score is its mean over seeds), so the interval is over items, the unit that
was sampled; paired differences resample the same items for both sides.

>>> per_item_means([[{"id": "a", "correct": 1.0}, {"id": "b", "correct": 0.0}],
...                 [{"id": "b", "correct": 1.0}, {"id": "a", "correct": 1.0}]])
[1.0, 0.5]
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Sequence

from sftlab.eval.metrics import bootstrap_ci
from sftlab.study.runs import write_json, write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.pos{color:#1a7f37;font-weight:600}.neg{color:#c62828}img{max-width:100%}
code{background:#f3f3f3;padding:0 3px}"""


def per_item_means(runs: Sequence[Sequence[dict]]) -> list[float]:
    """Each item's ``correct`` averaged over runs (seeds), in the first run's item order."""
    by_id = [{row["id"]: row["correct"] for row in rows} for rows in runs]
    return [sum(scores[row["id"]] for scores in by_id) / len(by_id) for row in runs[0]]


def score_block(runs: Sequence[Sequence[dict]], *, seed: int, resamples: int) -> dict:
    """``{"mean", "low", "high", "stderr", "n", "seeds": [per-seed blocks]}`` for one setting."""
    block = bootstrap_ci(per_item_means(runs), seed=seed, resamples=resamples)
    block["seeds"] = [bootstrap_ci([r["correct"] for r in rows], seed=seed, resamples=resamples) for rows in runs]
    return block


def paired_difference(runs_a: Sequence[Sequence[dict]], runs_b: Sequence[Sequence[dict]], *, seed: int,
                      resamples: int) -> dict:
    """A minus B, paired over the same items: the bootstrap of per-item differences.

    >>> a = [[{"id": i, "correct": 1.0} for i in range(4)]]
    >>> b = [[{"id": i, "correct": float(i % 2)} for i in range(4)]]
    >>> paired_difference(a, b, seed=0, resamples=100)["mean"]
    0.5
    """
    a = dict(zip([r["id"] for r in runs_a[0]], per_item_means(runs_a)))
    b = dict(zip([r["id"] for r in runs_b[0]], per_item_means(runs_b)))
    if a.keys() != b.keys():
        raise ValueError("paired difference: the two sides were evaluated on different items")
    return bootstrap_ci([a[i] - b[i] for i in a], seed=seed, resamples=resamples)


def pct(block: dict) -> str:
    """``38.5% [31–46]`` (mean and 95% interval in percent)."""
    return f"{100 * block['mean']:.1f}% [{100 * block['low']:.0f}–{100 * block['high']:.0f}]"


def signed_pct(block: dict) -> str:
    """``+4.2 pts [-1.0, +9.4]`` for a difference of proportions."""
    return f"{100 * block['mean']:+.1f} pts [{100 * block['low']:+.1f}, {100 * block['high']:+.1f}]"


def write_outputs(out: Path, summary: dict, charts: dict[str, bytes], sections: Sequence[str], title: str) -> Path:
    """``study.json``, each chart as a PNG file, and ``report.html`` (charts embedded)."""
    write_json(out / "study.json", summary)
    for name, png in charts.items():
        (out / name).write_bytes(png)
    images = "".join(f"<h2>{html.escape(name[:-4].replace('_', ' '))}</h2>"
                     f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     for name, png in charts.items())
    settings = html.escape(json.dumps(summary.get("config", {}), indent=1))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}{images}"
            f"<h2>Settings</h2><pre>{settings}</pre><p>Every number: mean exact match over the evaluation "
            f"items, brackets: bootstrap 95% interval over items (seeds pooled per item). All numbers, "
            f"with the run directories they came from, are in study.json.</p></body></html>")
    path = out / "report.html"
    write_text(path, page)
    return path
