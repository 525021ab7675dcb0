"""Rebuild ``sftlab/eval/judge/data/alpaca_eval_lc.json``: what AlpacaEval's length-controlled
win rate (``length_controlled_v1``) downloads at run time, derived from public annotations.

    python scripts/build_alpaca_eval_difficulty.py [--shared ../shared/data] \
        [--gamed-outputs ALPACA_EVAL_CHECKOUT/results] [-o sftlab/eval/judge/data/alpaca_eval_lc.json]

Inputs:

* ``alpaca_eval/leaderboard_annotations/annotations_compact.csv`` and ``leaderboard.csv`` under
  ``--shared``: 44 leaderboard models' judge preferences and output lengths, and their
  published raw and LC win rates.
* The output lengths of the two gamed baselines (alpaca_eval ``results/
  gpt4_1106_preview_{verbose,concise}/model_outputs.json``): read from ``--gamed-outputs`` when
  given, else kept from the existing table (they are fixed facts).
* ``GAMED_WEIGHTS`` below: the reference's published GLM weights of those two baselines
  (alpaca_eval ``src/alpaca_eval/metrics/weights/weighted_alpaca_eval_gpt4_turbo/
  length_controlled_v1/baseline_gpt4_1106_preview.csv``).
* ``scripts/data/alpaca_eval_published_glm.csv``: from that weights file and the published
  leaderboard (``src/alpaca_eval/leaderboards/data_AlpacaEval_2/
  weighted_alpaca_eval_gpt4_turbo_leaderboard.csv``), the three GLM weights and the LC win rate
  of each model that has both (199), less the baseline and the 14 held-out models below: 184 rows.

Steps:

1. Hold out a fixed random third of the models (``numpy.random.default_rng(0)`` permutation
   of the sorted names, the baseline excluded); everything below sees only the rest (the
   "fitted" models) and the published GLM file, which leaves the held-out ones out. They
   check the result (tests/unit/eval/test_judge_lc_reference.py; ``--check`` prints it).
2. Ranking of the instructions: ``sftlab.eval.judge.lc.fit_instruction_difficulty`` on the
   fitted models (the reference notebook's joint GLM), ridge ``DIFFICULTY_L2``.
3. Scale: the leaderboard's LC of a model is ``mean_i sigmoid(w_not_gamed + w_difficulty *
   d_i)`` with its published weights and the reference's difficulty ``d``, so the published
   rows pin down the distribution of ``d`` (its origin, unit and skew), though not which
   instruction has which value. A monotone piecewise-linear map (``MAP_KNOTS`` segments) of
   step 2's values is fitted so that they reproduce the published LC of the 184 models (rms
   0.017 points: one distribution explains the whole leaderboard). Keyed by the instruction's
   SHA-1 prefix.
4. Gamed baselines: the judge's annotations of those two outputs are not public (the
   reference downloads them as ``df_gamed.csv``; alpaca_eval's git holds only pointers), so
   their soft labels are modelled as ``sigmoid((w_len + dl) * tanh(s) + (w_diff + dd) *
   difficulty + w_model)`` with the published weights ``w``. Only two sums of those labels
   reach the fit (the gradient is linear in the labels), so ``dl`` and ``dd`` stand for them;
   they are chosen by coordinate search so that the fitted models' LC win rates match the
   published ones.

How the method was chosen (``--select`` prints the last rows): 3-fold cross-validation over
the fitted models only (``default_rng(1)`` permutation, fold ``k`` = every third from ``k``):
ranking, map and calibration from two folds (the map also without the third fold's published
rows), LC error on the third. Mean / max points: the previous table (ridge 0.1, difficulty
shift calibrated with dl, dd) 0.46 / 1.58; shift and scale calibrated instead of the map,
ridge 0.03 / 0.1 / 0.3 / 1.0: 0.43 / 1.46, 0.45 / 1.55, 0.46 / 1.63, 0.49 / 1.80; the map
(step 3), ridge 0.01 / 0.03 / 0.1: 0.37 / 1.29, 0.38 / 1.34, 0.38 / 1.31 (without
``MAP_RIDGE``: 0.37 / 1.31, 0.37 / 1.26, 0.38 / 1.31; 4 or 16 segments: 0.38 / 1.35,
0.39 / 1.33). Tried and not kept: the ranking from a per-instruction fit with the published
weights as offsets (0.41 / 1.88 with the map), also matching the published weights in the
calibration (0.46 / 1.52), a quadratic or two-slope map calibrated on the fitted models' LC
(unstable across folds).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.eval.judge.lc import LC_TABLE, fit_instruction_difficulty, fit_length_controlled, gamed_rows, \
    load_lc_table, sigmoid, std_delta_len

BASELINE = "gpt4_1106_preview"
GAMED = ("gpt4_1106_preview_verbose", "gpt4_1106_preview_concise")
GAMED_WEIGHTS = {  # (np.tanh(std_delta_len), instruction_difficulty, not_gamed_baseline), published
    "gpt4_1106_preview_verbose": (-1.5835274219761557, 0.8334888457867451, 0.1923534665807022),
    "gpt4_1106_preview_concise": (-1.6424856171097677, 0.6835779026468267, -0.3182055425894927),
}
DIFFICULTY_L2 = 0.01
"""Ridge of the joint difficulty fit, chosen by cross-validation over the fitted models (see above)."""
MAP_KNOTS = 8
"""Segments of the monotone map from the joint fit's difficulty to the reference's scale."""
MAP_RIDGE = 1e-3
"""Ridge on the map's log-slopes (squared points of LC per unit): keeps the fit unique where
the published rows do not decide (the extreme instructions), far below the fit's own loss."""
PUBLISHED_GLM = Path(__file__).parent / "data" / "alpaca_eval_published_glm.csv"
VERSION = "sftlab-alpaca-eval-lc-3"
CALIBRATION_KEYS = ("gamed_delta_len", "gamed_delta_difficulty")
CALIBRATION_START = (0.0, 0.0)
CALIBRATION_STEPS = (0.2, 0.2)


