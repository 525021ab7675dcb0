"""Answer extraction: from a model's free text to the one answer a metric compares (used
by the evaluation tasks and by rule-based rewards, hence in the data layer).

GSM8K: lm-evaluation-harness 0.4.x's filters and exact match, regex for regex:
- ``strict`` (``strict-match``): the first "The answer is N" (gsm8k-cot) or ``#### N`` (gsm8k);
- ``flexible`` (``flexible-extract``): the last number-like run of the text;
- ``lenient`` (sftlab's own, named apart): "####" or "the answer is", numbers compared by value.

MATH: the content of the last ``\\boxed{...}`` (nested braces kept), then a normalisation
that makes equivalent spellings equal: ``\\dfrac{1}{2}`` = ``\\frac12`` = ``1/2`` = ``0.5``,
``10\\%`` = ``10``, ``90^\\circ`` = ``90``, ``\\$5`` = ``5``, ``5.0`` = ``5``,
``5 \\text{ cm}`` = ``5``, ``x = 3`` = ``3``, spaces ignored.

BBH: lm-eval's bbh_cot_fewshot "get-answer" (the first "the answer is " to one character before
the end of its line), and sftlab's own ``bbh_answer`` (the last one, without the period).

>>> gsm8k_strict("so 5 + 3 = 8. The answer is 8.")
'8'
>>> gsm8k_flexible("I think 1,200 dollars, or maybe $1,250.")
'$1,250.'
>>> last_boxed("so $x=\\\\boxed{\\\\frac{1}{2}}$.")
'\\\\frac{1}{2}'
>>> math_equal("\\\\dfrac{1}{2}", "0.5")
True
"""
from __future__ import annotations

import re
from fractions import Fraction

# ---------------------------------------------------------------- GSM8K

# lm-evaluation-harness 0.4.x, tasks/gsm8k/{gsm8k,gsm8k-cot}.yaml: the "regex" filter of each
# filter list, then "take_first" (the first of the repeats: one response here)
LM_EVAL_INVALID = "[invalid]"
GSM8K_STRICT_PATTERNS = {
    "gsm8k": r"#### (\-?[0-9\.\,]+)",
    "gsm8k-cot": r"The answer is (\-?[0-9\.\,]+).",
}
GSM8K_FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
# their exact_match: these removed (in order) from prediction and reference, then lower case
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")


def regex_filter(text: str, pattern: str, group_select: int = 0) -> str:
    """lm-eval's regex filter: match ``group_select`` of ``re.findall`` (0 = the first, -1 =
    the last); of a tuple of groups the first non-empty one; stripped; ``[invalid]`` if none."""
    matches = re.findall(pattern, text)
    if not matches:
        return LM_EVAL_INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), LM_EVAL_INVALID)
    return match.strip()


def gsm8k_strict(text: str, variant: str = "gsm8k-cot") -> str:
    """lm-eval's ``strict-match``: the first "The answer is N" + one character
    (``gsm8k-cot``) or the first ``#### N`` (``gsm8k``); ``[invalid]`` when there is none.

    >>> gsm8k_strict("The answer is 5. Or The answer is 6.")  # "." is any character
    '5.'
    """
    return regex_filter(text, GSM8K_STRICT_PATTERNS[variant])


def gsm8k_flexible(text: str) -> str:
    """lm-eval's ``flexible-extract``: the last number-like run (same in both variants)."""
    return regex_filter(text, GSM8K_FLEXIBLE_PATTERN, group_select=-1)


def gsm8k_exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's exact_match with the gsm8k settings: ``GSM8K_IGNORE`` removed from both,
    case ignored, punctuation kept (``"$1,200."`` equals ``"1200"``, ``"7.50"`` does not
    equal ``"7.5"``)."""
    for pattern in GSM8K_IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def gsm8k_target(answer: str) -> str:
    """The reference of a GSM8K ``answer`` field as lm-eval's gsm8k-cot writes it: the text
    after the last ``####``, stripped (``"...\\n#### 1,234"`` -> ``"1,234"``)."""
    return answer.split("####")[-1].strip()


_NUMBER = r"-?[$0-9.,]*[0-9]"
_LENIENT_PATTERNS = [
    re.compile(r"####\s*(" + _NUMBER + r")"),
    re.compile(r"[Tt]he (?:final )?answer is:?\s*\$?\s*(" + _NUMBER + r")"),
]


