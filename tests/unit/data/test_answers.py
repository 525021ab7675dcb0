"""Answer extraction tables: GSM8K lenient, MATH boxed + normalisation, BBH."""
import pytest

from sftlab.data.answers import (bbh_answer, gsm8k_lenient, gsm8k_target, last_boxed,
                                 math_answer, math_equal, normalize_math)

GSM8K_LENIENT_CASES = [
    # text, sftlab's lenient extraction (exact_match_lenient; lm-eval's are in test_gsm8k_lm_eval.py)
    ("Janet sells 9 eggs.\n#### 18", "18"),
    ("So 3 + 2 = 5. The answer is 5.", "5"),
    ("The answer is $1,200.", "1200"),
    ("She earns 12 then 18 dollars", None),
    ("The answer is -3.", "-3"),
    ("It is 7.50 dollars. The answer is 7.5", "7.5"),
    ("The answer is 4.0.", "4"),
    ("the final answer is: 9", "9"),
    ("no numbers here", None),
]


@pytest.mark.parametrize("text,lenient", GSM8K_LENIENT_CASES)
def test_gsm8k_lenient(text, lenient):
    assert gsm8k_lenient(text) == lenient


def test_gsm8k_target_from_answer_field():
    assert gsm8k_target("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1,072"


@pytest.mark.parametrize("text,boxed", [
    ("so $\\boxed{5}$.", "5"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1} then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed 7$", "7"),
    ("\\boxed{unbalanced", None),
    ("nothing", None),
])
def test_last_boxed_nested(text, boxed):
    assert last_boxed(text) == boxed


MATH_EQUAL = [
    ("\\frac{1}{2}", "1/2"), ("\\dfrac{1}{2}", "\\frac12"), ("\\tfrac{3}{4}", "0.75"),
    ("5.0", "5"), ("\\$5", "5"), ("10\\%", "10"), ("90^\\circ", "90"), ("90^{\\circ}", "90"),
    ("5 \\text{ cm}", "5"), ("x = 3", "3"), ("1,000", "1000"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\sqrt3", "\\sqrt{3}"), (".5", "0.5"), ("-\\frac{2}{3}", "-2/3"), ("\\text{(B)}", "(B)"),
]
MATH_DIFFERENT = [("\\frac{1}{3}", "0.33"), ("5", "6"), ("(1,2)", "(2,1)"), ("x^2", "x^3")]


@pytest.mark.parametrize("a,b", MATH_EQUAL)
def test_math_equivalent_forms(a, b):
    assert math_equal(a, b), (normalize_math(a), normalize_math(b))


@pytest.mark.parametrize("a,b", MATH_DIFFERENT)
def test_math_different_values(a, b):
    assert not math_equal(a, b)


def test_math_answer_prefers_boxed_then_final_answer_line():
    assert math_answer("We get $\\boxed{24}$.\nFinal Answer: The final answer is $25$.") == "24"
    assert math_answer("Final Answer: The final answer is $25$. I hope it is correct.") == "25"
    assert math_answer("no answer") is None


@pytest.mark.parametrize("text,answer", [
    ("Z = False. So the answer is False.", "False"),
    ("So the answer is (C).", "(C)"),
    ("So the answer is (C) the blue ball.", "(C)"),
    ("the answer is No.\n\nQ: next", "No"),
    ("So the answer is ] ].", "] ]"),
    ("I give up", None),
])
def test_bbh_answer(text, answer):
    assert bbh_answer(text) == answer
