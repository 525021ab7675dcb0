"""Real CLI runs: `sftlab eval tiny --tasks gsm8k --limit 3` writes the three files."""
import json
import subprocess
import sys


def sftlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sftlab", *args], capture_output=True, text=True,
                          cwd=cwd, env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=600)


def test_eval_tiny_gsm8k_writes_results_samples_settings(tmp_path, shared_data):
    out = tmp_path / "out"
    run = sftlab("eval", "tiny", "--tasks", "gsm8k", "--limit", "3", "--data-dir", str(shared_data),
                 "--max-new-tokens", "16", "-o", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "exact_match_strict" in run.stdout
    results = json.loads((out / "results.json").read_text())
    metric = results["tasks"]["gsm8k"]["metrics"]["exact_match_flexible"]
    assert metric["n"] == 3 and metric["low"] <= metric["mean"] <= metric["high"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["prompt"].startswith("Q: There are 15 trees")
    assert samples[0]["output"] is not None and samples[0]["target"] == "18"
    # 8 shots do not fit the tiny model's 1024 tokens: whole exemplars are dropped and recorded
    assert 0 < samples[0]["meta"]["num_fewshot"] < 8
    assert results["tasks"]["gsm8k"]["extra"]["items_with_fewer_shots"] == 3
    settings = json.loads((out / "settings.json").read_text())
    assert settings["tasks"]["gsm8k"]["generation"]["max_new_tokens"] == 16
    assert settings["config"]["seed"] == 1234


def test_eval_missing_data_is_one_line_error(tmp_path):
    run = sftlab("eval", "tiny", "--tasks", "gsm8k", "--limit", "1")
    assert run.returncode == 2 and run.stderr.strip().startswith("error:") and "--data-dir" in run.stderr


def test_eval_scores_responses_without_a_model(tmp_path, shared_data):
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"id": "1000", "response": "no commas here"}) + "\n"
                         + json.dumps({"id": "1001", "response": "I AM SHOUTING"}) + "\n")
    out = tmp_path / "out"
    run = sftlab("eval", "--tasks", "ifeval", "--limit", "2", "--responses", str(responses),
                 "--data-dir", str(shared_data), "-o", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["model"] is None and results["tasks"]["ifeval"]["metrics"]["inst_level_strict_acc"]["n"] == 2
    assert json.loads((out / "settings.json").read_text())["config"]["responses"] == str(responses)


def test_eval_without_model_or_responses_is_one_line_error(shared_data):
    run = sftlab("eval", "--tasks", "gsm8k", "--data-dir", str(shared_data))
    assert run.returncode == 2 and run.stderr.strip().startswith("error:") and "MODEL" in run.stderr
    assert "Traceback" not in run.stderr
