"""BBH equals lm-evaluation-harness 0.4.x's bbh_cot_fewshot: prompts byte for byte, answers.

``data/lm_eval_bbh_cot_fewshot.json`` holds three subtasks' yaml facts (description,
doc_to_text, few-shot samples). lm-eval's prompt is rebuilt from them by its rule: the
description, then per shot doc_to_text + target_delimiter "" + target + fewshot_delimiter
"\\n\\n", then doc_to_text of the item. Its answer rule is applied with ``re`` here.
"""
import json
import re
from pathlib import Path

import pytest

from sftlab.data.answers import bbh_answer, bbh_answer_lm_eval
from sftlab.eval.tasks import Bbh

REFERENCE = json.loads((Path(__file__).parent / "data" / "lm_eval_bbh_cot_fewshot.json").read_text("utf-8"))
ANSWER = "(?<=the answer is )(.*)(?=.)"


def reference_prompt(facts, item_input):
    def text(doc_input):
        return facts["doc_to_text"].replace("{{input}}", doc_input)
    shots = "".join(text(s["input"]) + "" + s["target"] + "\n\n" for s in facts["samples"])
    return facts["description"] + shots + text(item_input)


def reference_answer(output):
    found = re.findall(ANSWER, output)
    return found[0].strip() if found else "[invalid]"


@pytest.mark.parametrize("subtask", sorted(REFERENCE["subtasks"]))
def test_prompts_are_byte_identical_to_lm_eval(shared_data, subtask):
    task = Bbh([subtask])
    docs = task.docs(str(shared_data / "bbh"))
    assert len(docs) >= 250
    facts = REFERENCE["subtasks"][subtask]
    assert [task.prompt(d) for d in docs] == [reference_prompt(facts, d["input"]) for d in docs]


HAND_MADE = [
    "A is True. So the answer is False.",
    "So the answer is True. So the answer is False.",        # first match, greedy to the line end
    "So the answer is (B).",
    "So the answer is (B) the red ball.",
    "So the answer is False",                                 # no period: the last letter goes
    "So The answer is False.",                                # capital T: no match
    "the answer is:\nNo.",
    "the answer is No.\nthe answer is Yes.",
    "So the answer is ] ].",
    "the answer is ",
    "I give up.",
    "So the answer is 12/25/2019.\n",
    "So the answer is  (C).",
]


@pytest.mark.parametrize("output", HAND_MADE)
def test_answer_equals_lm_evals_rule(output):
    assert bbh_answer_lm_eval(output) == reference_answer(output)


def test_answer_known_values():
    assert bbh_answer_lm_eval("So the answer is True. So the answer is False.") == "True. So the answer is False"
    assert bbh_answer_lm_eval("So the answer is False") == "Fals"
    assert bbh_answer("So the answer is True. So the answer is False.") == "False"


def test_scores_on_real_bbh_items(shared_data):
    """Outputs built from every real item (the target said as the exemplars say it, and
    two lm-eval quirks): sftlab's exact_match is lm-eval's verdict on each."""
    task = Bbh()
    docs = task.docs(str(shared_data / "bbh"))
    assert len(docs) == 6511
    compared = agree = correct = 0
    for doc in docs:
        target = doc["target"]
        for output in (f"Reasoning. So the answer is {target}.", f"So the answer is {target}",
                       f"So the answer is {target}. So the answer is {target}."):
            _, scores = task.score(doc, output)
            compared += 1
            agree += scores["exact_match"] == float(reference_answer(output) == target)
            correct += scores["exact_match"]
    assert agree == compared == 3 * 6511
    assert correct == 6511  # only the first form is right under lm-eval's rule


def test_sampling_is_lm_evals():
    assert Bbh.sampling.stop == ["Q", "\n\n"] and Bbh.sampling.max_new_tokens == 1024
