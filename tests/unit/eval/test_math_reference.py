"""MATH verdicts equal the references: lm-eval 0.4.13's minerva_math and math-verify 0.9.0.

``data/math_reference_verdicts.json``: 50 hand-made (output, solution) pairs with the verdicts
the reference code itself gave (recorded as data: output, solution, minerva, math_verify).
"""
import json
from pathlib import Path

import pytest

from sftlab.eval.math_equivalence import (INVALID_ANSWER, answer_from_final_line, is_equiv,
                                          last_boxed_only_string, math_verify_equal, minerva_equal,
                                          minerva_target, normalize_final_answer, remove_boxed)
from sftlab.eval.tasks import Math

CASES = json.loads((Path(__file__).parent / "data" / "math_reference_verdicts.json").read_text("utf-8"))["cases"]


@pytest.mark.parametrize("output,solution,minerva,verified", CASES)
def test_verdicts_equal_the_references(output, solution, minerva, verified):
    assert minerva_equal(output, minerva_target(solution)) == bool(minerva)
    assert math_verify_equal(output, solution) == bool(verified)


def test_the_table_holds_both_verdicts():
    assert len(CASES) == 50
    assert sum(c[2] for c in CASES) == 36 and sum(c[3] for c in CASES) == 46


@pytest.mark.parametrize("raw,normalized", [
    ("\\$1,000", "1000"), ("1{,}000", "1000"), ("x = \\frac12 \\text{ cm}", "\\frac{1}{2}"),
    ("90^\\circ", "90"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left(3,\\frac{\\pi}{2}\\right)"),
    ("\\sqrt[3]8", "\\sqrt[3]{8}"), ("\\sqrt2", "\\sqrt{2}"), ("5 feet", "5"), ("1,2", "1,2"),
    ("\\text{(B)}", "(B)"), ("\\boxed{7}", "7"),
])
def test_normalize_final_answer(raw, normalized):
    assert normalize_final_answer(raw) == normalized


def test_answer_and_box_extraction():
    assert answer_from_final_line("Final Answer: The final answer is $3$. I hope it is correct.") == "$3$"
    assert answer_from_final_line("Final Answer: The final answer is 7. ") == "7"  # cut before "I hope"
    assert answer_from_final_line("Final Answer: The final answer is 7") == INVALID_ANSWER
    assert answer_from_final_line("The answer is 7.") == INVALID_ANSWER
    assert last_boxed_only_string("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\boxed{\\frac{1}{2}}"
    assert last_boxed_only_string("\\boxed 5$ and more") == "\\boxed 5"
    assert remove_boxed("\\fbox{3}") is None and remove_boxed(None) is None
    assert is_equiv("(1,2)", "(1,2)") and not is_equiv("(2,1)", "(1,2)")


def test_math_task_reports_the_three_verdicts(tmp_path):
    rows = [{"problem": "1/2 + 1/4?", "solution": "It is $\\boxed{\\frac{3}{4}}$.", "type": "Algebra"}]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = Math()
    doc = task.docs(str(path))[0]
    extracted, scores = task.score(doc, "Final Answer: The final answer is $0.75$. I hope it is correct.")
    assert scores == {"math_verify": 1.0, "minerva": 1.0, "exact_match_normalized": 1.0}
    assert extracted == {"boxed": "0.75", "minerva": "0.75"}
    _, scores = task.score(doc, "so the sum is $\\boxed{\\dfrac34}$")
    assert scores == {"math_verify": 1.0, "minerva": 0.0, "exact_match_normalized": 1.0}


# sha256 of the prompt lm-evaluation-harness (main, 2026-12) builds for minerva_math with 4 shots
# and the doc {"problem": "What is $1+1$?"}: its utils.doc_to_text and list_fewshot_samples,
# target_delimiter " ", fewshot_delimiter "\n\n" (computed from the reference's source; 1,826 chars)
LM_EVAL_PROMPT_SHA256 = "422b974c9e62454aaa40d45cd0746349284d80ac596fe830b18df85aeadfbb6c"


def test_prompt_is_byte_identical_to_lm_eval():
    import hashlib

    prompt = Math().prompt({"problem": "What is $1+1$?"})
    assert len(prompt) == 1826
    assert hashlib.sha256(prompt.encode()).hexdigest() == LM_EVAL_PROMPT_SHA256
    assert prompt.count("\n\nSolution: ") == 4 and prompt.endswith("What is $1+1$?\n\nSolution:")
    assert Math.sampling.stop == ["Problem:"]
