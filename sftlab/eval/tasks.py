"""Close-ended tasks: GSM8K, MATH, BIG-Bench Hard (generation) and multiple choice (log-likelihood).

Each task is a small spec: where its data is, how a prompt is written, how an answer is
extracted and scored. Data is read from a path given at run time (``--data-dir`` or a
per-task path), never from a location baked into the package; the few-shot exemplars of
GSM8K and MATH ship with the package as data (``sftlab/eval/data``).

| task    | data (relative to --data-dir)     | prompt                                  | metrics |
|---------|-----------------------------------|-----------------------------------------|---------|
| gsm8k   | gsm8k/test.jsonl                  | 8-shot CoT, the exemplars of Wei et al. 2022 | exact_match_strict, exact_match_flexible (lm-eval gsm8k_cot), exact_match_lenient |
| math    | math/test.jsonl (problem, solution) | 4-shot Minerva prompt                 | math_verify, minerva (lm-eval minerva_math), exact_match_normalized |
| bbh     | bbh/*.json + bbh/cot-prompts/*.txt | 3-shot CoT of Suzgun et al. 2022       | exact_match (lm-eval bbh_cot_fewshot), exact_match_last, per subtask and macro average |
| mc      | a JSONL/CSV file (question, choices, answer) | "Question: ...\\nAnswer:" + " choice" | acc, acc_norm, ece |
| mc_letters | the same file                  | MMLU style: lettered options, " A"/" B" | acc, acc_norm, ece |
"""
from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path
from typing import Any

from sftlab.data.io import read_rows
from sftlab.errors import DataError
from sftlab.eval.base import TASKS, GenerationTask, LoglikelihoodTask, read_task_rows
from sftlab.data.answers import (bbh_answer, bbh_answer_lm_eval, gsm8k_exact_match, gsm8k_flexible,
                                 gsm8k_lenient, gsm8k_strict, gsm8k_target, last_boxed, math_answer,
                                 math_equal, normalize_number)
from sftlab.eval.math_equivalence import (answer_from_final_line, is_equiv, math_verify_equal,
                                          minerva_target, normalize_final_answer, require_math_extra)
from sftlab.infer.base import SamplingConfig


def _packaged(name: str) -> dict[str, Any]:
    """A data file shipped inside the package (few-shot exemplars), not a user's file."""
    return json.loads(resources.files("sftlab.eval").joinpath("data", name).read_text("utf-8"))


def _require(path: str | None, task: str, example: str) -> str:
    if path is None:
        raise DataError(f"task '{task}' needs its data", hint=f"pass --data-dir DIR with {example}, "
                        f"or --tasks {task}=PATH")
    return path


# ---------------------------------------------------------------- GSM8K

@TASKS.register("gsm8k")
class Gsm8k(GenerationTask):
    """GSM8K test set, 8-shot chain of thought: lm-evaluation-harness 0.4.x's ``gsm8k_cot``.

    Prompt: "Q: ...\\nA: ..." exemplars joined by blank lines, then "Q: {question}\\nA:"; the
    8 exemplars of Wei et al. (2022) ship in ``sftlab/eval/data/gsm8k_cot_exemplars.json``
    (the same text as gsm8k-cot.yaml's). Generation stops at lm-eval's ``until``.
    ``exact_match_strict`` / ``exact_match_flexible`` are lm-eval's ``strict-match`` /
    ``flexible-extract`` with its exact_match settings (``sftlab.data.answers``);
    ``exact_match_lenient`` is sftlab's own (also "####", lower case, numbers by value).
    """

    name = "gsm8k"
    data_file = "gsm8k/test.jsonl"
    num_fewshot = 8
    sampling = SamplingConfig(max_new_tokens=256, stop=["Q:", "</s>", "<|im_end|>"])

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        rows = read_task_rows(_require(data_path, self.name, "gsm8k/test.jsonl"))
        return [{"id": f"gsm8k-{i}", "question": r["question"], "answer": r["answer"],
                 "target": gsm8k_target(r["answer"])} for i, r in enumerate(rows)]

    def prompt(self, doc: dict[str, Any]) -> str:
        shots = _packaged("gsm8k_cot_exemplars.json")["exemplars"][: self.num_fewshot or 0]
        parts = [f"Q: {shot['question']}\nA: {shot['answer']}\n\n" for shot in shots]
        return "".join(parts) + f"Q: {doc['question']}\nA:"

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        strict, flexible, lenient = gsm8k_strict(response), gsm8k_flexible(response), gsm8k_lenient(response)
        target = doc["target"]
        return ({"strict": strict, "flexible": flexible, "lenient": lenient},
                {"exact_match_strict": float(gsm8k_exact_match(strict, target)),
                 "exact_match_flexible": float(gsm8k_exact_match(flexible, target)),
                 "exact_match_lenient": float(lenient == normalize_number(target))})


# ---------------------------------------------------------------- MATH

