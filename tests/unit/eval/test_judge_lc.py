"""Length-controlled win rate on synthetic annotations from a length-biased judge."""
import numpy as np
import pytest

from sftlab.eval.judge.lc import estimate_difficulty, fit_logistic, summarize_annotations, winrate


def synthetic(seed, *, quality=0.0, length_bias=1.5, mean_extra=400, n=805):
    """Model and baseline equally good (quality 0) but the model writes longer answers and
    the judge prefers length: P(model) = sigmoid(quality + bias * tanh(delta / sd))."""
    rng = np.random.default_rng(seed)
    base_len = rng.integers(300, 1500, n)
    model_len = np.maximum(base_len + rng.normal(mean_extra, 500, n).astype(int), 1)
    delta = model_len - base_len
    p = 1 / (1 + np.exp(-(quality + length_bias * np.tanh(delta / delta.std(ddof=1)))))
    wins = rng.random(n) < p
    return [{"instruction": f"i{i}", "output_1": "b" * int(base_len[i]), "output_2": "m" * int(model_len[i]),
             "preference": 2.0 if wins[i] else 1.0, "generator_1": "base", "generator_2": "verbose"}
            for i in range(n)]


def test_lc_removes_length_bias():
    summary = summarize_annotations(synthetic(0))
    assert summary["win_rate"] > 60  # the biased judge inflates the raw win rate
    assert abs(summary["length_controlled_winrate"] - 50) < 3 * summary["lc_standard_error"] + 1
    # the reference's sign: std_delta_len = baseline minus model length, so a length-loving judge is negative
    assert summary["weights"]["np.tanh(std_delta_len)"] < -0.8


def test_lc_keeps_a_real_quality_difference():
    better = summarize_annotations(synthetic(1, quality=1.0, length_bias=0.0, mean_extra=0))
    assert better["length_controlled_winrate"] == pytest.approx(better["win_rate"], abs=3)
    assert better["length_controlled_winrate"] > 65


def test_lc_is_deterministic():
    rows = synthetic(2, n=200)
    assert summarize_annotations(rows, seed=5) == summarize_annotations(rows, seed=5)


def test_winrate_counts_ties_as_half():
    rows = [{"output_1": "a", "output_2": "b", "preference": p} for p in (1, 2, 1.5, 0, 1.75)]
    result = winrate(rows)
    assert result["win_rate"] == pytest.approx(100 * (0 + 1 + 0.5 + 0.5 + 0.75) / 5)
    assert result["n_draws"] == 2 and result["n_wins"] == 2 and result["n_wins_base"] == 1
    assert result["standard_error"] == pytest.approx(100 * np.std([0, 1, .5, .5, .75], ddof=1) / np.sqrt(5))


def test_fit_logistic_recovers_weights():
    rng = np.random.default_rng(0)
    x = np.stack([np.ones(5000), rng.normal(size=5000)], axis=1)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(x @ np.array([0.5, -1.0]))))).astype(float)
    assert fit_logistic(x, y, l2=0.0) == pytest.approx([0.5, -1.0], abs=0.1)


def test_difficulty_from_several_models():
    hard = [{"instruction": "hard", "output_1": "a", "output_2": "b", "preference": 1.0}]
    easy = [{"instruction": "easy", "output_1": "a", "output_2": "b", "preference": 2.0}]
    difficulty = estimate_difficulty([hard + easy, hard + easy])
    assert difficulty["hard"] > 0 > difficulty["easy"]
