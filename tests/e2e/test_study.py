"""`sftlab study NAME --fast --model tiny`: each study runs end to end and writes its outputs."""
import json
import os
import subprocess
import sys

import pytest


def study(name, out, *extra):
    result = subprocess.run([sys.executable, "-m", "sftlab", "study", name, "--fast", "--model", "tiny", "-o", str(out),
                             *extra], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"study directory: {out.resolve()}"
    return result


def check_interval(block, n):
    assert block["n"] == n and 0 <= block["low"] <= block["mean"] <= block["high"] <= 1


def check_page(out, *pngs):
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs) and "<table>" in page


def test_size_sweep_fast(tmp_path):
    out = tmp_path / "sweep"
    study("size-sweep", out)
    summary = json.loads((out / "study.json").read_text())
    [curve] = summary["curves"]
    items = summary["eval_items"]
    assert [p["n"] for p in curve["points"]] == [4, 8, 16] and summary["seeds"] == [0, 1]
    for point in curve["points"]:
        check_interval(point["score"], items)
        assert len(point["score"]["seeds"]) == len(point["runs"]) == 2
        for run in point["runs"]:
            assert run["examples"] == point["n"] and (tmp_path / run["run_dir"] / "train" / "adapter").is_dir()
            assert run["trained_tokens"] > 0
    check_interval(curve["base"], items)
    assert curve["smallest_within_largest_interval"] in (4, 8, 16) and curve["largest"] == 16
    assert summary["jobs"]["trained"] == 6
    check_page(out, "score_vs_size.png")


@pytest.mark.slow
def test_size_sweep_per_task_fractions_single_task(tmp_path):
    out = tmp_path / "fractions"
    study("size-sweep", out, "mode=task_fraction", "setting=single_task", "tasks=[add,sentiment]", "seeds=[0]")
    summary = json.loads((out / "study.json").read_text())
    assert [c["label"] for c in summary["curves"]] == ["add", "sentiment"]
    for curve in summary["curves"]:
        assert [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 1.0]
        assert [p["runs"][0]["examples"] for p in curve["points"]] == [1, 2, 4]  # of 4 per task
        check_interval(curve["base"], curve["eval_items"])
    check_page(out, "score_vs_size.png")


@pytest.mark.slow
def test_size_sweep_restarted_trains_nothing(tmp_path):
    out = tmp_path / "sweep"
    study("size-sweep", out, "seeds=[0]", "sizes=[4,8]")
    again = study("size-sweep", out, "seeds=[0]", "sizes=[4,8]")
    assert "training " not in again.stdout and again.stdout.count("reusing run") == 2
    assert json.loads((out / "study.json").read_text())["jobs"]["trained"] == 0


def test_compare_data_fast(tmp_path):
    out = tmp_path / "compare"
    study("compare-data", out)
    summary = json.loads((out / "study.json").read_text())
    assert sorted(summary["ranking"]) == ["ifd", "longest", "random"] and summary["baseline"] == "random"
    means = [s["score"]["mean"] for s in summary["sources"]]
    assert means == sorted(means, reverse=True)  # ranked
    for source in summary["sources"]:
        check_interval(source["score"], summary["eval_items"])
        for seed, tokens in zip(summary["seeds"], source["selected_tokens"]):
            assert 0 < tokens <= summary["budget_tokens"][str(seed)]  # the equal token budget holds
    assert set(summary["differences_vs_baseline"]) == {"longest", "ifd"}
    for difference in summary["differences_vs_baseline"].values():
        assert difference["n"] == summary["eval_items"] and difference["low"] <= difference["mean"] <= difference["high"]
        assert difference["verdict"] in ("better", "worse", "no clear difference")
    assert summary["ifd"]["examples"] == summary["pool_size"]
    check_page(out, "scores.png", "paired_differences.png")


def test_a_bad_key_fails_before_training(tmp_path, capsys):
    from sftlab.cli import main

    code = main(["study", "compare-data", "--fast", "--model", "tiny", "-o", str(tmp_path / "c"),
                 "sources=[random,nothing]"])
    assert code == 2 and "sources: 'nothing' is neither" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
