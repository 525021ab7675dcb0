"""Visual question answering: ``sftlab eval MODEL --tasks vqa=questions.jsonl`` on a vision model.

Input (JSONL or a JSON list), one question about one image per row::

    {"id": "q1", "image": "images/cat.png", "question": "What animal is this?",
     "answers": ["cat", "cat", "kitten", ...]}          # or "answer": "cat"

``image`` is a path (relative to the file's folder), a ``file://`` URL or a base64
``data:image/...`` URL (``sftlab.data.images.image_ref``). The prompt is one user turn,
``<image>\\n{question}`` (plus ``suffix``, e.g. LLaVA-1.5's "Answer the question using a
single word or phrase."), a ``VisualConversation`` that only a vision generator takes (a
text-only model refuses it: ``ImagesNotSupported``). Greedy, at most 16 new tokens.

Answers are compared after the normalisation of the official VQA evaluation script
(``normalize_vqa_answer``; Antol et al. 2015, github.com/GT-Vision-Lab/VQA ``vqaEval.py``):
newlines and tabs to spaces, punctuation removed or spaced as that script does, lower case,
number words to digits (``none``/``zero`` -> ``0`` ... ``ten`` -> ``10``), articles dropped,
unpunctuated contractions restored (``dont`` -> ``don't``). Metrics per sample:

- ``exact_match``: the normalised response equals one of the normalised answers;
- ``vqa_accuracy``: the official VQA accuracy, ``min(#annotators who gave the response / 3,
  1)`` averaged over the leave-one-annotator-out subsets (with VQA's 10 answers, 3 matches
  give 0.9, 4 or more give 1). With a single answer it is ``exact_match`` (the official
  formula would give 0: no other annotator is left to agree).

The runner adds the mean, a seeded bootstrap 95% interval and ``n`` for each. Differences
from the script, on purpose: the ground-truth answers are always normalised in full (the
script punctuation-strips them only when annotators disagree, since VQA's released answers
are already normalised; for those this changes nothing, for a user's file it makes "Two"
equal "2").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftlab.data.images import IMAGE_PLACEHOLDER, VisualConversation, image_ref
from sftlab.errors import DataError
from sftlab.eval.base import TASKS, GenerationTask, read_task_rows
from sftlab.infer.base import SamplingConfig
from sftlab.types import Conversation, Message

# -- the official script's normalisation -------------------------------------------------------

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
"""Number words the VQA script turns into digits (``none`` counts as 0 there)."""

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
"""Removed (or turned into a space) by the script; the apostrophe, colon and period are not
in it (periods have their own rule)."""

# The script's list: an unpunctuated contraction -> its spelling. Its keys are matched after
# lower-casing, so the capitalised ones ("Im", "Ive", "Id've") never match, as in the script;
# "somebody'd" -> "somebodyd" is the script's own (reversed) entry, kept so scores agree.
_CONTRACTIONS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at
'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's
somethingd something'd|somethingd've something'd've|something'dve something'd've|somethingll something'll
thats that's|thered there'd|thered've there'd've|there'dve there'd've|therere there're|theres there's
theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're|whats what's
whatve what've|whens when's|whered where'd|wheres where's|whereve where've|whod who'd|whod've who'd've
who'dve who'd've|wholl who'll|whos who's|whove who've|whyll why'll|whyre why're|whys why's|wont won't
wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split(" ") for pair in _CONTRACTIONS.replace("\n", "|").split("|") if pair)

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# a period not followed by a digit (the script's pattern also opens with "(?!<=\d)", a
# look-ahead that never matches before a period, so it adds nothing)
_PERIOD = re.compile(r"\.(?!\d)")
# the script passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go
_PERIOD_COUNT = 32


def strip_punctuation(text: str) -> str:
    """The script's punctuation step: a mark is deleted when it touches a space somewhere in
    the text (or the text has a digit-comma-digit), else replaced by a space; periods not
    followed by a digit are deleted.

    >>> strip_punctuation("yes!"), strip_punctuation("black-and-white"), strip_punctuation("1,000")
    ('yes ', 'black and white', '1000')
    """
    out = text
    for mark in PUNCTUATION:
        if f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA_DIGIT.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def normalize_words(text: str) -> str:
    """The script's word step: lower case, number words to digits, articles dropped,
    contractions restored, single spaces.

    >>> normalize_words("Two Dogs"), normalize_words("the dont")
    ('2 dogs', "don't")
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it.

    >>> normalize_vqa_answer("  A Red circle.\\n"), normalize_vqa_answer("Three"), normalize_vqa_answer("3.5")
    ('red circle', '3', '3.5')
    """
    return normalize_words(strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def vqa_scores(response: str, answers: list[str]) -> dict[str, float]:
    """``{"exact_match", "vqa_accuracy"}`` of one response against the annotators' answers
    (see the module docstring).

    >>> vqa_scores("Two", ["2", "2", "3"])["exact_match"], round(vqa_scores("2", ["2"] * 3 + ["3"] * 7)["vqa_accuracy"], 3)
    (1.0, 0.9)
    """
    if not answers:
        raise ValueError("a VQA item needs at least one answer")
    given = normalize_vqa_answer(response)
    normalised = [normalize_vqa_answer(a) for a in answers]
    matches = sum(a == given for a in normalised)
    exact = float(matches > 0)
    if len(normalised) == 1:
        return {"exact_match": exact, "vqa_accuracy": exact}
    # leave each annotator out in turn; the others' matches, capped at 3, out of 3
    accuracy = sum(min(1.0, (matches - (a == given)) / 3) for a in normalised) / len(normalised)
    return {"exact_match": exact, "vqa_accuracy": accuracy}


# -- the task -----------------------------------------------------------------------------------

def read_vqa(path: str | Path) -> list[dict[str, Any]]:
    """VQA rows -> docs ``{"id", "image", "question", "answers", "target"}`` (``image``
    resolved against the file's folder). A row without an image, a question or an answer
    is a ``DataError`` naming the file, the row and the field."""
    path = Path(path)
    docs = []
    for index, row in enumerate(read_task_rows(path)):
        where = dict(file=str(path), index=index)
        if not isinstance(row, dict):
            raise DataError("a VQA row must be an object", **where)
        answers = row.get("answers", [row["answer"]] if "answer" in row else None)
        if isinstance(answers, list):  # VQA's own annotations: [{"answer": ..., "answer_id": ...}]
            answers = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise DataError("needs 'answers' (a list of strings) or 'answer' (a string)", field="answers", **where,
                            hint='e.g. "answers": ["2", "two", "2"]')
        for key in ("image", "question"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(f"needs '{key}' (a string)", field=key, **where)
        ref = image_ref(row["image"], base_dir=path.parent, field="image", record=f"{path}[record {index}]")
        docs.append({"id": str(row.get("id", f"vqa-{index}")), "image": row["image"], "image_ref": ref,
                     "question": row["question"], "answers": answers, "target": answers[0],
                     **({"question_type": row["task"]} if isinstance(row.get("task"), str) else {})})
    return docs


@TASKS.register("vqa")
class Vqa(GenerationTask):
    """Visual question answering on a file of ``{image, question, answers}`` rows: exact
    match and VQA accuracy after the official normalisation (see the module docstring)."""

    name = "vqa"
    sampling = SamplingConfig(max_new_tokens=16)
    suffix = ""
    """Text after the question, e.g. "\\nAnswer the question using a single word or phrase."."""

    def docs(self, data_path: str | None = None) -> list[dict[str, Any]]:
        if data_path is None:
            raise DataError("task 'vqa' needs its data", hint="pass --tasks vqa=questions.jsonl (rows of "
                            '{"image", "question", "answers"})')
        return read_vqa(data_path)

    def prompt(self, doc: dict[str, Any]) -> VisualConversation:
        message = Message("user", f"{IMAGE_PLACEHOLDER}\n{doc['question']}{self.suffix}")
        return VisualConversation(Conversation([message], id=doc["id"]), [doc["image_ref"]])

    def score(self, doc: dict[str, Any], response: str) -> tuple[Any, dict[str, float]]:
        return normalize_vqa_answer(response), vqa_scores(response, doc["answers"])
