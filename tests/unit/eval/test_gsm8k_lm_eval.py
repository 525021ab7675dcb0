"""GSM8K scores equal lm-evaluation-harness 0.4.x (tasks/gsm8k/gsm8k.yaml, gsm8k-cot.yaml).

The reference side is written here from the yamls' facts alone (regexes, group_select,
take_first, exact_match's ignore list, ignore_case), with ``re``, independent of sftlab's
code; a hand-derived verdict table guards the reference side itself.
"""
import json
import re

import pytest

from sftlab.data.answers import gsm8k_exact_match, gsm8k_flexible, gsm8k_strict, gsm8k_target
from sftlab.eval.tasks import Gsm8k

STRICT = {"gsm8k": "#### (\\-?[0-9\\.\\,]+)", "gsm8k-cot": "The answer is (\\-?[0-9\\.\\,]+)."}
FLEXIBLE = "(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def reference_filter(text, pattern, select):
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    chosen = found[select]
    if isinstance(chosen, tuple):
        chosen = [g for g in chosen if g][0] if any(chosen) else "[invalid]"
    return chosen.strip()


def reference_exact_match(prediction, gold):
    for pattern in IGNORE:
        prediction, gold = re.sub(pattern, "", prediction), re.sub(pattern, "", gold)
    return prediction.lower() == gold.lower()


def reference_verdicts(output, answer_field, variant):
    """(strict-match, flexible-extract) of lm-eval for one output; gold as the yaml's doc_to_target."""
    gold = answer_field.split("####")[-1].strip() if variant == "gsm8k-cot" else answer_field
    return (reference_exact_match(reference_filter(output, STRICT[variant], 0), gold),
            reference_exact_match(reference_filter(output, FLEXIBLE, -1), gold))


def sftlab_verdicts(output, answer_field, variant):
    target = gsm8k_target(answer_field)
    return (gsm8k_exact_match(gsm8k_strict(output, variant), target),
            gsm8k_exact_match(gsm8k_flexible(output), target))


# output, gold number, then lm-eval's verdicts derived by hand from the yamls:
# (gsm8k-cot strict, gsm8k strict, flexible)
HAND_MADE = [
    ("So 3 + 2 = 5. The answer is 5.", "5", (True, False, True)),
    ("The answer is 5", "5", (False, False, True)),           # "." needs one more character
    ("The answer is 15", "15", (False, False, True)),         # captures "1", "." eats "5"
    ("The answer is 18.\n", "18", (True, False, True)),
    ("The answer is $18.", "18", (False, False, True)),       # "$" not in the strict class
    ("The answer is: 18.", "18", (False, False, True)),
    ("the answer is 18.", "18", (False, False, True)),        # the regex is case-sensitive
    ("The final answer is 18.", "18", (False, False, True)),
    ("#### 18", "18", (False, True, True)),
    ("####18", "18", (False, False, True)),                   # "#### " needs the space
    ("The answer is 5. Later: the answer is 6.", "6", (False, False, True)),
    ("The answer is 5. Then The answer is 6.", "6", (False, False, True)),   # first match wins
    ("The answer is 6. Then The answer is 5.", "6", (True, False, False)),
    ("The answer is 1,200.", "1200", (True, False, True)),
    ("The answer is 1,200.", "1,200", (True, False, True)),
    ("The answer is 7.50.", "7.5", (False, False, False)),    # no numeric comparison
    ("The answer is 4.0.", "4", (False, False, False)),
    ("The answer is -3.", "-3", (True, False, True)),
    ("It costs $1,250.", "1250", (False, False, True)),
    ("She has 12 apples and 18 pears", "18", (False, False, True)),
    ("She has 12 apples and 18 pears", "12", (False, False, False)),
    ("no numbers here", "3", (False, False, False)),
    ("#### 72\n\nQ: another 99", "72", (False, True, False)),
    ("The answer is 72.\n#### 73", "72", (True, False, False)),
    ("Total: 8. The answer is 8.. Done", "8", (False, False, False)),  # both take "8.."
    ("The answer is 3.5 hours.", "3.5", (True, False, True)),
    ("The answer is 10.", "10", (True, False, True)),
    ("He paid 5 dollars. The answer is 5 dollars.", "5", (True, False, True)),
    ("The answer is .5.", "0.5", (False, False, False)),
    ("The answer is 0.5.", "0.5", (True, False, True)),
]


@pytest.mark.parametrize("output,gold,expected", HAND_MADE)
def test_reference_rules_give_the_hand_derived_verdicts(output, gold, expected):
    answer = f"some work\n#### {gold}"
    cot_strict, cot_flexible = reference_verdicts(output, answer, "gsm8k-cot")
    plain_strict, plain_flexible = reference_verdicts(output, answer, "gsm8k")
    assert (cot_strict, plain_strict, cot_flexible) == expected
    assert plain_flexible == cot_flexible


@pytest.mark.parametrize("variant", ["gsm8k-cot", "gsm8k"])
@pytest.mark.parametrize("output,gold,expected", HAND_MADE)
def test_sftlab_equals_lm_eval_on_hand_made_outputs(output, gold, expected, variant):
    answer = f"some work\n#### {gold}"
    assert sftlab_verdicts(output, answer, variant) == reference_verdicts(output, answer, variant)


def test_extracted_strings_are_lm_evals():
    assert gsm8k_strict("The answer is 15") == "1"
    assert gsm8k_strict("no answer") == "[invalid]"
    assert gsm8k_strict("#### 1,000 then #### 2", "gsm8k") == "1,000"
    assert gsm8k_flexible("cost $1,250. Total") == "$1,250."
    assert gsm8k_flexible("x") == "[invalid]"


def _gsm8k_test_rows(shared_data):
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _outputs_from_gold(answer):
    """Made from a real GSM8K solution: as written (#### N), as CoT ("The answer is N."),
    cut before its final line, and with the first number of the work as the answer."""
    work, _, number = answer.rpartition("####")
    first = re.search(r"\d+", work)
    return [answer, f"{work.strip()} The answer is {number.strip()}.", work,
            f"{work.strip()} The answer is {first.group(0) if first else '0'}."]


def test_sftlab_equals_lm_eval_on_the_real_gsm8k_test_set(shared_data):
    rows = _gsm8k_test_rows(shared_data)
    assert len(rows) == 1319
    compared = disagreements = 0
    for row in rows:
        for output in _outputs_from_gold(row["answer"]):
            for variant in ("gsm8k-cot", "gsm8k"):
                compared += 1
                disagreements += sftlab_verdicts(output, row["answer"], variant) != \
                    reference_verdicts(output, row["answer"], variant)
    assert compared == 1319 * 8 and disagreements == 0


def test_task_scores_are_the_lm_eval_metrics_and_lenient_is_apart():
    task = Gsm8k()
    doc = {"target": gsm8k_target("work\n#### 7")}
    _, scores = task.score(doc, "The answer is 7.50 dollars. The answer is $7.")
    assert scores == {"exact_match_strict": 0.0, "exact_match_flexible": 1.0, "exact_match_lenient": 1.0}
    _, scores = task.score(doc, "#### 7")
    assert scores == {"exact_match_strict": 0.0, "exact_match_flexible": 1.0, "exact_match_lenient": 1.0}
    assert task.sampling.stop == ["Q:", "</s>", "<|im_end|>"]
