"""`sftlab report`: two result directories -> HTML with embedded charts + Markdown with a delta."""
import json

from sftlab.cli import main
from sftlab.report import comparison_rows, load_runs, write_report


def result_dir(path, accuracy, mt_score):
    path.mkdir()
    results = {"model": path.name, "tasks": {"gsm8k": {
        "metrics": {"exact_match_strict": {"mean": accuracy, "low": accuracy - 0.05, "high": accuracy + 0.05,
                                           "stderr": 0.02, "n": 100}},
        "subtasks": {}, "extra": {}}},
        "judge": {"mt_bench": {"score": mt_score, "turn_1": mt_score, "turn_2": mt_score,
                               "categories": {"math": mt_score, "writing": mt_score + 1}}}}
    (path / "results.json").write_text(json.dumps(results))
    return path


def test_report_writes_html_markdown_and_charts(tmp_path):
    base = result_dir(tmp_path / "base", 0.20, 3.0)
    tuned = result_dir(tmp_path / "tuned", 0.35, 5.5)
    written = write_report([base, tuned], tmp_path / "report")
    page = (tmp_path / "report/index.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # scores, mt_bench bars, radar
    assert "<table>" in page and "+15.0" in page
    summary = (tmp_path / "report/summary.md").read_text()
    assert "| gsm8k | exact_match_strict | 20.0 [15.0, 25.0] | 35.0 [30.0, 40.0] | +15.0 |" in summary
    assert (tmp_path / "report/mt_bench_radar.png").read_bytes()[:4] == b"\x89PNG"
    assert set(written) >= {"index.html", "summary.md", "scores.png"}


def test_rows_align_missing_metrics(tmp_path):
    a = result_dir(tmp_path / "a", 0.5, 4.0)
    b = tmp_path / "b"
    b.mkdir()
    (b / "results.json").write_text(json.dumps({"model": "b", "tasks": {}}))
    rows = comparison_rows(load_runs([a, b]))
    assert rows[0].cells[1].value is None and rows[0].cells[0].value == 50.0


def test_report_cli(tmp_path, capsys):
    base = result_dir(tmp_path / "base", 0.2, 3.0)
    assert main(["report", str(base), "-o", str(tmp_path / "out")]) == 0
    assert "gsm8k" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "out2")]) == 2


def test_report_cli_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    base = result_dir(tmp_path / "base", 0.2, 3.0)
    assert main(["report", str(base), "-o", str(base / "results.json")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
