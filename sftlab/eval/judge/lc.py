"""Win rates from pairwise annotations: raw, and length-controlled as AlpacaEval computes it.

Annotation format (AlpacaEval's): ``output_1`` is the baseline, ``output_2`` the model;
``preference`` is 1 (baseline better), 2 (model better), 1.5 (tie) or anything in between
(a probability: ``preference - 1`` = P(model better)).

Raw win rate = mean(preference - 1), ties counting one half, with its standard error.

Length-controlled (LC) win rate, AlpacaEval's ``length_controlled_v1`` (Dubois et al. 2024,
arXiv 2404.04475; alpaca_eval ``src/alpaca_eval/metrics/glm_winrate.py``). Facts taken from
there: a GLM without intercept, R formula
``np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1``:

    logit P(model better)_i = psi_len * tanh(s_i) + psi_diff * difficulty_i + theta * not_gamed_i

* ``s_i = (len(output_1) - len(output_2)) / std`` (baseline minus model, in characters; ``std``
  the sample standard deviation over the file), so a judge that likes long answers gives a
  negative ``psi_len``;
* ``difficulty_i``: one fixed number per AlpacaEval instruction (the reference downloads it;
  here it ships in ``data/alpaca_eval_lc.json``, see ``scripts/build_alpaca_eval_difficulty.py``);
* ``not_gamed_i`` = 1 on the model's rows. The fit also sees the rows of two "gamed"
  baselines (gpt4_1106_preview told to be verbose, or concise, judged against itself) with
  ``not_gamed`` = 0 and sample weight ``0.2 / 2``: they pull ``psi_len`` and ``psi_diff``
  towards what pure length changes do, so a model cannot gain by changing only its length;
* estimator: L1-penalised logistic regression on soft labels (``preference - 1``, a tie = 0.5),
  strength ``C`` among ``logspace(-4, 4, 10)`` chosen by 5-fold cross-validation on the
  weighted log-loss, then refit on all rows (scikit-learn's ``LogisticRegressionCV`` with
  liblinear; the fit below is our own proximal Newton, same objective);
* LC = 100 * mean over the model's rows of ``sigmoid(theta + psi_diff * difficulty_i)``: the
  win rate with no length difference; its standard error is the standard error of the mean
  of those predictions (the reference's ``sem``).

Variants, named in ``lc_variant``: ``length_controlled_v1`` (AlpacaEval instructions: shipped
difficulty and gamed baselines), ``length_controlled_noreg`` (difficulty given in the
annotations' ``instruction_difficulty`` field, no gamed baselines) and
``length_controlled_minimal`` (other instructions: ``tanh(s) + not_gamed`` only), as in the
reference's ``GLM_INFO``.

>>> rows = [{"output_1": "a", "output_2": "bb", "preference": 2},
...         {"output_1": "a", "output_2": "b", "preference": 1}]
>>> winrate(rows)["win_rate"]
50.0
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
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

LC_TABLE = Path(__file__).parent / "data" / "alpaca_eval_lc.json"
GAMED_WEIGHT = 0.2
"""The reference's ``regularize_to_baseline_lambda``, shared by the two gamed baselines."""
CS = np.logspace(-4, 4, 10)
"""Inverse L1 strengths tried by cross-validation (scikit-learn's default ``Cs=10``)."""
WEIGHT_NAMES = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")
"""The reference's names of the GLM's weights (the columns of its saved weights CSV)."""


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def instruction_key(instruction: str) -> str:
    """The key of an instruction in the shipped table: the first 12 hex digits of the SHA-1
    of its UTF-8 text.

    >>> instruction_key("Hi")
    '94dd9e08c129'
    """
    return hashlib.sha1(instruction.encode("utf-8")).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def load_lc_table(path: str | None = None) -> dict[str, Any]:
    """The shipped AlpacaEval table: ``{"instructions": [sha1 prefix, ...] (805, AlpacaEval's
    order), "difficulty": [float, ...], "baseline_len": [int, ...], "gamed": {name:
    {"len_output_2": [...], "preference": [...]}}, ...}`` plus how it was built."""
    return json.loads(Path(path or LC_TABLE).read_text(encoding="utf-8"))


