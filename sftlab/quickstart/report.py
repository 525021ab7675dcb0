"""The quickstart's report: summary figures with intervals, a chart, and one HTML page with
the data statistics, a mask preview, the loss curve, the before/after table and sample
outputs."""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from sftlab.data.chat import render
from sftlab.eval.metrics import bootstrap_ci
from sftlab.models import load_tokenizer
from sftlab.quickstart.data import GROUPS, QuickstartData
from sftlab.types import IGNORE_INDEX, Conversation


def summarize(before: list[dict], after: list[dict], config, timings: dict) -> dict:
    """Exact match before and after, per group and per task, each with a 95% bootstrap
    interval; ``improved`` says whether the intervals are disjoint with after above."""
    def block(rows_before, rows_after, metric="correct"):
        b = bootstrap_ci([r[metric] for r in rows_before], seed=config.seed)
        a = bootstrap_ci([r[metric] for r in rows_after], seed=config.seed)
        return {"before": b, "after": a, "improved": a["low"] > b["high"]}

    groups = {g: block([r for r in before if r["group"] == g], [r for r in after if r["group"] == g])
              for g in GROUPS}
    tasks = {t: {**block([r for r in before if r["task"] == t], [r for r in after if r["task"] == t]),
                 "group": next(r["group"] for r in before if r["task"] == t)}
             for t in dict.fromkeys(r["task"] for r in before)}
    contains = {g: block([r for r in before if r["group"] == g], [r for r in after if r["group"] == g], "contains")
                for g in GROUPS}
    return {"model": config.model, "metric": "exact match", "groups": groups, "tasks": tasks,
            "contains_answer": contains, "timings_s": timings}


