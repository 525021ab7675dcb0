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

Steps:

1. Hold out a fixed random third of the models (``numpy.random.default_rng(0)`` permutation
   of the sorted names, the baseline excluded); everything below sees only the rest.
2. Instruction difficulty: ``sftlab.eval.judge.lc.fit_instruction_difficulty`` on the fitted
   models (the reference notebook's joint GLM), keyed by the instruction's SHA-1 prefix.
3. Gamed baselines: the judge's annotations of those two outputs are not public (the
   reference downloads them as ``df_gamed.csv``), so their soft labels are modelled as
   ``sigmoid((w_len + dl) * tanh(s) + (w_diff + dd) * difficulty + w_model)`` with the
   published weights ``w``; ``dl``, ``dd`` and a shift of the difficulty are chosen
   (coordinate search) so the fitted models' LC win rates match the published ones.

The held-out models then check the table (tests/unit/eval/test_judge_lc_reference.py).
"""
from __future__ import annotations

import argparse
import csv
import json
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
DIFFICULTY_L2 = 0.1
VERSION = "sftlab-alpaca-eval-lc-1"


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
    shifted = difficulty + calibration["difficulty_shift"]
    labels = gamed_labels(shifted, baseline_len, gamed_len, calibration["gamed_delta_len"],
                          calibration["gamed_delta_difficulty"])
    return {
        "version": VERSION,
        "description": "AlpacaEval 2.0 length_controlled_v1 inputs (judge weighted_alpaca_eval_gpt4_turbo, "
                       "baseline gpt4_1106_preview), derived by scripts/build_alpaca_eval_difficulty.py",
        "fitted_models": fitted, "held_out_models": held, "difficulty_l2": DIFFICULTY_L2,
        "calibration": calibration,
        "instructions": instructions,
        "difficulty": [round(float(v), 10) for v in shifted],
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
    """Coordinate search for (gamed_delta_len, gamed_delta_difficulty, difficulty_shift) that
    minimise the mean squared gap to the published LC of the fitted models (fits without CV)."""
    keys = ("gamed_delta_len", "gamed_delta_difficulty", "difficulty_shift")
    point, steps = np.array([0.5, -0.2, 0.0]), np.array([0.2, 0.2, 0.4])

    def loss(p: np.ndarray) -> float:
        table = build(dict(zip(keys, map(float, p))))
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
    return {k: round(float(v), 6) for k, v in zip(keys, point)}


def build(shared: Path, *, gamed_len: dict[str, list[int]] | None = None,
          calibration: dict[str, float] | None = None) -> dict[str, Any]:
    """The table; ``gamed_len`` defaults to the shipped one, ``calibration`` is searched for
    when not given (about 20 s)."""
    models = read_models(shared)
    base = models[BASELINE]
    assert list(base["position"]) == list(range(len(base["position"]))), "baseline rows out of order"
    instructions, baseline_len = base["sha1"], base["len_1"]
    fitted, held = split_models(list(models))
    difficulty = fit_instruction_difficulty([models[m] for m in fitted], len(instructions), l2=DIFFICULTY_L2)
    if gamed_len is None:
        shipped = load_lc_table()
        gamed_len = {name: shipped["gamed"][name]["len_output_2"] for name in GAMED}

    def table_for(cal: dict[str, float]) -> dict[str, Any]:
        return make_table(instructions, baseline_len, difficulty, gamed_len, cal, fitted, held)

    return table_for(calibration or calibrate(models, fitted, table_for))


def read_gamed_lengths(results: Path) -> dict[str, list[int]]:
    return {name: [len(row["output"]) for row in json.loads((results / name / "model_outputs.json").read_text())]
            for name in GAMED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default="../shared/data", help="folder holding alpaca_eval/leaderboard_annotations")
    parser.add_argument("--gamed-outputs", help="alpaca_eval's results/ folder (gamed baselines' model_outputs.json)")
    parser.add_argument("-o", "--output", default=str(LC_TABLE))
    args = parser.parse_args()
    gamed_len = read_gamed_lengths(Path(args.gamed_outputs)) if args.gamed_outputs else None
    table = build(Path(args.shared), gamed_len=gamed_len)
    Path(args.output).write_text(json.dumps(table) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: calibration {table['calibration']}, held out {len(table['held_out_models'])} models")


if __name__ == "__main__":
    main()