def std_delta_len(len_1: np.ndarray, len_2: np.ndarray) -> np.ndarray:
    """(len_1 - len_2) / its sample standard deviation (1 where it is 0 or undefined)."""
    delta = np.asarray(len_1, dtype=np.float64) - np.asarray(len_2, dtype=np.float64)
    scale = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    return delta / (scale if scale > 0 else 1.0)


def gamed_rows(table: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The gamed baselines as GLM rows: features (2 * 805, 3) with ``not_gamed`` = 0, and their
    soft labels (2 * 805,)."""
    difficulty = np.asarray(table["difficulty"], dtype=np.float64)
    xs, ys = [], []
    for gamed in table["gamed"].values():
        s = std_delta_len(table["baseline_len"], gamed["len_output_2"])
        xs.append(np.stack([np.tanh(s), difficulty, np.zeros_like(s)], axis=1))
        ys.append(np.asarray(gamed["preference"], dtype=np.float64))
    return np.concatenate(xs), np.concatenate(ys)


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


def fit_logistic_l1(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, C: float, *,
                    iterations: int = 100) -> np.ndarray:
    """Weights ``w`` minimising ``|w|_1 + C * sum_i sample_weight_i * logloss(y_i, sigmoid(x_i @ w))``
    with soft labels ``y`` in [0, 1] and no intercept: liblinear's L1 logistic objective, which
    the reference fits (its copies of every row with labels 1 and 0, weighted ``y`` and
    ``1 - y``, sum to this). Proximal Newton: each step minimises the quadratic model plus the
    L1 term by coordinate descent (x has a handful of columns), then backtracks."""
    c = C * sample_weight
    w = np.zeros(x.shape[1])

    def objective(v: np.ndarray) -> float:
        z = x @ v
        return float(np.sum(c * (np.logaddexp(0.0, z) - y * z)) + np.abs(v).sum())

    value = objective(w)
    for _ in range(iterations):
        p = sigmoid(x @ w)
        gradient = x.T @ (c * (p - y))
        hessian = (x.T * (c * p * (1 - p))) @ x
        target = np.asarray(_lasso_quadratic(w.tolist(), gradient.tolist(), hessian.tolist()))
        step, direction = 1.0, target - w
        while True:
            new_value = objective(w + step * direction)
            if new_value <= value + 1e-12 or step < 1e-8:
                break
            step /= 2
        w = w + step * direction
        done = abs(value - new_value) <= 1e-12 * max(1.0, abs(value)) and np.abs(step * direction).max() < 1e-9
        value = new_value
        if done:
            break
    return w


def _lasso_quadratic(w: list[float], gradient: list[float], hessian: list[list[float]],
                     sweeps: int = 50) -> list[float]:
    """argmin_u gradient . (u - w) + (u - w)' hessian (u - w) / 2 + |u|_1 by coordinate descent
    (plain floats: a few columns, so Python scalars beat numpy here)."""
    u = list(w)
    k = len(w)
    for _ in range(sweeps):
        change = 0.0
        for j in range(k):
            a = hessian[j][j]
            if a <= 1e-300:
                continue
            g = gradient[j] + sum(hessian[j][i] * (u[i] - w[i]) for i in range(k) if i != j)
            free = w[j] - g / a
            new = math.copysign(max(abs(free) - 1.0 / a, 0.0), free)  # soft threshold
            change = max(change, abs(new - u[j]))
            u[j] = new
        if change < 1e-13:
            break
    return u


def fit_logistic_cv(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, *,
                    n_splits: int = 5) -> tuple[np.ndarray, float]:
    """(weights, chosen C): ``fit_logistic_l1`` with C picked among ``CS`` by ``n_splits``-fold
    cross-validation (row ``i`` in fold ``i % n_splits``; the reference's GroupKFold keeps both
    copies of a row together, as this does) on the held-out mean of
    ``sample_weight * logloss``, then refit on all rows. Ties keep the smallest C."""
    n_splits = min(n_splits, len(y))  # a tiny file: every fold still gets a test row
    if n_splits < 2:
        return fit_logistic_l1(x, y, sample_weight, float(CS[-1])), float(CS[-1])
    folds = np.arange(len(y)) % n_splits
    scores = np.zeros(len(CS))
    for fold in range(n_splits):
        train, test = folds != fold, folds == fold
        for j, C in enumerate(CS):
            w = fit_logistic_l1(x[train], y[train], sample_weight[train], C)
            q = np.clip(sigmoid(x[test] @ w), 1e-15, 1 - 1e-15)
            loss = -np.mean(sample_weight[test] * (y[test] * np.log(q) + (1 - y[test]) * np.log(1 - q)))
            scores[j] += loss / n_splits
    best = float(CS[int(np.argmin(scores))])
    return fit_logistic_l1(x, y, sample_weight, best), best


def fit_length_controlled(len_1: np.ndarray, len_2: np.ndarray, y: np.ndarray,
                          difficulty: np.ndarray | None = None,
                          gamed: tuple[np.ndarray, np.ndarray] | None = None, *,
                          cv: bool = True) -> dict[str, Any]:
    """The GLM on one model's rows (arrays of length n: output lengths, soft labels with NaN
    for "no verdict", per-row difficulty or None) plus, optionally, the gamed baselines'
    rows from ``gamed_rows``. ``cv=False`` fits with C = 1e4 (no tuning; for quick builds).
    -> ``{"length_controlled_winrate", "lc_standard_error", "weights", "C"}``.

    Rows without a verdict stay out of the fit but are predicted (as in the reference)."""
    s = std_delta_len(len_1, len_2)
    columns = [np.tanh(s)] + ([difficulty] if difficulty is not None else []) + [np.ones_like(s)]
    x = np.stack(columns, axis=1)
    known = ~np.isnan(y)
    x_fit, y_fit, weight = x[known], y[known], np.ones(int(known.sum()))
    if gamed is not None:
        x_gamed, y_gamed = gamed
        x_fit = np.concatenate([x_gamed, x_fit])  # the reference stacks the gamed rows first
        y_fit = np.concatenate([y_gamed, y_fit])
        weight = np.concatenate([np.full(len(y_gamed), GAMED_WEIGHT / 2), weight])
    if cv:
        w, C = fit_logistic_cv(x_fit, y_fit, weight)
    else:
        C = 1e4
        w = fit_logistic_l1(x_fit, y_fit, weight, C)
    x_zero = x.copy()
    x_zero[:, 0] = 0.0  # predict as if model and baseline wrote equally long answers
    predicted = sigmoid(x_zero @ w)
    names = [WEIGHT_NAMES[0]] + ([WEIGHT_NAMES[1]] if difficulty is not None else []) + [WEIGHT_NAMES[2]]
    sem = float(predicted.std(ddof=1) / math.sqrt(len(predicted))) if len(predicted) > 1 else 0.0
    return {"length_controlled_winrate": float(100 * predicted.mean()), "lc_standard_error": 100 * sem,
            "weights": dict(zip(names, map(float, w))), "C": C}


def table_difficulty(instructions: Sequence[str | None], table: dict[str, Any]) -> np.ndarray | None:
    """Per-row difficulty from the shipped table (instruction text -> SHA-1 prefix ->
    difficulty), or None unless every instruction is an AlpacaEval one."""
    index = {key: i for i, key in enumerate(table["instructions"])}
    found = [index.get(instruction_key(text)) if isinstance(text, str) else None for text in instructions]
    if not found or any(i is None for i in found):
        return None
    return np.asarray(table["difficulty"], dtype=np.float64)[found]


def length_controlled_winrate(annotations: Sequence[dict[str, Any]], *, seed: int = 1234,
                              table: dict[str, Any] | None = None) -> dict[str, Any]:
    """-> ``{"length_controlled_winrate", "lc_standard_error", "weights", "uses_difficulty",
    "lc_variant", "C"}``; the variant (see the module docstring) follows from the rows:
    an ``instruction_difficulty`` field on every row -> noreg with it; every instruction in
    the shipped table -> v1; otherwise minimal. A file judging the baseline against itself
    gets 50 and zero weights, as in the reference. ``seed`` is accepted for callers and
    unused: the fit is deterministic."""
    del seed
    p = preferences(annotations)
    if not len(p) or np.isnan(p).all():
        raise DataError("no annotation has a preference")
    len_1 = np.asarray([len(r["output_1"]) for r in annotations], dtype=np.float64)
    len_2 = np.asarray([len(r["output_2"]) for r in annotations], dtype=np.float64)
    pairs = {(r.get("generator_1"), r.get("generator_2")) for r in annotations}
    baseline, model = next(iter(pairs))
    if len(pairs) == 1 and baseline is not None and baseline == model:
        return {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0,
                "weights": dict.fromkeys(WEIGHT_NAMES, 0.0), "uses_difficulty": False, "C": None,
                "lc_variant": "baseline against itself: 50 by construction"}
    if all(r.get("instruction_difficulty") is not None for r in annotations):
        difficulty = np.asarray([float(r["instruction_difficulty"]) for r in annotations])
        result = fit_length_controlled(len_1, len_2, p, difficulty)
        variant = "length_controlled_noreg (instruction difficulty from the annotations, no gamed baselines)"
    else:
        table = table or load_lc_table()
        difficulty = table_difficulty([r.get("instruction") for r in annotations], table)
        if difficulty is not None:
            result = fit_length_controlled(len_1, len_2, p, difficulty, gamed_rows(table))
            variant = ("length_controlled_v1 (shipped AlpacaEval instruction difficulty and gamed "
                       f"baselines, {table['version']})")
        else:
            result = fit_length_controlled(len_1, len_2, p)
            variant = ("length_controlled_minimal (instructions not all from AlpacaEval: "
                       "no instruction difficulty, no gamed baselines)")
    return {**result, "uses_difficulty": difficulty is not None, "lc_variant": variant}


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


def fit_instruction_difficulty(models: Sequence[dict[str, np.ndarray]], n_instructions: int, *,
                               l2: float = 0.1, iterations: int = 50) -> np.ndarray:
    """Per-instruction difficulty (n_instructions,) fitted jointly on several models'
    annotations, the way the reference's notebook (notebooks/instruction_difficulty.ipynb)
    fits it: ``logit P(model better) = a_m + b_m * tanh(s_mi) + d_i`` with a bias and a length
    slope per model and one weight ``d_i`` per instruction shared by all models. Our fit:
    Newton's method on the summed log-loss with ridge ``l2 / 2 * |params|^2`` (the reference
    uses cross-validated L1); ``d`` is then shifted to median 0 (an L1 fit's location, since
    the per-model biases absorb any shift). Larger ``d`` = the model wins more = easier.

    ``models``: dicts with arrays ``instruction`` (int index), ``len_1``, ``len_2``, ``y`` (soft
    labels; rows with NaN are skipped)."""
    n_models = len(models)
    model_ids, instruction_ids, tanh_s, labels = [], [], [], []
    for k, m in enumerate(models):
        s = std_delta_len(m["len_1"], m["len_2"])
        known = ~np.isnan(m["y"])
        model_ids.append(np.full(int(known.sum()), k))
        instruction_ids.append(np.asarray(m["instruction"])[known])
        tanh_s.append(np.tanh(s[known]))
        labels.append(m["y"][known])
    model_id, instruction_id = np.concatenate(model_ids), np.concatenate(instruction_ids)
    t, y = np.concatenate(tanh_s), np.concatenate(labels)
    size = 2 * n_models + n_instructions  # [a (models), b (models), d (instructions)]
    columns = [model_id, n_models + model_id, 2 * n_models + instruction_id]
    values = [np.ones_like(t), t, np.ones_like(t)]
    w = np.zeros(size)
    for _ in range(iterations):
        p = sigmoid(w[columns[0]] + w[columns[1]] * t + w[columns[2]])
        gradient, hessian = l2 * w, l2 * np.eye(size)
        for col, val in zip(columns, values):
            np.add.at(gradient, col, (p - y) * val)
            for col2, val2 in zip(columns, values):
                np.add.at(hessian, (col, col2), p * (1 - p) * val * val2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    d = w[2 * n_models:]
    return d - float(np.median(d))


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