def write_report(run_dir: Path, built: QuickstartData, before: list[dict], after: list[dict],
                 summary: dict, model_path: str) -> Path:
    chart = _bar_chart(summary)
    (run_dir / "before_after.png").write_bytes(chart)
    loss_path = run_dir / "train" / "loss.png"  # written by `sftlab train` itself
    loss_png = loss_path.read_bytes() if loss_path.exists() else None
    sections = [
        _header(summary),
        _groups_table(summary),
        f"<h2>Per task</h2><img src='data:image/png;base64,{_b64(chart)}' alt='before/after chart'>",
        _tasks_table(summary),
        "<h2>Training loss</h2>" + (f"<img src='data:image/png;base64,{_b64(loss_png)}' alt='loss curve'>"
                                     if loss_png else "<p>(no metrics found)</p>"),
        _data_stats(built),
        _mask_preview(built.train[0], model_path),
        _conformance(run_dir / "train" / "check.json"),
        sample_outputs(before, after),
    ]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sftlab quickstart</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f3f3f3}}.up{{color:#11772d;font-weight:600}}pre{{white-space:pre-wrap;background:#f7f7f7;padding:8px}}
.trained{{background:#c8f0c8;border-bottom:2px solid #2a2}}img{{max-width:100%}}</style></head><body>
{''.join(sections)}</body></html>"""
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# -- sections -------------------------------------------------------------------------------


def _conformance(path: Path) -> str:
    """``sftlab check``'s findings on the trained result (written by ``sftlab train``)."""
    if not path.exists():
        return "<h2>Train-to-serve check</h2><p>(no check.json: the run saved no model)</p>"
    report = json.loads(path.read_text(encoding="utf-8"))
    verdict = "passed" if report["ok"] else "FAILED"
    rows = "".join(f"<tr><td>{ {True: 'ok', False: 'FAIL', None: 'n/a'}[f['ok']] }</td><td>{html.escape(f['check'])}</td>"
                   f"<td>{html.escape(f['probe'])}</td><td>{html.escape(f['detail'])}</td></tr>"
                   for f in report["findings"])
    return (f"<h2>Train-to-serve check: {verdict}</h2><p>The probe conversations rendered through the "
            f"training renderer, the saved chat template, the server's prompt and its reply parser "
            f"(<code>sftlab check</code>):</p><table><tr><th></th><th>check</th><th>probe</th><th>detail</th></tr>"
            f"{rows}</table>")


def _pct(block: dict) -> str:
    return f"{100 * block['mean']:.1f}% <small>[{100 * block['low']:.0f}–{100 * block['high']:.0f}]</small>"


def _header(summary: dict) -> str:
    t = summary["timings_s"]
    return (f"<h1>sftlab quickstart: {html.escape(summary['model'])}</h1>"
            f"<p>Instruction tuning (LoRA) on template-integrated task data. Evaluation on held-out "
            f"instances only: seen tasks phrased through templates never used in training, and whole "
            f"tasks never trained on. Metric: exact match (95% bootstrap intervals).</p>"
            f"<p>Stage times (s): {html.escape(json.dumps(t))}</p>")


def _groups_table(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{g}</td><td>{row['before']['n']}</td><td>{_pct(row['before'])}</td><td>{_pct(row['after'])}</td>"
        f"<td class='{'up' if row['improved'] else ''}'>{'yes' if row['improved'] else 'no'}</td>"
        f"<td>{_pct(summary['contains_answer'][g]['before'])} → {_pct(summary['contains_answer'][g]['after'])}</td></tr>"
        for g, row in summary["groups"].items())
    return ("<h2>Before and after</h2><table><tr><th>group</th><th>n</th><th>before</th><th>after</th>"
            "<th>clear gain (intervals apart)</th><th>answer contained in output</th></tr>" + rows + "</table>")


def _tasks_table(summary: dict) -> str:
    rows = "".join(f"<tr><td>{t}</td><td>{row['group']}</td><td>{_pct(row['before'])}</td><td>{_pct(row['after'])}</td></tr>"
                   for t, row in summary["tasks"].items())
    return "<table><tr><th>task</th><th>group</th><th>before</th><th>after</th></tr>" + rows + "</table>"


def _data_stats(built: QuickstartData) -> str:
    train_tasks = Counter(c.meta["task"] for c in built.train)
    eval_tasks = Counter(i.task for i in built.eval)
    rows = "".join(f"<tr><td>{t}</td><td>{train_tasks.get(t, 0)}</td><td>{eval_tasks[t]}</td></tr>" for t in eval_tasks)
    chars = [len(c.messages[0].content) for c in built.train]
    return (f"<h2>Data</h2><p>{len(built.train)} training conversations over {len(train_tasks)} tasks; "
            f"{len(built.eval)} evaluation items over {len(eval_tasks)} tasks. Prompt length: "
            f"{min(chars)}–{max(chars)} characters (mean {sum(chars) / len(chars):.0f}).</p>"
            "<table><tr><th>task</th><th>train</th><th>eval</th></tr>" + rows + "</table>")


def _mask_preview(conversation: Conversation, model_path: str) -> str:
    """The first training example as the trainer sees it; trained tokens highlighted."""
    tokenizer = load_tokenizer(model_path)
    example = render(conversation, tokenizer)
    runs, current, trained = [], [], None
    for token, label in zip(example.input_ids, example.labels):
        is_trained = label != IGNORE_INDEX
        if current and is_trained != trained:
            runs.append((trained, current))
            current = []
        current.append(token)
        trained = is_trained
    runs.append((trained, current))
    body = "".join(f"<span class='trained'>{html.escape(tokenizer.decode(ids))}</span>" if t
                   else html.escape(tokenizer.decode(ids)) for t, ids in runs)
    return ("<h2>Mask preview</h2><p>Highlighted tokens carry the loss (the assistant's answer and its "
            f"end-of-turn token); everything else is context.</p><pre>{body}</pre>")


def sample_outputs(before: list[dict], after: list[dict], per_group: int = 4) -> str:
    """The report's table of a few answers per held-out group, before and after."""
    out = ["<h2>Sample outputs</h2>"]
    for group in GROUPS:
        rows = [(b, a) for b, a in zip(before, after) if b["group"] == group]
        step = max(1, len(rows) // per_group)
        cells = "".join(
            f"<tr><td>{html.escape(b['task'])}</td><td><pre>{html.escape(b['prompt'])}</pre></td>"
            f"<td>{html.escape(b['answer'])}</td><td><pre>{html.escape(b['response'])}</pre></td>"
            f"<td><pre>{html.escape(a['response'])}</pre></td></tr>" for b, a in rows[::step][:per_group])
        out.append(f"<h3>{group}</h3><table><tr><th>task</th><th>prompt</th><th>answer</th><th>before</th>"
                   f"<th>after</th></tr>{cells}</table>")
    return "".join(out)


# -- pictures -------------------------------------------------------------------------------

def _bar_chart(summary: dict) -> bytes:
    import matplotlib  # lazy: only the report's chart needs matplotlib, a heavy import

    matplotlib.use("Agg")  # before pyplot: render to memory, no display needed
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(max(8, len(tasks) * 0.7), 4))
    for offset, when, color in ((-0.2, "before", "#999999"), (0.2, "after", "#2a7ab9")):
        means = [summary["tasks"][t][when]["mean"] * 100 for t in tasks]
        low = [m - summary["tasks"][t][when]["low"] * 100 for m, t in zip(means, tasks)]
        high = [summary["tasks"][t][when]["high"] * 100 - m for m, t in zip(means, tasks)]
        ax.bar(x + offset, means, 0.4, yerr=[low, high], capsize=2, label=when, color=color)
    labels = [f"{t}{' *' if summary['tasks'][t]['group'] != GROUPS[0] else ''}" for t in tasks]
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Held-out exact match per task (* = task never trained on), 95% intervals")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt  # lazy: as in _bar_chart

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
