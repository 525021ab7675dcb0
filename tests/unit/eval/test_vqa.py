"""The VQA task: the official script's answer normalisation item by item, VQA accuracy, the
reader's errors, and the task run by the eval runner (precomputed responses and a tiny
vision model; a text-only model refuses the images)."""
from __future__ import annotations

import json

import pytest

from sftlab.errors import DataError
from sftlab.eval.runner import EvalConfig, evaluate
from sftlab.eval.vqa import normalize_vqa_answer, read_vqa, strip_punctuation, vqa_scores
from sftlab.infer.hf import ImagesNotSupported

# (raw answer, what the official vqaEval.py compares) -- each worked through its steps:
# newline/tab -> space, strip, processPunctuation, processDigitArticle
OFFICIAL = [
    ("Yes", "yes"),
    ("two", "2"),                          # number words -> digits
    ("Two dogs", "2 dogs"),
    ("none", "0"),                         # "none" counts as zero in the script
    ("ten", "10"),
    ("eleven", "eleven"),                  # the map stops at ten
    ("a dog", "dog"),                      # articles dropped
    ("The cat.", "cat"),                   # ... and the final period
    ("an apple", "apple"),
    ("dont", "don't"),                     # unpunctuated contractions restored
    ("whats that", "what's that"),
    ("Im", "im"),                          # capitalised keys never match after lower-casing
    ("somebody'd", "somebodyd"),           # the script's reversed entry
    ("it's", "it's"),                      # apostrophes are not punctuation there
    ("10:30", "10:30"),                    # nor colons
    ("3.5", "3.5"),                        # a period before a digit stays
    ("1,000", "1000"),                     # digit,digit: every mark is deleted, not spaced
    ("1,000 people, yes", "1000 people yes"),
    ("black-and-white", "black and white"),  # a mark touching no space becomes a space
    ("black - white", "black white"),      # ... one touching a space is deleted
    ("hello, world", "hello world"),
    ("yes!", "yes"),
    ("a/b", "b"),                          # "/" -> space, then "a" is an article
    ("(red)", "red"),
    ("A\nB", "b"),                         # newline -> space; "a" dropped
    ("\tRed  Circle \n", "red circle"),
]


@pytest.mark.parametrize("raw, expected", OFFICIAL)
def test_normalisation_matches_the_official_script(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_at_most_32_periods_go():
    # the script passes re.UNICODE (32) as re.sub's count
    assert strip_punctuation("x" + "." * 40) == "x" + "." * 8


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_averages_over_leave_one_out_subsets(matches, expected):
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_scores("two", answers)["vqa_accuracy"] == pytest.approx(expected)
    assert vqa_scores("two", answers)["exact_match"] == float(matches > 0)


def test_single_answer_accuracy_is_exact_match():
    assert vqa_scores("A Circle.", ["circle"]) == {"exact_match": 1.0, "vqa_accuracy": 1.0}
    assert vqa_scores("square", ["circle"]) == {"exact_match": 0.0, "vqa_accuracy": 0.0}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, field", [
    ({"image": "a.png", "question": "Q?"}, "answers"),
    ({"image": "a.png", "question": "Q?", "answers": [1]}, "answers"),
    ({"question": "Q?", "answer": "x"}, "image"),
    ({"image": "a.png", "answer": "x"}, "question"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, field):
    path = _write(tmp_path / "q.jsonl", [{"image": "a.png", "question": "Q?", "answer": "x"}, row])
    with pytest.raises(DataError) as caught:
        read_vqa(path)
    assert caught.value.field == field and str(path) in str(caught.value) and "1" in str(caught.value)


def test_official_annotation_dicts_are_read(tmp_path):
    path = _write(tmp_path / "q.jsonl", [{"image": "a.png", "question": "Q?",
                                          "answers": [{"answer": "2", "answer_id": 1}, {"answer": "two", "answer_id": 2}]}])
    doc = read_vqa(path)[0]
    assert doc["answers"] == ["2", "two"] and doc["image_ref"].path == str(tmp_path / "a.png")


@pytest.fixture(scope="module")
def vqa_file(tmp_path_factory):
    from sftlab.data.visual_tasks import generate_visual_tasks

    folder = tmp_path_factory.mktemp("vqa")
    items = generate_visual_tasks(n_train=0, n_eval=4, seed=0)["heldout_template"]
    rows = []
    for i, item in enumerate(items):
        item.image.save(folder / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"{i}.png", "question": item.question, "answers": [item.answer]})
    return _write(folder / "vqa.jsonl", rows), items


def test_runner_scores_precomputed_responses(tmp_path, vqa_file):
    path, items = vqa_file
    responses = _write(tmp_path / "responses.jsonl", [
        {"id": "q0", "response": f"The {items[0].answer.upper()}."},  # right after normalisation
        {"id": "q1", "response": "a " + items[1].answer}, {"id": "q2", "response": "no idea"},
        {"id": "q3", "response": "wrong"}])
    results = evaluate(EvalConfig(tasks=[f"vqa={path}"], responses=str(responses)), progress=False)
    metrics = results["tasks"]["vqa"]["metrics"]
    assert metrics["exact_match"]["mean"] == 0.5 and metrics["exact_match"]["n"] == 4
    assert 0 <= metrics["exact_match"]["low"] <= 0.5 <= metrics["exact_match"]["high"] <= 1


def test_runner_on_a_tiny_vision_model_and_a_text_model(tmp_path, vqa_file):
    from sftlab.models.vision import save_tiny_vision

    path, _ = vqa_file
    model_dir = save_tiny_vision(tmp_path / "vision")
    out = tmp_path / "out"
    results = evaluate(EvalConfig(model=str(model_dir), tasks=[f"vqa={path}"], output_dir=str(out),
                                  max_new_tokens=4), progress=False)
    assert results["tasks"]["vqa"]["metrics"]["vqa_accuracy"]["n"] == 4
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].startswith("<|im_start|>user\n<image>\n")  # rendered as the model saw it
    assert all(s["extracted"] == normalize_vqa_answer(s["output"]) for s in samples)
    with pytest.raises(ImagesNotSupported, match="text-only"):
        evaluate(EvalConfig(model="tiny", tasks=[f"vqa={path}"]), progress=False)