def read_published(path: Path = PUBLISHED_GLM) -> dict[str, tuple[float, float, float, float]]:
    """{model: (w_len, w_difficulty, w_not_gamed, published LC)}: the reference's per-model GLM
    weights and leaderboard LC (data facts copied from alpaca_eval's weights CSV and leaderboard;
    the held-out models are not in the file)."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["model"]: (float(row["np.tanh(std_delta_len)"]), float(row["instruction_difficulty"]),
                               float(row["not_gamed_baseline.astype(float)"]),
                               float(row["length_controlled_winrate"])) for row in csv.DictReader(f)}


def piecewise_map(base: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Monotone piecewise-linear map of ``base``: knots at its quantiles 0, 1/K, ..., 1, value
    ``theta[0]`` at the first, slope ``exp(theta[k])`` on segment k (extended linearly outside)."""
    knots = np.quantile(base, np.linspace(0.0, 1.0, len(theta)))
    slopes = np.exp(theta[1:])
    values = theta[0] + np.concatenate([[0.0], np.cumsum(slopes * np.diff(knots))])
    inside = np.interp(base, knots, values)
    return inside + np.minimum(base - knots[0], 0.0) * slopes[0] + np.maximum(base - knots[-1], 0.0) * slopes[-1]


def published_residuals(difficulty: np.ndarray, published: dict[str, tuple[float, float, float, float]],
                        names: list[str]) -> np.ndarray:
    """Per model: ``100 * mean_i sigmoid(w_not_gamed + w_difficulty * d_i)`` minus the published LC.
    Zero for the reference's own difficulty: that is how the leaderboard's LC is computed."""
    w_diff = np.asarray([published[m][1] for m in names])[:, None]
    w_model = np.asarray([published[m][2] for m in names])[:, None]
    target = np.asarray([published[m][3] for m in names])
    return 100 * sigmoid(w_model + w_diff * difficulty[None, :]).mean(axis=1) - target


