"""Numbers with their uncertainty: means, seeded bootstrap intervals, standard errors, ECE.

Every score sftlab reports comes with a 95% interval and the number of items behind it, so
a difference of two points on 50 items is visibly noise. The bootstrap is seeded, so the
same per-item scores always give the same interval.

>>> interval = bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1], seed=0)
>>> interval["mean"], interval["n"]
(0.75, 8)
>>> interval["low"] <= 0.75 <= interval["high"]
True
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for n < 2."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(np.std(values, ddof=1) / math.sqrt(n))


def bootstrap_ci(values: Sequence[float], *, seed: int = 1234, resamples: int = 1000,
                 confidence: float = 0.95) -> dict[str, float]:
    """Percentile bootstrap interval of the mean.

    -> ``{"mean", "low", "high", "stderr", "n"}``; ``stderr`` is the bootstrap standard
    deviation of the mean. The resampling indices come from ``numpy.random.default_rng(seed)``,
    so the result depends only on the values, their order and the seed.
    """
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"),
                "stderr": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    means = array[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return {
        "mean": float(array.mean()),
        "low": float(np.quantile(means, tail)),
        "high": float(np.quantile(means, 1.0 - tail)),
        "stderr": float(means.std(ddof=1)) if resamples > 1 else 0.0,
        "n": n,
    }


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[float],
                               bins: int = 10) -> float:
    """ECE: the bin-weighted mean |accuracy - confidence| over equal-width confidence bins.

    ``confidences[i]`` is the probability the model gave its chosen answer (in [0, 1]);
    ``correct[i]`` is 1 when that answer was right. Bin ``b`` holds confidences in
    ``(b/bins, (b+1)/bins]`` (confidence 0 goes to the first bin).

    >>> expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 1, 1, 0], bins=10)
    0.1
    """
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    # ceil(c * bins) - 1 puts c in (b/bins, (b+1)/bins]; clip sends 0 to bin 0
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(hits[in_bin].mean() - conf[in_bin].mean())
    return round(float(total / len(conf)), 12)
