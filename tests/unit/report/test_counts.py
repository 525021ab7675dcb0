"""Counts are counts, percentages are percentages: ``items_with_fewer_shots: 6`` is "6", not
"600.0", in the Markdown and HTML tables, and it stays out of the 0-100% chart."""
import json

import pytest

from sftlab.report import comparison_rows, load_runs, markdown_table, write_report
from sftlab.report.charts import bar_figure, pyplot
from sftlab.report.html import percent_rows
from sftlab.report.tables import is_count


def result_dir(path, accuracy, fewer_shots):
    path.mkdir()
    results = {"model": path.name, "tasks": {"gsm8k": {
        "metrics": {"exact_match": {"mean": accuracy, "low": accuracy - 0.05, "high": accuracy + 0.05,
                                    "stderr": 0.02, "n": 100}},
        "subtasks": {}, "extra": {"items_with_fewer_shots": fewer_shots, "exact_match_macro": accuracy}}}}
    (path / "results.json").write_text(json.dumps(results))
    return path


@pytest.mark.parametrize("key", ["items_with_fewer_shots", "n", "n_total", "refusal_count", "items_skipped"])
def test_count_keys_are_counts(key):
    assert is_count(key)


@pytest.mark.parametrize("key", ["exact_match", "exact_match_macro", "accuracy", "win_rate", "pass@1"])
def test_score_keys_are_not_counts(key):
    assert not is_count(key)


def test_count_is_an_integer_in_markdown_and_html(tmp_path):
    base, tuned = result_dir(tmp_path / "base", 0.2, 6), result_dir(tmp_path / "tuned", 0.35, 3)
    runs = load_runs([base, tuned])
    table = markdown_table(runs, comparison_rows(runs))
    assert "| gsm8k | items_with_fewer_shots | 6 | 3 | -3 |" in table
    assert "| gsm8k | exact_match_macro | 20.0 | 35.0 | +15.0 |" in table  # fractions stay percentages
    assert "600" not in table
    write_report([base, tuned], tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<td>items_with_fewer_shots</td><td>6</td><td>3</td><td class=''>-3</td>" in page
    assert "600" not in page


def test_counts_stay_out_of_the_percent_chart_whose_axis_is_0_to_100(tmp_path):
    runs = load_runs([result_dir(tmp_path / "base", 0.2, 6)])
    rows = comparison_rows(runs)
    scores = percent_rows(rows)
    assert [r.metric for r in scores] == ["exact_match", "exact_match_macro"]
    figure = bar_figure([r.name for r in runs], scores)
    try:
        assert figure.axes[0].get_ylim() == (0.0, 100.0)
        assert max(p.get_height() for p in figure.axes[0].patches) <= 100
    finally:
        pyplot().close(figure)