def fit_difficulty_map(base: np.ndarray, published: dict[str, tuple[float, float, float, float]],
                       names: list[str], knots: int = MAP_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """(theta, residuals): the ``piecewise_map`` of ``base`` whose values reproduce the published
    LC of ``names`` from their published weights (least squares; Levenberg-Marquardt with a
    numerical Jacobian). This fixes the distribution of the difficulty (origin, unit, skew);
    ``base`` only ranks the instructions."""
    theta = np.concatenate([[float(base.min())], np.zeros(knots)])

    def residuals(t: np.ndarray) -> np.ndarray:  # the ridge on the log-slopes makes the minimum unique
        return np.concatenate([published_residuals(piecewise_map(base, t), published, names),
                               math.sqrt(MAP_RIDGE) * t[1:]])

    r = residuals(theta)
    loss, damping = float(r @ r), 1.0
    for _ in range(100):
        jacobian = np.stack([(residuals(theta + step) - r) / 1e-6 for step in 1e-6 * np.eye(len(theta))], axis=1)
        normal, gradient = jacobian.T @ jacobian, jacobian.T @ r
        while True:
            step = np.linalg.solve(normal + damping * np.eye(len(theta)), gradient)
            trial = theta - step
            r_trial = residuals(trial)
            loss_trial = float(r_trial @ r_trial)
            if np.isfinite(loss_trial) and loss_trial < loss:
                gain = loss - loss_trial
                theta, r, loss, damping = trial, r_trial, loss_trial, damping / 3
                break
            damping *= 4
            if damping > 1e12:
                return theta, r[: len(names)]
        if gain <= 1e-10 * loss or np.abs(step).max() < 1e-9:
            break
    return theta, r[: len(names)]


def read_models(shared: Path) -> dict[str, dict[str, Any]]:
    """{model: {"sha1": [...], "position": int array, "len_1", "len_2", "y" (soft labels),
    "published_lc", "published_win_rate", "instruction" (index in AlpacaEval's order)}} from the compact annotations and the leaderboard."""
    folder = shared / "alpaca_eval" / "leaderboard_annotations"
    rows: dict[str, list[dict[str, str]]] = {}
    with open(folder / "annotations_compact.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["model"], []).append(row)
    with open(folder / "leaderboard.csv", newline="", encoding="utf-8") as f:
        board = {row["model"]: row for row in csv.DictReader(f)}
    models = {}
    for name, items in rows.items():
        y = np.asarray([float(r["preference"]) for r in items])
        y = np.where(y == 0.0, 1.5, y) - 1.0  # AlpacaEval writes some ties as 0
        models[name] = {"sha1": [r["instruction_sha1"] for r in items],
                        "position": np.asarray([int(r["index"]) for r in items]),
                        "len_1": np.asarray([float(r["len_output_1"]) for r in items]),
                        "len_2": np.asarray([float(r["len_output_2"]) for r in items]), "y": y,
                        "published_lc": float(board[name]["length_controlled_winrate"]),
                        "published_win_rate": float(board[name]["win_rate"])}
    order = {key: i for i, key in enumerate(models[BASELINE]["sha1"])}  # the baseline's rows are in order
    for model in models.values():
        model["instruction"] = np.asarray([order[key] for key in model["sha1"]])
    return models


def split_models(names: list[str]) -> tuple[list[str], list[str]]:
    """(fitted, held out): a fixed random third held out, the baseline in neither."""
    names = sorted(n for n in names if n != BASELINE)
    order = np.random.default_rng(0).permutation(len(names))
    held = sorted(names[i] for i in order[: len(names) // 3])
    return [n for n in names if n not in held], held


def gamed_labels(difficulty: np.ndarray, baseline_len: np.ndarray, gamed_len: dict[str, list[int]],
                 d_len: float, d_diff: float) -> dict[str, np.ndarray]:
    labels = {}
    for name, (w_len, w_diff, w_model) in GAMED_WEIGHTS.items():
        t = np.tanh(std_delta_len(baseline_len, np.asarray(gamed_len[name], dtype=np.float64)))
        labels[name] = sigmoid((w_len + d_len) * t + (w_diff + d_diff) * difficulty + w_model)
    return labels


def make_table(instructions: list[str], baseline_len: np.ndarray, difficulty: np.ndarray,
               gamed_len: dict[str, list[int]], calibration: dict[str, float],
               fitted: list[str], held: list[str]) -> dict[str, Any]:
    labels = gamed_labels(difficulty, baseline_len, gamed_len, calibration["gamed_delta_len"],
                          calibration["gamed_delta_difficulty"])
    return {
        "version": VERSION,
        "description": "AlpacaEval 2.0 length_controlled_v1 inputs (judge weighted_alpaca_eval_gpt4_turbo, "
                       "baseline gpt4_1106_preview), derived by scripts/build_alpaca_eval_difficulty.py",
        "fitted_models": fitted, "held_out_models": held, "difficulty_l2": DIFFICULTY_L2,
        "calibration": calibration,
        "instructions": instructions,
        "difficulty": [round(float(v), 10) for v in difficulty],
        "baseline_len": [int(v) for v in baseline_len],
        "gamed": {name: {"len_output_2": [int(v) for v in gamed_len[name]],
                         "preference": [round(float(v), 10) for v in labels[name]]} for name in GAMED},
    }


def reference_lc(model: dict[str, Any], table: dict[str, Any], *, cv: bool) -> float:
    """The model's LC with the table, looking difficulty up by row position as the reference
    does (``instruction_difficulty[index]`` with ``index`` the row number; that differs from
    the instruction's own index in the few files whose rows are not in AlpacaEval's order)."""
    difficulty = np.asarray(table["difficulty"])[model["position"]]
    return fit_length_controlled(model["len_1"], model["len_2"], model["y"], difficulty, gamed_rows(table),
                                 cv=cv)["length_controlled_winrate"]


def calibrate(models: dict[str, dict[str, Any]], fitted: list[str], build) -> dict[str, float]:
    """Coordinate search for ``CALIBRATION_KEYS`` that minimises the mean squared gap to the
    published LC of the ``fitted`` models (fits without CV)."""
    point, steps = np.array(CALIBRATION_START), np.array(CALIBRATION_STEPS)

    def loss(p: np.ndarray) -> float:
        table = build(dict(zip(CALIBRATION_KEYS, map(float, p))))
        return float(np.mean([(reference_lc(models[m], table, cv=False) - models[m]["published_lc"]) ** 2
                              for m in fitted]))

    best = loss(point)
    for _ in range(4):
        for j in range(len(point)):
            for sign in (-1, 1):
                while True:
                    trial = point.copy()
                    trial[j] += sign * steps[j]
                    value = loss(trial)
                    if value >= best:
                        break
                    point, best = trial, value
        steps /= 2
    return {k: round(float(v), 6) for k, v in zip(CALIBRATION_KEYS, point)}


def table_builder(models: dict[str, dict[str, Any]], fitted: list[str], held: list[str],
                  gamed_len: dict[str, list[int]], l2: float = DIFFICULTY_L2,
                  published: dict[str, tuple[float, float, float, float]] | None = None):
    """calibration -> table. The difficulty is computed once: the joint fit on ``fitted``, mapped
    onto the reference's scale with the published GLM rows of every model not in ``held``."""
    published = published if published is not None else read_published()
    base = models[BASELINE]
    joint = fit_instruction_difficulty([models[m] for m in fitted], len(base["sha1"]), l2=l2)
    names = sorted(m for m in published if m not in held)
    theta, residuals = fit_difficulty_map(joint, published, names)
    difficulty = piecewise_map(joint, theta)

    def table_for(cal: dict[str, float]) -> dict[str, Any]:
        table = make_table(base["sha1"], base["len_1"], difficulty, gamed_len, cal, fitted, held)
        table["difficulty_l2"] = l2
        table["difficulty_map"] = {"theta": [round(float(v), 10) for v in theta], "published_models": len(names),
                                   "published_lc_rms": round(float(np.sqrt(np.mean(residuals ** 2))), 4)}
        return table

    return table_for


def lc_gaps(models: dict[str, dict[str, Any]], names: list[str], table: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{model: (our LC with CV as the reference fits it, published LC)}."""
    return {m: (reference_lc(models[m], table, cv=True), models[m]["published_lc"]) for m in names}


def cross_validate(models: dict[str, dict[str, Any]], fitted: list[str], gamed_len: dict[str, list[int]],
                   l2: float, n_folds: int = 3) -> dict[str, tuple[float, float]]:
    """The method on the fitted models only: difficulty and calibration from all folds but one,
    LC gaps on that one (``default_rng(1)`` permutation, fold k = every n_folds-th from k)."""
    order = np.random.default_rng(1).permutation(len(fitted))
    gaps: dict[str, tuple[float, float]] = {}
    for k in range(n_folds):
        fold = sorted(fitted[i] for i in order[k::n_folds])
        rest = [m for m in fitted if m not in fold]
        table_for = table_builder(models, rest, fold, gamed_len, l2)
        gaps.update(lc_gaps(models, fold, table_for(calibrate(models, rest, table_for))))
    return gaps


def shipped_gamed_lengths() -> dict[str, list[int]]:
    shipped = load_lc_table()
    return {name: shipped["gamed"][name]["len_output_2"] for name in GAMED}


def build(shared: Path, *, gamed_len: dict[str, list[int]] | None = None,
          calibration: dict[str, float] | None = None) -> dict[str, Any]:
    """The table; ``gamed_len`` defaults to the shipped one, ``calibration`` is searched for
    when not given (about a minute)."""
    models = read_models(shared)
    base = models[BASELINE]
    assert list(base["position"]) == list(range(len(base["position"]))), "baseline rows out of order"
    fitted, held = split_models(list(models))
    published = read_published()
    assert not set(held) & set(published), "held-out models must not be in the published GLM file"
    table_for = table_builder(models, fitted, held, gamed_len or shipped_gamed_lengths(), published=published)
    return table_for(calibration or calibrate(models, fitted, table_for))


def print_gaps(gaps: dict[str, tuple[float, float]], title: str) -> None:
    print(f"{title}\n{'model':38s} {'sftlab LC':>9s} {'published':>9s} {'gap':>6s}")
    for name, (ours, published) in sorted(gaps.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1])):
        print(f"{name:38s} {ours:9.2f} {published:9.2f} {ours - published:+6.2f}")
    errors = np.abs([ours - published for ours, published in gaps.values()])
    print(f"mean |gap| {errors.mean():.2f}, max {errors.max():.2f} points over {len(errors)} models")


def read_gamed_lengths(results: Path) -> dict[str, list[int]]:
    return {name: [len(row["output"]) for row in json.loads((results / name / "model_outputs.json").read_text())]
            for name in GAMED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default="../shared/data", help="folder holding alpaca_eval/leaderboard_annotations")
    parser.add_argument("--gamed-outputs", help="alpaca_eval's results/ folder (gamed baselines' model_outputs.json)")
    parser.add_argument("-o", "--output", default=str(LC_TABLE))
    parser.add_argument("--check", action="store_true",
                        help="write nothing: print the shipped table's LC against the published one on the held-out models")
    parser.add_argument("--select", action="store_true",
                        help="write nothing: print the cross-validation over the fitted models that chose DIFFICULTY_L2")
    args = parser.parse_args()
    shared = Path(args.shared)
    if args.check:
        table = load_lc_table()
        print_gaps(lc_gaps(read_models(shared), table["held_out_models"], table),
                   f"{table['version']}: LC on the {len(table['held_out_models'])} held-out models")
        return
    gamed_len = read_gamed_lengths(Path(args.gamed_outputs)) if args.gamed_outputs else shipped_gamed_lengths()
    if args.select:
        models = read_models(shared)
        fitted, _ = split_models(list(models))
        for l2 in (0.01, 0.03, 0.1):  # the method's last choice; the others are in the docstring
            print_gaps(cross_validate(models, fitted, gamed_len, l2), f"3-fold CV over the fitted models, l2 {l2}")
        return
    table = build(shared, gamed_len=gamed_len)
    Path(args.output).write_text(json.dumps(table) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: calibration {table['calibration']}, held out {len(table['held_out_models'])} models")


if __name__ == "__main__":
    main()