@TASKS.register("math")
class Math(GenerationTask):
    """MATH (Hendrycks et al. 2021) in its JSONL form: ``{"problem", "solution", "level",
    "type"}`` per line (an ``answer`` field, as in MATH-500, is used when present; otherwise
    the last ``\\boxed{}`` of the solution). 4-shot Minerva prompt byte for byte as lm-eval's
    minerva_math builds it (exemplars, "Solution: " before each, stop at "Problem:"). Three
    verdicts per sample:

    - ``math_verify`` (primary): math-verify on the whole output against the solution, as
      lm-eval's minerva_math ``math_verify`` metric;
    - ``minerva``: lm-eval's minerva_math ``exact_match`` (the "Final Answer: The final
      answer is X" line, ``normalize_final_answer``, sympy equivalence);
    - ``exact_match_normalized``: sftlab's own (the last ``\\boxed{}``, else "The final
      answer is X", ``normalize_math``).

    ``math_verify`` and ``minerva`` need ``pip install 'sftlab[math]'`` (checked before any
    generation).
    """

    name = "math"
    data_file = "math/test.jsonl"
    num_fewshot = 4
    sampling = SamplingConfig(max_new_tokens=512, stop=["Problem:"])  # lm-eval's `until`

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        require_math_extra()
        rows = read_task_rows(_require(data_path, self.name, "math/test.jsonl"))
        docs = []
        for i, row in enumerate(rows):
            solution = row.get("solution", "")
            target = row.get("answer") or last_boxed(solution)
            if target is None:
                raise DataError("no 'answer' and no \\boxed{} in 'solution'", file=data_path, line=i + 1)
            docs.append({"id": row.get("unique_id", f"math-{i}"), "problem": row["problem"],
                         "target": target, "subject": row.get("type") or row.get("subject"),
                         "solution": solution or f"${target}$",
                         "minerva_target": minerva_target(solution) or normalize_final_answer(target)})
        return docs

    def prompt(self, doc: dict[str, Any]) -> str:
        shots = _packaged("math_exemplars.json")["exemplars"][: self.num_fewshot or 0]
        # lm-eval's minerva_math: doc_to_text(shot) + target_delimiter " " + solution + fewshot_delimiter "\n\n"
        parts = [f"Problem:\n{s['problem']}\n\nSolution: {s['solution']}\n\n" for s in shots]
        return "".join(parts) + f"Problem:\n{doc['problem']}\n\nSolution:"

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        answer = math_answer(response)
        minerva = normalize_final_answer(answer_from_final_line(response))
        return ({"boxed": answer, "minerva": minerva},
                {"math_verify": float(math_verify_equal(response, doc["solution"])),
                 "minerva": float(is_equiv(minerva, doc["minerva_target"])),
                 "exact_match_normalized": float(math_equal(answer, doc["target"]))})


# ---------------------------------------------------------------- BIG-Bench Hard

BBH_SUBTASKS = [
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
]


@TASKS.register("bbh")
class Bbh(GenerationTask):
    """BIG-Bench Hard, all 27 subtasks, 3-shot chain of thought from ``bbh/cot-prompts``.

    Prompt, byte for byte lm-evaluation-harness 0.4.x's ``bbh_cot_fewshot``: the subtask's
    CoT prompt file (without its canary header) followed by
    ``"\\n\\nQ: {input}\\nA: Let's think step by step.\\n"`` (``--num-fewshot N`` < 3 keeps the
    description and the first N exemplars); generation stops at lm-eval's
    ``until`` ("Q" anywhere, a blank line) after at most its 1024 tokens.
    ``exact_match``: lm-eval's (``bbh_answer_lm_eval``: the first "the answer is ", the rest
    of its line but its last character, equal to the target); ``exact_match_last``: sftlab's
    own (the last "the answer is", ``bbh_answer``). Each sample carries ``meta.subtask``; the
    runner reports every subtask and the macro average. ``--limit N`` takes the first N
    items of every subtask.
    """

    name = "bbh"
    data_file = "bbh"
    num_fewshot = 3
    sampling = SamplingConfig(max_new_tokens=1024, stop=["Q", "\n\n"])

    def __init__(self, subtasks: list[str] | None = None) -> None:
        self.subtasks = list(subtasks or BBH_SUBTASKS)
        self._prompts: dict[str, str] = {}

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        folder = Path(_require(data_path, self.name, "bbh/*.json and bbh/cot-prompts/*.txt"))
        docs = []
        for subtask in self.subtasks:
            examples = _read_bbh_examples(folder / f"{subtask}.json")
            self._prompts[subtask] = read_bbh_cot_prompt(folder / "cot-prompts" / f"{subtask}.txt")
            docs += [{"id": f"{subtask}-{i}", "subtask": subtask, "input": ex["input"],
                      "target": ex["target"]} for i, ex in enumerate(examples)]
        return docs

    def prompt(self, doc: dict[str, Any]) -> str:
        # the file's task description, then its first ``num_fewshot`` exemplars (all 3: lm-eval's prompt)
        description, *shots = self._prompts[doc["subtask"]].split("\n\nQ: ")
        few = "\n\nQ: ".join([description, *shots[: self.num_fewshot]])
        return f"{few}\n\nQ: {doc['input']}\n{_COT_OPENING}\n"

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        answer, last = bbh_answer_lm_eval(response), bbh_answer(response)
        return ({"lm_eval": answer, "last": last},
                {"exact_match": float(answer == doc["target"]),
                 "exact_match_last": float(last is not None and last == doc["target"].strip())})


