"""`sftlab quickstart --objective dpo|grpo|ppo --fast` on the tiny model: every output lands
with finite numbers, and the preference pairs are built as documented."""
import json
import math

import pytest
import yaml

from sftlab.cli import main
from sftlab.quickstart.config import QuickstartConfig
from sftlab.quickstart.preference import build_pairs, curve_summary, run_preference_quickstart
from sftlab.quickstart.tasks import exact_match


def _numbers(value):
    """Every number in a JSON-like value (bools excluded)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))


def _run(tmp_path, objective):
    config = QuickstartConfig(model="tiny", fast=True, objective=objective, output_dir=str(tmp_path / objective),
                              threads=1)
    return run_preference_quickstart(config)


def _check_common(result, objective, plots):
    run_dir, summary = result.run_dir, result.summary
    for name in ("quickstart_config.json", "summary.json", "report.html", "train.yaml", "eval_before.jsonl",
                 "eval_after.jsonl", "train/metrics.jsonl", "train/adapter/adapter_config.json", *plots):
        assert (run_dir / name).is_file(), name
    for name in plots:
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((run_dir / "train.yaml").read_text())["objective"] == objective
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert all(math.isfinite(x) for x in _numbers(summary))
    assert summary["objective"] == objective and summary["train"]["steps"] > 0
    n = summary["eval"]["n"]
    for metric in ("exact_match", "answer_tokens"):
        block = summary[metric]["all"]
        assert block["before"]["n"] == block["after"]["n"] == n > 0
        for side in ("before", "after"):
            assert block[side]["low"] <= block[side]["mean"] <= block[side]["high"]
    # the lengths are the responses' token counts, within the generation limit
    after = _rows(run_dir / "eval_after.jsonl")
    assert len(after) == n and all(0 <= row["tokens"] <= summary["eval"]["max_new_tokens"] for row in after)
    assert summary["exact_match"]["all"]["after"]["mean"] == pytest.approx(
        sum(exact_match(r["response"], r["answer"]) for r in after) / n)
    page = (run_dir / "report.html").read_text()
    assert "Before and after" in page and "data:image/png;base64," in page and "Sample outputs" in page


def _check_pairs(run_dir, pairs_file="data/pairs.jsonl"):
    answers = {row["id"]: row for row in _rows(run_dir / "data" / "train_answers.jsonl")}
    pairs = _rows(run_dir / pairs_file)
    assert pairs
    for pair in pairs:
        answer = answers[pair["id"]]
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert pair["prompt"][0]["content"] == answer["prompt"]
        assert chosen == answer["answer"] and chosen != rejected
        if pair["meta"]["rejected_source"] == "model":
            assert not answer["correct"] and rejected == answer["response"].strip()
    return pairs


def test_dpo_fast_writes_every_output(tmp_path, cache):
    result = _run(tmp_path, "dpo")
    _check_common(result, "dpo", ["dpo_curve.png"])
    pairs = _check_pairs(result.run_dir)
    summary = result.summary
    assert summary["pairs"]["n"] == len(pairs) and sum(summary["pairs"]["rejected_source"].values()) == len(pairs)
    assert {"margin", "accuracy"} <= set(summary["train"])
    assert yaml.safe_load((result.run_dir / "train.yaml").read_text())["data"]["paths"] == [
        str(result.run_dir / "data" / "pairs.jsonl")]


def test_grpo_fast_writes_the_reward_curve(tmp_path, cache):
    result = _run(tmp_path, "grpo")
    _check_common(result, "grpo", ["reward_curve.png"])
    rows = [r for r in _rows(result.run_dir / "train" / "metrics.jsonl") if "loss" in r]
    assert result.summary["reward_curve"]["per_step"] == [r["reward"] for r in rows]
    assert len(rows) == result.summary["train"]["steps"]
    prompts = _rows(result.run_dir / "data" / "prompts.jsonl")
    assert all(set(row) == {"id", "messages", "answer"} and row["answer"] for row in prompts)
    grpo = yaml.safe_load((result.run_dir / "train.yaml").read_text())["grpo"]
    assert grpo["rewards"][0] == "exact_match" and len(grpo["reward_weights"]) == len(grpo["rewards"])


def test_ppo_fast_trains_a_reward_model_then_ppo_against_it(tmp_path, cache):
    result = _run(tmp_path, "ppo")
    _check_common(result, "ppo", ["reward_curve.png", "reward_model_curve.png"])
    run_dir, summary = result.run_dir, result.summary
    assert (run_dir / "reward.yaml").is_file() and (run_dir / "reward" / "metrics.jsonl").is_file()
    assert (run_dir / "reward" / "adapter" / "reward_head.safetensors").is_file()
    assert yaml.safe_load((run_dir / "train.yaml").read_text())["ppo"]["reward_model"] == str(run_dir / "reward")
    # the held-out pairs are not trained on, and their accuracy is recomputed from the scores
    held = _check_pairs(run_dir, "data/reward_eval.jsonl")
    trained = _check_pairs(run_dir, "data/reward_train.jsonl")
    assert not {p["id"] for p in held} & {p["id"] for p in trained}
    scored = _rows(run_dir / "reward" / "heldout_scores.jsonl")
    accuracy = summary["reward_model"]["heldout_pair_accuracy"]
    assert accuracy["n"] == len(held) == len(scored)
    assert accuracy["mean"] == pytest.approx(
        sum(p["scores"]["chosen"] > p["scores"]["rejected"] for p in scored) / len(scored))
    rows = [r for r in _rows(run_dir / "train" / "metrics.jsonl") if "loss" in r]
    assert summary["kl"]["per_step"] == [r["kl"] for r in rows]


def test_pairs_reject_the_model_answer_or_another_instance():
    answers = [
        {"id": "a0", "task": "add", "prompt": "1+1?", "answer": "2", "response": "The sum is 2.", "correct": 0.0},
        {"id": "a1", "task": "add", "prompt": "2+1?", "answer": "3", "response": "3.", "correct": 1.0},
        {"id": "a2", "task": "add", "prompt": "1+2?", "answer": "3", "response": "  ", "correct": 0.0},
        {"id": "s0", "task": "sentiment", "prompt": "good", "answer": "positive", "response": "positive",
         "correct": 1.0},
    ]
    pairs = {p["id"]: p for p in build_pairs(answers)}
    assert set(pairs) == {"a0", "a1", "a2"}  # s0: no other instance with a different answer
    for pair_id, pair in pairs.items():
        gold = next(a["answer"] for a in answers if a["id"] == pair_id)
        assert pair["chosen"] == [{"role": "assistant", "content": gold}]
        assert pair["rejected"][0]["content"] != gold
    assert pairs["a0"]["rejected"][0]["content"] == "The sum is 2."
    assert pairs["a0"]["meta"]["rejected_source"] == "model"
    # right (a1) or empty (a2): the next instance of the task whose answer differs
    assert pairs["a1"]["rejected"][0]["content"] == "2" and pairs["a1"]["meta"]["rejected_source"] == "other_instance"
    assert pairs["a2"]["rejected"][0]["content"] == "2" and pairs["a2"]["meta"]["rejected_source"] == "other_instance"


def test_curve_summary_calls_a_clear_rise_rising():
    rows = [{"step": i + 1, "loss": 0.0, "reward": 0.1 * i} for i in range(8)]
    assert curve_summary(rows, "reward", seed=0)["rising"] is True
    flat = [{"step": i + 1, "loss": 0.0, "reward": 0.5} for i in range(8)]
    assert curve_summary(flat, "reward", seed=0)["rising"] is False


def test_objective_and_vision_together_are_refused(capsys):
    assert main(["quickstart", "--objective", "dpo", "--vision", "--model", "tiny", "--fast"]) == 2
    assert "drop --vision" in capsys.readouterr().err


def test_grpo_reward_is_exact_match_plus_half_for_a_short_answer():
    from sftlab.quickstart.preference import SETTINGS
    from sftlab.train.config import GRPOSection
    from sftlab.train.objectives.grpo import score

    s = SETTINGS["grpo"]
    section = GRPOSection(rewards=s["rewards"], reward_weights=s["reward_weights"], format_pattern=s["format_pattern"])
    assert score("CASTLE DESERT", "CASTLE DESERT", section, "test") == 1.5
    assert score("The words are castle, desert.", "CASTLE DESERT", section, "test") == 0.5
    assert score("Sure! Here are the words in capital letters:\nCASTLE DESERT", "CASTLE DESERT", section, "test") == 0
    assert score("x" * 41, "CASTLE DESERT", section, "test") == 0
