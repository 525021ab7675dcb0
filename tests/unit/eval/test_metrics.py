"""Bootstrap intervals are seeded and sensible; ECE on a hand-computed case."""
import numpy as np
import pytest

from sftlab.eval.metrics import bootstrap_ci, expected_calibration_error, standard_error


def test_bootstrap_is_deterministic_for_a_seed():
    values = list(np.random.default_rng(0).integers(0, 2, 200))
    first, second = bootstrap_ci(values, seed=7), bootstrap_ci(values, seed=7)
    assert first == second
    assert bootstrap_ci(values, seed=8) != first  # the seed matters
    assert first["low"] < first["mean"] < first["high"] and first["n"] == 200


def test_bootstrap_interval_matches_normal_approximation():
    values = [1.0] * 300 + [0.0] * 700
    interval = bootstrap_ci(values, seed=0, resamples=2000)
    half_width = 1.96 * standard_error(values)
    assert interval["mean"] == pytest.approx(0.3)
    assert interval["high"] - interval["low"] == pytest.approx(2 * half_width, rel=0.1)


def test_bootstrap_constant_and_empty():
    assert bootstrap_ci([1, 1, 1])["low"] == 1.0
    assert bootstrap_ci([])["n"] == 0


def test_ece_crafted():
    # bin (0.8, 0.9]: conf 0.9, 0.9, accuracy 0.5 -> gap 0.4 on 2 items
    # bin (0.5, 0.6]: conf 0.6, 0.6, accuracy 1.0 -> gap 0.4 on 2 items
    # bin (0.2, 0.3]: conf 0.25 wrong                -> gap 0.25 on 1 item
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.6, 0.25], [1, 0, 1, 1, 0])
    assert ece == pytest.approx((2 * 0.4 + 2 * 0.4 + 0.25) / 5)


def test_ece_perfectly_calibrated_is_zero():
    assert expected_calibration_error([1.0, 1.0, 0.5, 0.5], [1, 1, 1, 0]) == pytest.approx(0.0)
