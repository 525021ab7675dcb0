"""AlpacaEval-style pairwise judging: a model's outputs against a baseline's, per instruction.

    baseline = read_outputs("alpaca_eval/gpt4_1106_preview_outputs.json")   # 805 rows
    model = read_outputs("my_outputs.json")            # [{"instruction", "output", "generator"}]
    annotations = judge_pairs(baseline, model, judge)  # AlpacaEval annotation rows
    summarize_annotations(annotations)                 # win rate and LC win rate

Position bias: every pair is judged twice, baseline first and model first; the preference
is the mean of the two verdicts, so a judge that always picks "A" gives a tie, not a win.
A verdict the parser cannot read is dropped from that item's mean (and counted); an item
with no readable verdict keeps ``preference: None`` and is left out of the win rate.

Each annotation keeps the judge's raw completions (``raw_completions``) so every verdict
can be audited.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from sftlab.data.io import read_objects, record_error
from sftlab.errors import DataError
from sftlab.eval.judge.client import complete_checked
from sftlab.infer.base import SamplingConfig
from sftlab.types import Message

JUDGE_SYSTEM = (
    "You are a careful, impartial judge of AI assistants. You compare two responses to the "
    "same instruction and decide which one a thoughtful human expert would prefer: the more "
    "helpful, correct, relevant and honest one. Length is not quality: do not prefer a "
    "response because it is longer. The order of the responses must not influence you."
)
JUDGE_TEMPLATE = (
    "[Instruction]\n{instruction}\n\n"
    "[Response A]\n{output_a}\n[End of Response A]\n\n"
    "[Response B]\n{output_b}\n[End of Response B]\n\n"
    "Explain your comparison in two or three sentences, then give your verdict on the last "
    "line, exactly one of: [[A]] if Response A is better, [[B]] if Response B is better, "
    "[[C]] for a tie."
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def read_outputs(path: str | Path) -> list[dict[str, Any]]:
    """AlpacaEval outputs (a JSON list, or JSONL) of ``{"instruction", "output", "generator"}``;
    an instruction given twice is an error (pairing by instruction would keep only one)."""
    return _read_rows_with(path, "outputs", ("instruction", "output"), unique=("instruction",))


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """AlpacaEval annotations (a JSON list, or JSONL), as ``judge_pairs`` writes them: rows
    with ``instruction``, ``output_1`` (baseline) and ``output_2`` (model) strings and a
    ``preference``: a number in [1, 2] (1.5 or AlpacaEval's 0 is a tie), or null when the judge
    gave no verdict. The same (instruction, output_1, output_2) twice is an error. The shared
    data's compact leaderboard form (``COMPACT_COLUMNS``: lengths, no texts) is refused saying so."""
    rows = _read_rows_with(path, "annotations", ("instruction", "output_1", "output_2"),
                           unique=("instruction", "output_1", "output_2"))
    for index, row in enumerate(rows):
        preference = row.get("preference")
        number = isinstance(preference, (int, float)) and not isinstance(preference, bool)
        if preference is not None and not (number and (preference == 0 or 1 <= preference <= 2)):
            raise DataError(f"preference must be a number in [1, 2] (1.5 or AlpacaEval's 0 for a tie, "
                            f"null for no verdict), got {preference!r}", file=str(path), line=rows.lines[index],
                            field="preference", index=index,
                            hint="1 = baseline better, 2 = model better, 1.5 (or 0) = tie")
    return rows


COMPACT_COLUMNS = ("instruction_sha1", "len_output_1", "len_output_2", "preference")
"""The columns of AlpacaEval's compact leaderboard annotations (``annotations_compact.csv``):
output lengths and preferences keyed by the instruction's SHA-1 prefix, without the texts."""


def _missing(what: str, keys: tuple[str, ...], key: str, row: dict[str, Any]) -> tuple[str, str]:
    """(message, hint) for a row without a ``key`` string: the rows ``keys`` need, what this
    one has; for the compact leaderboard form, what it is and where sftlab uses it."""
    if what == "annotations" and set(COMPACT_COLUMNS) <= set(row) and not set(keys) & set(row):
        return ("missing: this is AlpacaEval's compact leaderboard form (instruction_sha1, len_output_1, "
                "len_output_2, preference: lengths, no texts), not annotation rows; winrate needs "
                f"{', '.join(keys)} strings",
                "give annotations as `sftlab judge alpaca-eval` writes them (annotations.json); sftlab reads "
                "the compact form only to rebuild its LC difficulty table (scripts/build_alpaca_eval_difficulty.py)")
    return (f"needs a '{key}' string", f"every {what} row has {', '.join(keys)} as strings; "
                                       f"this one has {', '.join(map(str, row)) or 'no fields'}")


class _Rows(list):
    """Rows read from a file, with each row's line (None in a JSON array) in ``lines``."""

    lines: list[int | None] = []


def _read_rows_with(path: str | Path, what: str, keys: tuple[str, ...],
                    unique: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a JSON list or JSONL file (``sftlab.data.io``); each needs ``keys`` as
    strings, and no two rows the same ``unique`` values. Errors name the file and line (or
    record); the returned list's ``lines`` holds each row's line (None in a JSON array)."""
    path = Path(path)
    rows, seen = _Rows(), {}
    rows.lines = []
    for record in read_objects(path):
        for key in keys:
            if not isinstance(record.value.get(key), str):
                message, hint = _missing(what, keys, key, record.value)
                raise record_error(record, path, message, field=key, hint=hint)
        value = tuple(record.value[key] for key in unique)
        where = f"line {record.line}" if record.line is not None else f"record {record.index}"
        if unique and value in seen:
            raise record_error(record, path, f"the same {' / '.join(unique)} as {seen[value]}", field=unique[0],
                               hint=f"keep one row per {unique[0]}")
        seen[value] = where
        rows.append(record.value)
        rows.lines.append(record.line)
    return rows


def parse_verdict(text: str) -> str | None:
    """The last ``[[A]]``/``[[B]]``/``[[C]]`` in a judge completion, else None.

    >>> parse_verdict("B is more accurate. [[B]]")
    'B'
    """
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


def judge_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(
                instruction=instruction, output_a=output_a, output_b=output_b)}]


def pair_outputs(baseline: Sequence[dict], model: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(baseline row, model row) per baseline instruction, matched by instruction text."""
    by_instruction = {row["instruction"]: row for row in model}
    pairs = []
    for row in baseline:
        if row["instruction"] in by_instruction:
            pairs.append((row, by_instruction[row["instruction"]]))
    if not pairs:
        raise DataError("no model output matches a baseline instruction",
                        hint="the model outputs need the baseline's exact 'instruction' texts")
    return pairs


def judge_pairs(baseline: Sequence[dict], model: Sequence[dict], judge, *, max_tokens: int = 512,
                both_orders: bool = True, probe: int = 8,
                off_switch: str | None = "--judge-probe 0") -> list[dict[str, Any]]:
    """Judge every matched pair (both orders) -> AlpacaEval annotation rows. Stops early
    (``JudgeError``) when none of the first ``probe`` replies holds a verdict (the error
    names ``off_switch``, see ``complete_checked``)."""
    pairs = pair_outputs(baseline, model)
    requests = []
    for base, mine in pairs:
        requests.append(judge_messages(base["instruction"], base["output"], mine["output"]))  # model = B
        if both_orders:
            requests.append(judge_messages(base["instruction"], mine["output"], base["output"]))  # model = A
    completions = complete_checked(judge, requests, parse_verdict, max_tokens=max_tokens, probe=probe,
                                   off_switch=off_switch)
    per_pair = 2 if both_orders else 1
    annotations = []
    for k, (base, mine) in enumerate(pairs):
        raw = completions[k * per_pair:(k + 1) * per_pair]
        annotations.append({
            "instruction": base["instruction"],
            "output_1": base["output"], "generator_1": base.get("generator", "baseline"),
            "output_2": mine["output"], "generator_2": mine.get("generator", "model"),
            "preference": combine_verdicts([parse_verdict(r) for r in raw]),
            "annotator": judge.model, "raw_completions": raw,
        })
    return annotations


def combine_verdicts(verdicts: Sequence[str | None]) -> float | None:
    """Verdicts in judging order (first: model is B; second: model is A) -> preference in
    [1, 2] (2 = model better), the mean over the readable ones; None if none is readable.

    >>> combine_verdicts(["B", "A"])   # the model won in both orders
    2.0
    >>> combine_verdicts(["A", "A"])   # the judge always says A: position bias -> tie
    1.5
    """
    values = []
    for position, verdict in enumerate(verdicts):
        if verdict is None:
            continue
        model_letter = "B" if position == 0 else "A"
        values.append(1.5 if verdict == "C" else 2.0 if verdict == model_letter else 1.0)
    return sum(values) / len(values) if values else None


def generate_outputs(generator, instructions: Sequence[str], *, max_new_tokens: int = 1024,
                     batch_size: int = 8, name: str = "model") -> list[dict[str, Any]]:
    """The model's answers to AlpacaEval instructions (one user turn each, greedy)."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    outputs = []
    chunk = batch_size * 4
    for start in tqdm(range(0, len(instructions), chunk), desc="generate", unit="chunk"):
        batch = instructions[start:start + chunk]
        generations = generator.generate([[Message("user", text)] for text in batch], sampling)
        outputs += [{"instruction": text, "output": g.text, "generator": name}
                    for text, g in zip(batch, generations)]
    return outputs
