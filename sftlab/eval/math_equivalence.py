"""MATH answer equivalence as the references judge it: lm-eval's minerva_math and math-verify.

``minerva``: lm-evaluation-harness 0.4.13 ``tasks/minerva_math/utils.py`` rule for rule: the
model's answer is the text of "Final Answer: The final answer is X. I hope it is correct."
(``[invalidanswer]`` without it), the reference is the last ``\\boxed{}`` of the solution;
both go through ``normalize_final_answer`` (Lewkowycz et al. 2022, appendix D: its
substitution and removal lists) and are equal when sympy's ``parse_latex`` of their
difference simplifies to 0 (5 s limit; a parse failure is "not equal").

``math_verify``: Hugging Face's math-verify, ``verify(parse(solution), parse(output))``, as
lm-eval's ``math_verify`` metric. Both need the ``math`` extra (``pip install
'sftlab[math]'``: math-verify and the antlr4 4.11 runtime sympy's LaTeX parser wants).

>>> normalize_final_answer("\\\\$1,000")
'1000'
>>> normalize_final_answer("x = \\\\frac12 \\\\text{ cm}")
'\\\\frac{1}{2}'
>>> answer_from_final_line("So.\\nFinal Answer: The final answer is $24$. I hope it is correct.")
'$24$'
"""
from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager
from importlib import metadata

from sftlab.errors import ConfigError
from sftlab.data.answers import closing_brace

INVALID_ANSWER = "[invalidanswer]"
_FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")
_HOPE = "I hope it is correct."

SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
]


def answer_from_final_line(text: str) -> str:
    """The X of the first "Final Answer: The final answer is X. I hope it is correct."
    (the sentence may end the output unfinished); ``[invalidanswer]`` without one."""
    match = _FINAL_ANSWER.search(text + _HOPE)
    return match.group(1).strip() if match else INVALID_ANSWER


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with its braces balanced, or
    ``\\boxed X`` up to the next ``$`` when the text writes one; None when there is none."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    end = closing_brace(text, start)
    return None if end is None else text[start: end + 1]


def remove_boxed(boxed: str | None) -> str | None:
    """``\\boxed{X}`` or ``\\boxed X`` -> ``X``; None for anything else (lm-eval stops there)."""
    if boxed is None:
        return None
    if "\\boxed " in boxed:
        return boxed[len("\\boxed "):] if boxed.startswith("\\boxed ") else None
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{"): -1]
    return None


def normalize_final_answer(answer: str) -> str:
    """Lewkowycz et al. (2022) appendix D normalisation, step for step as lm-eval 0.4.13 runs
    it (its unit words are removed as whole words first, then outside LaTeX command names,
    so ``\\left`` keeps its "ft"; only a 1,000-style number loses its commas)."""
    answer = answer.split("=")[-1]
    for expression in REMOVED_EXPRESSIONS:
        if expression.isalpha():
            answer = re.sub(rf"(?<!\\)\b{expression}\b", "", answer)
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        if expression.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", answer)
            segments[::2] = [segment.replace(expression, "") for segment in segments[::2]]
            answer = "".join(segments)
        else:
            answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):
        answer = answer.replace(",", "")
    return answer


def minerva_target(solution: str) -> str | None:
    """The normalised last boxed answer of a reference solution (None without one)."""
    inner = remove_boxed(last_boxed_only_string(solution))
    return None if inner is None else normalize_final_answer(inner)


def require_math_extra() -> None:
    try:
        version = metadata.version("antlr4-python3-runtime")
        metadata.version("math-verify")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(f"the MATH metrics need {exc.name}: pip install 'sftlab[math]'") from exc
    if not version.startswith("4.11"):
        raise ConfigError(f"sympy's LaTeX parser needs antlr4-python3-runtime 4.11, not {version}: "
                          "pip install 'sftlab[math]'")


@contextmanager
def _time_limit(seconds: int):
    """SIGALRM limit where possible (the main thread); no limit elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def is_equiv(left: str, right: str) -> bool:
    """lm-eval 0.4.13's minerva ``is_equiv``: equal non-empty strings, else
    ``simplify(parse_latex(left) - parse_latex(right)) == 0``; False when either does not
    parse, cannot be subtracted, or takes over 5 s."""
    if left and left == right:
        return True
    require_math_extra()
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        with _time_limit(5):
            difference = parse_latex(left) - parse_latex(right)
            return bool(sympy.simplify(difference) == 0)
    except Exception:  # noqa: BLE001 - the reference counts every failure as "not equal"
        return False


def minerva_equal(output: str, target: str | None) -> bool:
    """The ``minerva`` verdict of a model output against a normalised reference answer."""
    if target is None:
        return False
    return is_equiv(normalize_final_answer(answer_from_final_line(output)), target)


def math_verify_equal(output: str, gold: str) -> bool:
    """math-verify's verdict: ``verify(parse(gold), parse(output))`` (gold: the solution)."""
    require_math_extra()
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold), parse(output)))
    except Exception:  # noqa: BLE001 - a parser failure inside math-verify is "not equal"
        return False