def normalize_number(text: str) -> str:
    """``"$1,200.00"`` -> ``"1200"``; ``"-3."`` -> ``"-3"``; non-numbers come back stripped."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return text
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), "g")


def gsm8k_lenient(text: str) -> str | None:
    """sftlab's own, more lenient extraction (metric ``exact_match_lenient``, not lm-eval's):
    the number after the last ``####``, else after the last "the (final) answer is"
    (either case of "The", optional ":" and "$"), compared by value (``7.50`` = ``7.5``);
    else None."""
    for pattern in _LENIENT_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    return None


# ---------------------------------------------------------------- MATH

def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (balanced braces), or of
    ``\\boxed 5``; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    head = rest[: brace if brace >= 0 else len(rest)]
    if brace < 0 or head.strip() not in ("\\boxed", "\\fbox"):
        # "\boxed 5": the answer runs to the next space or dollar sign
        match = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    end = closing_brace(rest, brace)
    return None if end is None else rest[brace + 1: end]  # None: unbalanced, the output was cut off


def closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` that closes the first ``{`` at or after ``start``; None when the
    braces never balance.

    >>> closing_brace("a{b{c}d}e", 0)
    7
    """
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def math_answer(text: str) -> str | None:
    """A model's MATH answer: the last boxed expression, else "The answer is X", else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    match = re.findall(r"[Tt]he (?:final )?answer is:?\s*(.+?)(?:\.\s*$|\.\s|$)", text)
    return match[-1].strip().strip("$") if match else None


_UNIT_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{\s*([^{}]*)\}")


def normalize_math(answer: str) -> str:
    """One spelling per value (see the module docstring); the result has no spaces.

    >>> normalize_math("\\\\dfrac{3}{4}")
    '\\\\frac{3}{4}'
    >>> normalize_math("3/4")
    '\\\\frac{3}{4}'
    >>> normalize_math("\\\\$ 1,000.00")
    '1000'
    """
    text = answer.strip().replace("\n", "")
    text = text.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\^\s*\{?\\circ\}?", "", text).replace("°", "")
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    # units and words written as \text{...}: a trailing one is a unit, dropped; others unwrapped
    text = re.sub(r"\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}\s*$", "", text) or text
    text = _UNIT_TEXT.sub(r"\1", text)
    # "x = 3" or "k=3": keep the value when the left side is a short name
    if "=" in text and len(text.split("=")[0].strip()) <= 2:
        text = text.split("=", 1)[1]
    text = text.replace(" ", "")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 1,000 -> 1000
    text = _fix_sqrt(_fix_fracs(text))
    text = _slash_to_frac(text)
    if text.startswith("."):
        text = "0" + text
    text = _trim_decimal_zeros(text)
    return text


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``; ``\\frac1{72}`` -> ``\\frac{1}{72}``."""
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
    return text


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)


def _slash_to_frac(text: str) -> str:
    """``3/4`` or ``-3/4`` -> ``\\frac{3}{4}`` (only for a bare integer ratio)."""
    match = re.fullmatch(r"(-?)(\d+)/(\d+)", text)
    if match:
        sign, top, bottom = match.groups()
        return f"{sign}\\frac{{{top}}}{{{bottom}}}"
    return text


def _trim_decimal_zeros(text: str) -> str:
    """``5.0`` -> ``5``, ``2.50`` -> ``2.5``: only for plain decimal numbers."""
    if re.fullmatch(r"-?\d+\.\d+", text):
        text = text.rstrip("0").rstrip(".")
    return text


def _as_number(text: str) -> Fraction | None:
    """The exact value of a normalised number or simple fraction, else None."""
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", text)
    try:
        if match:
            sign, top, bottom = match.groups()
            value = Fraction(int(top), int(bottom))
            return -value if sign else value
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def math_equal(prediction: str | None, target: str | None) -> bool:
    """Equal after ``normalize_math``, or equal as numbers (``\\frac{1}{2}`` vs ``0.5``)."""
    if prediction is None or target is None:
        return False
    left, right = normalize_math(prediction), normalize_math(target)
    if left == right:
        return True
    left_value, right_value = _as_number(left), _as_number(right)
    if left_value is not None and right_value is not None:
        return abs(float(left_value) - float(right_value)) <= 1e-6 * max(1.0, abs(float(right_value)))
    return False


# ---------------------------------------------------------------- BBH

# lm-evaluation-harness 0.4.x, tasks/bbh/cot_fewshot/_cot_fewshot_template_yaml: "get-answer"
BBH_ANSWER_PATTERN = r"(?<=the answer is )(.*)(?=.)"
_ANSWER_IS = re.compile(r"[Tt]he answer is")
_OPTION = re.compile(r"^\(([A-Z])\)")


def bbh_answer_lm_eval(text: str) -> str:
    """lm-eval's bbh_cot_fewshot answer: from the first "the answer is " (lower case) to one
    character before the end of that line; ``[invalid]`` when there is none.

    >>> bbh_answer_lm_eval("A is True. So the answer is False.")
    'False'
    >>> bbh_answer_lm_eval("So the answer is True. So the answer is False.")
    'True. So the answer is False'
    """
    return regex_filter(text, BBH_ANSWER_PATTERN)


def bbh_answer(text: str) -> str | None:
    """sftlab's own (metric ``exact_match_last``): the text after the last "the answer is"
    (either case of "The") up to the end of its line, without the final period; a
    multiple-choice answer ``(B) the red ball`` is cut to ``(B)``.

    >>> bbh_answer("So the answer is True. So the answer is False.")
    'False'
    >>> bbh_answer("So the answer is (B) the red one.")
    '(B)'
    """
    starts = [match.end() for match in _ANSWER_IS.finditer(text)]
    if not starts:
        return None
    answer = text[starts[-1]:].split("\n", 1)[0].strip()
    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
    option = _OPTION.match(answer)
    return f"({option.group(1)})" if option else answer
