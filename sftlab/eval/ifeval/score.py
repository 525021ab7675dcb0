"""IFEval scoring: strict and loose, per prompt and per instruction.

Strict: the response as is. Loose (the reference's upper bound): an instruction counts as
followed if ANY of 8 variants passes: the response with its first line removed, last line
removed, both, or neither, each with or without every ``*`` removed. An empty (or
whitespace-only) response or variant never follows anything.

The four headline numbers, as reported by the IFEval authors:

- ``prompt_level_strict_acc`` / ``prompt_level_loose_acc``: fraction of prompts whose
  instructions are ALL followed;
- ``inst_level_strict_acc`` / ``inst_level_loose_acc``: fraction of all instructions
  (pooled over prompts) that are followed.

>>> row = {"key": 1, "prompt": "Say hi without commas.", "instruction_id_list":
...        ["punctuation:no_comma"], "kwargs": [{}]}
>>> score_prompt(row, "**Hi, there**\\nHi there")["strict"], score_prompt(row, "Hi, there\\nHi")["loose"]
([False], [True])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from sftlab.data.io import read_rows
from sftlab.errors import DataError
from sftlab.eval.ifeval.checkers import build_checker

METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


def loose_variants(response: str) -> list[str]:
    """The 8 variants the loose score tries, the original first."""
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    trimmed = [response, without_first, without_last, without_both]
    return trimmed + [text.replace("*", "") for text in trimmed]


def _follows(checker, text: str) -> bool:
    return bool(text.strip()) and bool(checker.check(text))


def score_prompt(row: dict[str, Any], response: str) -> dict[str, list[bool]]:
    """Per-instruction results for one prompt: ``{"strict": [...], "loose": [...]}``.

    ``row`` is a line of input_data.jsonl: ``instruction_id_list`` and ``kwargs`` (one dict
    per instruction)."""
    variants = loose_variants(response)
    strict, loose = [], []
    for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
        checker = build_checker(instruction_id, kwargs)
        strict.append(_follows(checker, response))
        loose.append(any(_follows(checker, text) for text in variants))
    return {"strict": strict, "loose": loose}


def aggregate(results: Iterable[dict[str, list[bool]]]) -> dict[str, float]:
    """The four headline accuracies from ``score_prompt`` results (empty input -> 0.0)."""
    totals = {metric: 0 for metric in METRICS}
    prompts = instructions = 0
    for result in results:
        prompts += 1
        instructions += len(result["strict"])
        for mode in ("strict", "loose"):
            totals[f"prompt_level_{mode}_acc"] += all(result[mode])
            totals[f"inst_level_{mode}_acc"] += sum(result[mode])
    return {
        metric: totals[metric] / max(prompts if metric.startswith("prompt") else instructions, 1)
        for metric in METRICS
    }


def per_instruction(rows: list[dict[str, Any]], results: list[dict[str, list[bool]]],
                    mode: str = "strict") -> dict[str, float]:
    """Accuracy per instruction id (e.g. ``punctuation:no_comma``), as the reference's
    tier-1 report."""
    hits: dict[str, list[bool]] = {}
    for row, result in zip(rows, results):
        for instruction_id, followed in zip(row["instruction_id_list"], result[mode]):
            hits.setdefault(instruction_id, []).append(followed)
    return {key: sum(values) / len(values) for key, values in sorted(hits.items())}


def score_ifeval_responses(input_rows: list[dict[str, Any]],
                           response_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Score responses given as the IFEval authors' tools take them.

    ``input_rows``: input_data.jsonl rows (``prompt``, ``instruction_id_list``, ``kwargs``);
    ``response_rows``: ``{"prompt": ..., "response": ...}`` rows, matched by the exact prompt
    text. Every input prompt needs a response (else ``DataError``). Returns the four
    headline metrics, ``num_prompts``, per-instruction strict/loose accuracies and the
    per-prompt results (``results``: one dict per input row, in order, with ``key``,
    ``strict``, ``loose`` lists).
    """
    responses: dict[str, str] = {}
    for index, row in enumerate(response_rows):
        if "prompt" not in row or "response" not in row:
            raise DataError("a response row needs 'prompt' and 'response'", index=index,
                            hint='write rows like {"prompt": ..., "response": ...}')
        responses[row["prompt"]] = row["response"] or ""
    results = []
    for index, row in enumerate(input_rows):
        if row["prompt"] not in responses:
            raise DataError("no response for this IFEval prompt", index=index, field="prompt",
                            hint="the responses file must contain every prompt verbatim")
        results.append(score_prompt(row, responses[row["prompt"]]))
    summary: dict[str, Any] = dict(aggregate(results))
    summary["num_prompts"] = len(results)
    summary["per_instruction_strict"] = per_instruction(input_rows, results, "strict")
    summary["per_instruction_loose"] = per_instruction(input_rows, results, "loose")
    summary["results"] = [{"key": row.get("key"), **result}
                          for row, result in zip(input_rows, results)]
    return summary


def score_responses_file(responses_path: str | Path, input_path: str | Path) -> dict[str, Any]:
    """``score_ifeval_responses`` on two files (JSONL or a JSON list, read by
    ``sftlab.data.io``: a bad line is a ``DataError`` naming file and line)."""
    return score_ifeval_responses(read_rows(input_path), read_rows(responses_path))
