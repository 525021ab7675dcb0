"""MT-Bench (Zheng et al. 2023): 80 two-turn questions, single-answer grading 1-10 per turn.

Files (FastChat's ``fastchat/llm_judge/data``), in one folder given at run time:
``question.jsonl`` (question_id, category, turns[2]), ``judge_prompts.jsonl`` (the judge
prompts by name) and ``reference_answer_gpt-4.jsonl`` (references for math, reasoning,
coding).

    questions = read_questions(folder)
    answers = generate_answers(generator, questions)            # {question_id: [turn1, turn2]}
    judgments = judge_answers(questions, answers, judge, folder)
    scores = summarize(judgments)                               # overall, per turn, per category

Grading follows FastChat: turn 1 uses ``single-v1`` (``single-math-v1`` with the reference
answer for math/reasoning/coding), turn 2 the ``-multi-turn`` variants, which show the whole
conversation and ask about the second answer. The rating is the last ``[[N]]`` of the judge
completion, else the last ``[N]`` (FastChat's fallback); a completion with neither is
recorded with score -1 and left out of the averages.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from sftlab.data.io import read_rows
from sftlab.errors import DataError
from sftlab.eval.judge.client import complete_checked
from sftlab.infer.base import SamplingConfig
from sftlab.types import Message

NEED_REFERENCE = ("math", "reasoning", "coding")
# FastChat's sampling temperature per category for answer generation
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of one MT-Bench file, read by ``sftlab.data.io`` (bad lines name file and line)."""
    if not path.is_file():
        raise DataError("MT-Bench file not found", file=str(path),
                        hint="pass --data-dir with question.jsonl, judge_prompts.jsonl, "
                             "reference_answer_gpt-4.jsonl (FastChat's llm_judge data)")
    return read_rows(path)


def read_questions(folder: str | Path) -> list[dict[str, Any]]:
    return _jsonl(Path(folder) / "question.jsonl")


def read_judge_prompts(folder: str | Path) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in _jsonl(Path(folder) / "judge_prompts.jsonl")}


def read_references(folder: str | Path) -> dict[int, list[str]]:
    rows = _jsonl(Path(folder) / "reference_answer_gpt-4.jsonl")
    return {row["question_id"]: row["choices"][0]["turns"] for row in rows}


def parse_rating(text: str) -> float:
    """``"... Rating: [[7]]"`` -> 7.0; ``"[8.5]"`` -> 8.5 (fallback); nothing -> -1.

    >>> parse_rating("Good answer. Rating: [[7]]"), parse_rating("score [6]"), parse_rating("?")
    (7.0, 6.0, -1.0)
    """
    for pattern in (_RATING, _RATING_FALLBACK):
        found = pattern.findall(text or "")
        if found:
            return float(found[-1])
    return -1.0


def read_answers(path: str | Path) -> dict[int, list[str]]:
    """FastChat model answers (``{"question_id", "choices": [{"turns": [a1, a2]}]}``) or
    ``{"question_id", "turns": [a1, a2]}`` rows -> {question_id: [a1, a2]}."""
    answers = {}
    for row in _jsonl(Path(path)):
        turns = row["choices"][0]["turns"] if "choices" in row else row["turns"]
        answers[int(row["question_id"])] = list(turns)
    return answers


def generate_answers(generator, questions: Sequence[dict[str, Any]], *, max_new_tokens: int = 1024,
                     seed: int = 0) -> dict[int, list[str]]:
    """Both turns for every question: turn 2 sees the question 1, the model's answer 1, then
    question 2. Questions are batched by category (FastChat's temperature per category)."""
    answers: dict[int, list[str]] = {}
    for category in sorted({q["category"] for q in questions}):
        group = [q for q in questions if q["category"] == category]
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=TEMPERATURE.get(category, 0.7),
                                  seed=seed)
        first = generator.generate([[Message("user", q["turns"][0])] for q in group], sampling)
        second_prompts = [[Message("user", q["turns"][0]), Message("assistant", g.text),
                           Message("user", q["turns"][1])] for q, g in zip(group, first)]
        second = generator.generate(second_prompts, sampling)
        for q, a1, a2 in zip(group, first, second):
            answers[int(q["question_id"])] = [a1.text, a2.text]
    return answers


def judge_messages(question: dict[str, Any], answer: list[str], turn: int,
                   prompts: dict[str, dict[str, Any]], references: dict[int, list[str]]) -> list[dict[str, str]]:
    """The judge conversation for one question and turn (1 or 2), as FastChat builds it."""
    with_reference = question["category"] in NEED_REFERENCE
    name = ("single-math-v1" if with_reference else "single-v1") + ("-multi-turn" if turn == 2 else "")
    prompt = prompts[name]
    values: dict[str, str] = {}
    if turn == 1:
        values.update(question=question["turns"][0], answer=answer[0])
    else:
        values.update(question_1=question["turns"][0], question_2=question["turns"][1],
                      answer_1=answer[0], answer_2=answer[1])
    if with_reference:
        reference = references.get(int(question["question_id"]))
        if reference is None:
            raise DataError(f"no reference answer for question {question['question_id']}")
        values.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**values)}]


def judge_answers(questions, answers: dict[int, list[str]], judge, folder: str | Path, *,
                  max_tokens: int = 2048, probe: int = 8) -> list[dict[str, Any]]:
    """One judgment row per question and turn: score, category, raw completion. Stops early
    (``JudgeError``) when none of the first ``probe`` replies holds a rating."""
    prompts, references = read_judge_prompts(folder), read_references(folder)
    rows, requests = [], []
    for question in questions:
        answer = answers.get(int(question["question_id"]))
        if answer is None:
            continue
        for turn in (1, 2):
            messages = judge_messages(question, answer, turn, prompts, references)
            requests.append(messages)
            rows.append({"question_id": question["question_id"], "category": question["category"],
                         "turn": turn, "judge": judge.model, "answer": answer[turn - 1],
                         "judge_messages": messages})
    completions = complete_checked(judge, requests, lambda text: None if parse_rating(text) < 0 else text,
                                   max_tokens=max_tokens, probe=probe)
    for row, completion in zip(rows, completions):
        row["raw_completion"] = completion
        row["score"] = parse_rating(completion)
    return rows


def summarize(judgments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean score overall, per turn and per category (failed parses excluded and counted)."""
    valid = [j for j in judgments if j["score"] >= 0]

    def average(rows):  # None (JSON null) when nothing could be parsed
        return sum(r["score"] for r in rows) / len(rows) if rows else None

    categories = sorted({j["category"] for j in judgments})
    return {
        "score": average(valid),
        "turn_1": average([j for j in valid if j["turn"] == 1]),
        "turn_2": average([j for j in valid if j["turn"] == 2]),
        "categories": {c: average([j for j in valid if j["category"] == c]) for c in categories},
        "n_judgments": len(judgments), "n_parse_failures": len(judgments) - len(valid),
    }