_COT_OPENING = "A: Let's think step by step."


def read_bbh_cot_prompt(path: Path) -> str:
    """The few-shot text of a ``cot-prompts/*.txt`` file: everything after the ``-----``
    line that ends the canary header (task description + 3 Q/A exemplars), with a line
    break after each "A: Let's think step by step." as in lm-eval's bbh_cot_fewshot yamls
    (sports_understanding.txt continues that line with a space)."""
    if not path.is_file():
        raise DataError("BBH CoT prompt not found", file=str(path), hint="the folder must hold "
                        "cot-prompts/<subtask>.txt beside <subtask>.json")
    text = path.read_text(encoding="utf-8")
    head, separator, body = text.partition("-----\n")
    return (body if separator else text).strip().replace(_COT_OPENING + " ", _COT_OPENING + "\n")


def _read_bbh_examples(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError("BBH task file not found", file=str(path))
    rows = read_rows(path)  # a BBH file is ONE object: {"canary", "examples": [{"input", "target"}]}
    if len(rows) != 1 or not isinstance(rows[0], dict) or "examples" not in rows[0]:
        raise DataError("not a BBH task file", file=str(path), field="examples",
                        hint='a BBH file is one JSON object {"examples": [{"input": ..., "target": ...}]}')
    return rows[0]["examples"]


# ---------------------------------------------------------------- multiple choice

def read_mc(path: str | Path) -> list[dict[str, Any]]:
    """Multiple-choice items from JSONL (or a JSON list) or CSV -> ``{"id", "question", "choices", "gold"}``.

    JSONL row: ``{"question": "2+2?", "choices": ["3", "4"], "answer": "B"}`` (the answer
    is a letter or a 0-based index). CSV: columns ``question, A, B, C, D, answer`` (as the
    MMLU files) or ``question, choices`` with choices separated by ``|``.
    """
    path = Path(path)
    if path.is_dir():  # --data-dir alone: mc has no file of its own there
        raise DataError("is a folder, not a multiple-choice file", file=str(path),
                        hint="pass --tasks mc=FILE.jsonl (or mc_letters=FILE.jsonl): --data-dir names no mc file")
    if not path.is_file():
        raise DataError("file not found", file=str(path), hint="pass --tasks mc=FILE.jsonl")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if "choices" not in row:
                row["choices"] = [row[k] for k in "ABCDEFGH" if row.get(k) not in (None, "")]
            elif isinstance(row["choices"], str):
                row["choices"] = row["choices"].split("|")
    else:
        rows = read_task_rows(path)
    items = []
    for i, row in enumerate(rows):
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError("needs a list of at least 2 choices", file=str(path), index=i, field="choices")
        items.append({"id": str(row.get("id", f"mc-{i}")), "question": row["question"],
                      "choices": [str(c) for c in choices], "gold": _gold_index(row, len(choices), path, i)})
    return items


def _gold_index(row: dict[str, Any], count: int, path: Path, index: int) -> int:
    answer = row.get("answer", row.get("label"))
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        answer = ord(answer.strip().upper()) - ord("A")
    if not isinstance(answer, int) or not 0 <= answer < count:
        raise DataError(f"answer must be a letter A-{chr(64 + count)} or an index 0-{count - 1}",
                        file=str(path), index=index, field="answer")
    return answer


@TASKS.register("mc")
class MultipleChoice(LoglikelihoodTask):
    """ARC style: ``"Question: {question}\\nAnswer:"`` + ``" {choice text}"``; acc_norm
    (log-likelihood per character) matters here because choices differ in length."""

    name = "mc"
    num_fewshot = None  # zero-shot; --num-fewshot does not apply

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        return read_mc(_require(data_path, self.name, "a JSONL or CSV file"))

    def context(self, doc: dict[str, Any]) -> str:
        return f"Question: {doc['question']}\nAnswer:"

    def choices(self, doc: dict[str, Any]) -> list[str]:
        return [f" {choice}" for choice in doc["choices"]]

    def gold(self, doc: dict[str, Any]) -> int:
        return doc["gold"]


@TASKS.register("mc_letters")
class MultipleChoiceLetters(MultipleChoice):
    """MMLU style: the options are listed with letters and the continuations are
    ``" A"``, ``" B"``, ...: every continuation is one token, so the context runs once."""

    name = "mc_letters"

    def context(self, doc: dict[str, Any]) -> str:
        options = "".join(f"{chr(65 + i)}. {c}\n" for i, c in enumerate(doc["choices"]))
        return f"{doc['question'].strip()}\n{options}Answer:"

    def choices(self, doc: dict[str, Any]) -> list[str]:
        return [f" {chr(65 + i)}" for i in range(len(doc["choices"]))]
