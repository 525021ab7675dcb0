"""`sftlab quickstart --fast` on the tiny model: every stage runs and every output lands."""
import json
import subprocess
import sys


def test_quickstart_fast_writes_report_and_summary(tmp_path):
    run_dir = tmp_path / "run"
    env_cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "sftlab", "quickstart", "--fast", "--model", "tiny", "--output-dir", str(run_dir)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "SFTLAB_CACHE": str(env_cache), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"run directory: {run_dir.resolve()}"
    for name in ("report.html", "summary.json", "train.yaml", "eval_before.jsonl", "eval_after.jsonl",
                 "before_after.png", "data/train.jsonl", "data/eval.jsonl", "train/run.json",
                 "train/metrics.jsonl", "train/adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for group in ("seen task, unseen template", "unseen task"):
        block = summary["groups"][group]
        assert block["before"]["n"] == block["after"]["n"] > 0
        assert 0 <= block["before"]["low"] <= block["before"]["mean"] <= block["before"]["high"] <= 1
    page = (run_dir / "report.html").read_text()
    assert "class='trained'" in page and "Sample outputs" in page and "data:image/png;base64," in page
    # the trained adapter was checked train-to-serve, and the report shows it
    assert summary["train"]["check_ok"] is True and "Train-to-serve check: passed" in page

    # a second run reuses the built data and the base model's answers
    again = subprocess.run(
        [sys.executable, "-m", "sftlab", "quickstart", "--fast", "--model", "tiny", "--output-dir",
         str(tmp_path / "run2")], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "SFTLAB_CACHE": str(env_cache), "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing built data" in again.stdout and "reusing the base model's answers" in again.stdout
