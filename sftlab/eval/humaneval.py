"""HumanEval (Chen et al. 2021): 164 Python functions, scored by running their unit tests.

A completion is judged by running ``prompt + completion + test + check(entry_point)`` in the
sandbox (``sftlab.eval.sandbox``): passed = the program ran to the end. A sandbox that
cannot be set up raises ``SandboxError`` and stops the evaluation: a score of 0 from a
broken sandbox would look like a bad model.

Two prompt styles, one scorer:

- ``humaneval`` (base models): the raw prompt (signature + docstring) is continued; the
  completion is cut at the first stop sequence (``\\ndef ``, ``\\nclass ``,
  ``\\nif __name__``, ``\\nprint(``, ``\\n#``), as in the Codex paper.
- ``humaneval_chat`` (chat models): the prompt is wrapped in a user message asking for the
  completed function; the code is taken from the ```` ```python ```` block of the answer.

``score`` detects which kind of response it got (a fenced block means chat), so a chat
response file also scores under ``humaneval``.

pass@k uses the unbiased estimator: with n samples of which c pass,
``pass@k = 1 - C(n-c, k) / C(n, k)``, computed as a stable product.

>>> round(pass_at_k(n=10, c=3, k=1), 4), round(pass_at_k(n=10, c=3, k=5), 4)
(0.3, 0.9167)
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from sftlab.errors import DataError
from sftlab.eval.base import TASKS, GenerationTask, Sample
from sftlab.eval.sandbox import SandboxError, SandboxLimits, check_sandbox, run_python
from sftlab.infer.base import SamplingConfig
from sftlab.types import Message

STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the full function in one "
    "```python code block.\n\n```python\n{prompt}```"
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn (without replacement) from n
    generated samples, c of them correct, is correct: ``1 - C(n-c,k)/C(n,k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms huge binomials.
    """
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def read_problems(path: str | Path) -> list[dict[str, Any]]:
    """HumanEval problems from ``HumanEval.jsonl.gz`` (or an uncompressed ``.jsonl``):
    ``task_id, prompt, canonical_solution, test, entry_point``."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path),
                        hint="pass --data-dir DIR with humaneval/HumanEval.jsonl.gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    for index, row in enumerate(rows):
        for field in ("task_id", "prompt", "test", "entry_point"):
            if field not in row:
                raise DataError("missing field", file=str(path), index=index, field=field)
    return rows


def truncate_at_stop(completion: str, stops: list[str] = STOP_SEQUENCES) -> str:
    """The completion up to the earliest stop sequence (a new top-level statement)."""
    cut = min((completion.find(stop) for stop in stops if stop in completion), default=-1)
    return completion if cut < 0 else completion[:cut]


_PYTHON_FENCES = ("", "python", "py", "python3", "Python")


def fenced_blocks(text: str) -> list[str]:
    """Python (or unlabelled) ```` ``` ```` blocks of a markdown answer, in order; an
    unclosed last block runs to the end of the text."""
    blocks, current, language = [], None, ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current, language = [], stripped[3:].strip()
            else:
                if language in _PYTHON_FENCES:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    if current is not None and language in _PYTHON_FENCES:
        blocks.append("".join(current))
    return blocks


def extract_code(response: str, entry_point: str) -> str | None:
    """The code of a chat answer: the fenced block that defines ``entry_point``, else the
    first fenced block; None when the answer has no fenced Python block."""
    blocks = fenced_blocks(response)
    if not blocks:
        return None
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.M):
            return block
    return blocks[0]


def build_program(problem: dict[str, Any], response: str) -> str:
    """The program the sandbox runs for one response.

    Chat answer (fenced code): the prompt (for its imports; a signature with only a
    docstring is valid Python) then the answer's code, which redefines the function.
    Completion: prompt + the completion cut at the stop sequences.
    """
    code = extract_code(response, problem["entry_point"])
    if code is None:
        body = problem["prompt"] + truncate_at_stop(response)
    elif re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.M):
        body = problem["prompt"] + "    pass\n\n" + code
    else:  # a block with only the function body
        body = problem["prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def canonical_program(problem: dict[str, Any]) -> str:
    """The reference solution's program (should always pass)."""
    return build_program(problem, problem["canonical_solution"])


@TASKS.register("humaneval")
class HumanEval(GenerationTask):
    """HumanEval, completion style (raw prompt, stop sequences). Metric ``pass@1``; with
    several samples per problem (``--num-samples N --temperature T``, or a responses file
    with several rows per task id) also pass@10 and pass@100 where N allows."""

    name = "humaneval"
    data_file = "humaneval/HumanEval.jsonl.gz"
    sampling = SamplingConfig(max_new_tokens=512, temperature=0.0, stop=list(STOP_SEQUENCES))
    limits = SandboxLimits(timeout=10.0)
    ks = (1, 10, 100)

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        if data_path is None:
            raise DataError("task 'humaneval' needs its data",
                            hint="pass --data-dir DIR with humaneval/HumanEval.jsonl.gz, "
                                 "or --tasks humaneval=PATH")
        problems = read_problems(data_path)
        check_sandbox(self.limits)  # before any generation: a broken sandbox stops here
        return [{**row, "id": row["task_id"]} for row in problems]

    def prompt(self, doc: dict[str, Any]):
        return doc["prompt"]

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        """-> ({"program", "status", "message"}, {"pass@1": 1.0 or 0.0}).

        Raises ``SandboxError`` when the sandbox could not be set up (nothing ran).
        """
        program = build_program(doc, response or "")
        result = run_python(program, self.limits)
        if result.status == "error":
            raise SandboxError(f"humaneval {doc.get('id', doc['task_id'])}: {result.message}")
        extracted = {"program": program, "status": result.status, "message": result.message}
        return extracted, {"pass@1": float(result.passed)}

    def problem_scores(self, samples: list[Sample]) -> dict[str, list[float]]:
        """Per k (1, 10, 100, those <= the fewest samples of a problem): the pass@k of every
        problem, by the unbiased estimator over its samples (``"HumanEval/3#2"`` = sample 2
        of problem ``HumanEval/3``). The runner reports their means with intervals
        bootstrapped over problems."""
        per_problem: dict[str, list[bool]] = {}
        for sample in samples:
            problem_id = sample.id.split("#")[0]
            per_problem.setdefault(problem_id, []).append(sample.scores["pass@1"] == 1.0)
        if not per_problem:
            return {}
        fewest = min(len(results) for results in per_problem.values())
        return {f"pass@{k}": [pass_at_k(len(r), sum(r), k) for r in per_problem.values()]
                for k in self.ks if k <= fewest}

    def aggregate(self, samples: list[Sample]) -> dict[str, float]:
        """pass@k averaged over problems, for every k <= the fewest samples of a problem."""
        return {key: sum(values) / len(values) for key, values in self.problem_scores(samples).items()}


@TASKS.register("humaneval_chat")
class HumanEvalChat(HumanEval):
    """HumanEval for chat models: the stub in a user message, code from the reply."""

    name = "humaneval_chat"
    sampling = SamplingConfig(max_new_tokens=768, temperature=0.0)

    def prompt(self, doc: dict[str, Any]) -> list[Message]:
        return [Message("user", CHAT_INSTRUCTION.format(prompt=doc["prompt"]))]
