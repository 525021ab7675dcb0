"""HumanEval: pass@k, prompts, code extraction and the canonical solutions in the sandbox."""
from math import comb

import pytest

from sftlab.eval.base import Sample
from sftlab.eval.humaneval import (
    HumanEval,
    HumanEvalChat,
    build_program,
    canonical_program,
    extract_code,
    pass_at_k,
    read_problems,
    truncate_at_stop,
)
from sftlab.eval.sandbox import run_many, run_python


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 3, 1, 0.3),            # pass@1 = c / n
        (10, 3, 5, 1 - 21 / 252),   # 1 - C(7,5)/C(10,5)
        (5, 4, 2, 1.0),             # n - c < k: some correct sample always drawn
        (200, 1, 100, 0.5),         # 1 - C(199,100)/C(200,100) = 1 - 100/200
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_binomials_and_stays_finite_for_large_n():
    for n, c, k in [(20, 7, 3), (50, 10, 10), (100, 1, 10)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert 0.0 < pass_at_k(2000, 3, 100) < 1.0
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


@pytest.fixture(scope="module")
def problems(shared_data):
    return read_problems(shared_data / "humaneval" / "HumanEval.jsonl.gz")


def test_read_problems(problems):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"


def test_canonical_solutions_pass_fast_subset(problems):
    """10 problems spread over the set; the full 164 run is the slow test below."""
    subset = problems[::17][:10]
    results = run_many([canonical_program(p) for p in subset], workers=2)
    assert [r.status for r in results] == ["passed"] * len(subset)


@pytest.mark.slow
def test_all_164_canonical_solutions_pass(problems):
    results = run_many([canonical_program(p) for p in problems], workers=2)
    failed = [(p["task_id"], r.message) for p, r in zip(problems, results) if not r.passed]
    assert failed == []


def test_wrong_and_dangerous_completions_fail(problems):
    problem = problems[0]
    wrong = build_program(problem, "    return True\n")
    assert run_python(wrong).status == "failed"
    task = HumanEval()
    task.limits = type(task.limits)(timeout=2.0)
    extracted, scores = task.score(problem, "    while True:\n        pass\n")
    assert scores == {"pass@1": 0.0} and extracted["status"] == "timeout"


def test_truncate_at_stop_sequences():
    completion = "    return x + 1\n\ndef other():\n    pass\n"
    assert truncate_at_stop(completion) == "    return x + 1\n"
    assert truncate_at_stop("    return 1\nprint(f(2))") == "    return 1"
    assert truncate_at_stop("    return 1\n# tests") == "    return 1"
    assert truncate_at_stop("    # indented comment stays\n    return 1") == (
        "    # indented comment stays\n    return 1")


def test_extract_code_from_chat_answer():
    answer = ("Here you go:\n```python\nimport math\n\ndef helper():\n    pass\n```\n"
              "and\n```python\ndef add(a, b):\n    return a + b\n```\nDone.")
    assert extract_code(answer, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code("no code", "add") is None
    assert extract_code("```\nx = 1\n```", "add") == "x = 1\n"
    # a non-Python block is skipped, and its closing fence opens nothing
    mixed = "```cpp\nint add();\n```\nThen:\n```python\ny = 2\n```"
    assert extract_code(mixed, "add") == "y = 2\n"
    assert extract_code("```python\ndef add(a, b):\n    return 1", "add").startswith("def add")


def test_chat_and_completion_responses_both_score(problems):
    problem = problems[2]  # truncate_number: return number % 1.0
    task = HumanEval()
    completion = "    return number % 1.0\n\ndef unrelated():\n    pass\n"
    chat = ("Sure!\n```python\ndef truncate_number(number: float) -> float:\n"
            "    return number % 1.0\n```")
    assert task.score(problem, completion)[1] == {"pass@1": 1.0}
    assert task.score(problem, chat)[1] == {"pass@1": 1.0}
    assert task.score(problem, "```python\ndef truncate_number(n):\n    return n\n```")[1] == {
        "pass@1": 0.0}


def test_prompts(problems):
    problem = {**problems[0], "id": problems[0]["task_id"]}
    assert HumanEval().prompt(problem) == problem["prompt"]
    messages = HumanEvalChat().prompt(problem)
    assert messages[0].role == "user" and problem["prompt"] in messages[0].content
    assert "\ndef " in HumanEval.sampling.stop


def test_task_docs_and_aggregate(shared_data):
    task = HumanEval()
    docs = task.docs(str(shared_data / "humaneval" / "HumanEval.jsonl.gz"))
    assert docs[5]["id"] == "HumanEval/5"

    def sample(problem_id, passed):
        return Sample("humaneval", problem_id, "", None, "", None, {"pass@1": float(passed)})

    # problem A: 2 of 10 samples pass; problem B: 0 of 10
    samples = [sample(f"A#{i}", i < 2) for i in range(10)] + [sample(f"B#{i}", False)
                                                             for i in range(10)]
    scores = task.aggregate(samples)
    assert scores["pass@1"] == pytest.approx((0.2 + 0.0) / 2)
    assert scores["pass@10"] == pytest.approx((1.0 + 0.0) / 2)
    assert "pass@100" not in scores
    assert task.aggregate([sample("A", True), sample("B", False)]) == {"pass@1": 0.5}
