"""Win rates from pairwise annotations: raw, and length-controlled (Dubois et al. 2024).

Annotation format (AlpacaEval's): ``output_1`` is the baseline, ``output_2`` the model;
``preference`` is 1 (baseline better), 2 (model better), 1.5 (tie) or anything in between
(a probability: ``preference - 1`` = P(model better)).

Raw win rate = mean(preference - 1), ties counting one half, with its standard error.

Length-controlled win rate: a judge that likes long answers inflates a verbose model's
raw win rate. Fit a logistic regression (a GLM) of the preference on

    logit P(model better)_i = theta_model + phi * difficulty_i + psi * tanh(delta_len_i / sd)

where ``delta_len_i`` = len(model output) - len(baseline output) in characters and ``sd``
its standard deviation over the annotations, then predict every item again with the length
difference set to zero and average: the win rate the model would have had if it wrote as
long as the baseline. ``difficulty_i`` is a per-instruction difficulty; AlpacaEval ships
one estimated on its leaderboard. Here it comes from the annotations (field
``instruction_difficulty``), or is estimated from several models' annotations of the same
instructions (``estimate_difficulty``); with neither, the term is left out.

The fit is our own: Newton's method on the log-loss with soft labels and a small L2
penalty (AlpacaEval uses scikit-learn's L1 logistic regression with cross-validation and
regularises towards baseline models; the quantity estimated is the same). The standard error
is a seeded bootstrap over instructions (the GLM refit on every resample).

>>> rows = [{"output_1": "a", "output_2": "bb", "preference": 2},
...         {"output_1": "a", "output_2": "b", "preference": 1}]
>>> winrate(rows)["win_rate"]
50.0
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from sftlab.errors import DataError


def preferences(annotations: Sequence[dict[str, Any]]) -> np.ndarray:
    """P(model better) per annotation, in [0, 1]; NaN where the judge gave no verdict.
    AlpacaEval writes a tie as 0 in some files; that is read as 1.5 too."""
    values = []
    for i, row in enumerate(annotations):
        preference = row.get("preference")
        if preference is None or (isinstance(preference, float) and math.isnan(preference)):
            values.append(float("nan"))
            continue
        preference = float(preference)
        if preference == 0.0:
            preference = 1.5
        if not 1.0 <= preference <= 2.0:
            raise DataError(f"preference {preference} is outside [1, 2]", index=i, field="preference")
        values.append(preference - 1.0)
    return np.asarray(values, dtype=np.float64)


def winrate(annotations: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Raw win rate (percent), its standard error, and the counts."""
    p = preferences(annotations)
    p = p[~np.isnan(p)]
    n = len(p)
    if n == 0:
        raise DataError("no annotation has a preference")
    return {
        "win_rate": float(100 * p.mean()),
        "standard_error": float(100 * p.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "n_wins": int((p > 0.5).sum()), "n_wins_base": int((p < 0.5).sum()),
        "n_draws": int((p == 0.5).sum()), "n_total": n,
    }


# ---------------------------------------------------------------- the GLM

def _features(delta_len: np.ndarray, difficulty: np.ndarray | None, scale: float) -> np.ndarray:
    """Design matrix (n, 2 or 3): [model term, (difficulty), tanh(delta_len / scale)]."""
    columns = [np.ones_like(delta_len)]
    if difficulty is not None:
        columns.append(difficulty)
    columns.append(np.tanh(delta_len / scale))
    return np.stack(columns, axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iterations: int = 50) -> np.ndarray:
    """Weights ``w`` minimising mean log-loss(sigmoid(x @ w), y) + l2/2 |w|^2, with soft
    labels ``y`` in [0, 1] (Newton's method; the loss is convex, so it converges)."""
    w = np.zeros(x.shape[1])
    n = len(y)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) / n + l2 * w
        hessian = (x.T * (p * (1 - p))) @ x / n + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def _lc_point(delta_len: np.ndarray, y: np.ndarray, difficulty: np.ndarray | None) -> tuple[float, np.ndarray]:
    scale = float(delta_len.std(ddof=1)) if len(delta_len) > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    x = _features(delta_len, difficulty, scale)
    w = fit_logistic(x, y)
    x_zero = _features(np.zeros_like(delta_len), difficulty, scale)  # the length term vanishes
    predicted = 1.0 / (1.0 + np.exp(-(x_zero @ w)))
    return float(100 * predicted.mean()), w


def length_controlled_winrate(annotations: Sequence[dict[str, Any]], *, seed: int = 1234,
                              resamples: int = 200) -> dict[str, Any]:
    """-> ``{"length_controlled_winrate", "lc_standard_error", "weights", "uses_difficulty"}``."""
    p = preferences(annotations)
    keep = ~np.isnan(p)
    rows = [row for row, k in zip(annotations, keep) if k]
    y = p[keep]
    delta_len = np.asarray([len(r["output_2"]) - len(r["output_1"]) for r in rows], dtype=np.float64)
    difficulty = None
    if rows and all(r.get("instruction_difficulty") is not None for r in rows):
        difficulty = np.asarray([float(r["instruction_difficulty"]) for r in rows])
    value, w = _lc_point(delta_len, y, difficulty)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        boots.append(_lc_point(delta_len[idx], y[idx], None if difficulty is None else difficulty[idx])[0])
    names = ["model"] + (["instruction_difficulty"] if difficulty is not None else []) + ["tanh_std_delta_len"]
    return {"length_controlled_winrate": value,
            "lc_standard_error": float(np.std(boots, ddof=1)) if resamples > 1 else 0.0,
            "weights": dict(zip(names, map(float, w))), "uses_difficulty": difficulty is not None}


def estimate_difficulty(annotation_sets: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
    """Per-instruction difficulty from several models' annotations of the same instructions:
    minus the logit of the (smoothed) mean preference over models, centred on zero, so an
    instruction every model loses on is "hard" (positive). -> {instruction: difficulty}."""
    totals: dict[str, list[float]] = {}
    for annotations in annotation_sets:
        for row, value in zip(annotations, preferences(annotations)):
            if not np.isnan(value):
                totals.setdefault(row["instruction"], []).append(float(value))
    logits = {}
    for instruction, values in totals.items():
        smoothed = (sum(values) + 0.5) / (len(values) + 1.0)  # keeps all-wins finite
        logits[instruction] = -math.log(smoothed / (1 - smoothed))
    centre = float(np.mean(list(logits.values()))) if logits else 0.0
    return {k: v - centre for k, v in logits.items()}


def summarize_annotations(annotations: Sequence[dict[str, Any]], *, seed: int = 1234) -> dict[str, Any]:
    """Raw and length-controlled win rates of one model's annotations."""
    summary: dict[str, Any] = dict(winrate(annotations))
    summary.update(length_controlled_winrate(annotations, seed=seed))
    generators = {row.get("generator_2") for row in annotations} - {None}
    baselines = {row.get("generator_1") for row in annotations} - {None}
    summary["model"] = ", ".join(sorted(generators)) or None
    summary["baseline"] = ", ".join(sorted(baselines)) or None
    summary["avg_length"] = float(np.mean([len(r.get("output_2", "")) for r in annotations]))
    return summary
