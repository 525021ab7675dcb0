"""Flan/P3-style data integration: task specs, templates, few-shot, held-out, capped mixing."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from sftlab.data.templates import TASKS, TaskSpec, Template, integrate, mix_tasks, render
from sftlab.errors import ConfigError, DataError

REVIEWS = [
    {"sentence": "a gripping, funny film", "label": 1},
    {"sentence": "dull, long and forgettable", "label": 0},
    {"sentence": "the best thing I saw this year", "label": 1},
    {"sentence": "I walked out after an hour", "label": 0},
    {"sentence": "warm, clever and well acted", "label": 1},
    {"sentence": "a mess from start to finish", "label": 0},
]


@pytest.fixture(scope="module")
def gsm8k_train(shared_data):
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]
    return [json.loads(line) for line in lines]


def test_zero_shot_classification_lists_the_options():
    sentiment = TASKS.get("sentiment")
    prompt, target = render(sentiment, sentiment.templates[0], REVIEWS[0])
    assert prompt == ("a gripping, funny film\nWhat is the sentiment of this review?\n"
                      "OPTIONS:\n- negative\n- positive")
    assert target == "positive"
    prompt, _ = render(sentiment, sentiment.templates[0], REVIEWS[0], options_in_prompt=False)
    assert "OPTIONS" not in prompt and prompt.endswith("review?")


def test_options_are_appended_when_the_template_has_no_placeholder():
    task = TaskSpec("yn", "label", [Template("yn-0", "Is it? {text}")], labels=["yes", "no"],
                    kind="classification")
    assert render(task, task.templates[0], {"text": "x", "label": "no"}) == (
        "Is it? x\nOPTIONS:\n- yes\n- no", "no")


def test_held_out_templates_are_separate():
    sentiment = TASKS.get("sentiment")
    train = integrate(REVIEWS, sentiment, templates="train", per_row="all")
    held_out = integrate(REVIEWS, sentiment, templates="held_out", per_row="all")
    train_ids = {c.meta["template_id"] for c in train}
    held_ids = {c.meta["template_id"] for c in held_out}
    assert train_ids == {t.id for t in sentiment.templates if not t.held_out}
    assert held_ids == {"sentiment-4"} and not train_ids & held_ids
    assert all(c.meta["held_out"] for c in held_out) and not any(c.meta["held_out"] for c in train)
    assert len(train) == len(REVIEWS) * 4
    every = integrate(REVIEWS, "sentiment", templates="all", per_row="all")
    assert len(every) == len(REVIEWS) * len(sentiment.templates)


def test_one_template_per_row_is_deterministic_by_seed():
    first = integrate(REVIEWS * 5, "sentiment", seed=0)
    again = integrate(REVIEWS * 5, "sentiment", seed=0)
    other = integrate(REVIEWS * 5, "sentiment", seed=1)
    ids = [c.meta["template_id"] for c in first]
    assert ids == [c.meta["template_id"] for c in again]
    assert ids != [c.meta["template_id"] for c in other]
    assert len(set(ids)) > 1 and "sentiment-4" not in ids


def test_few_shot_exemplars_come_from_other_rows():
    conversations = integrate(REVIEWS, "sentiment", templates=["sentiment-1"], few_shot=2, seed=0)
    for index, conversation in enumerate(conversations):
        shots = conversation.meta["exemplars"]
        assert len(shots) == 2 and index not in shots
        prompt = conversation.messages[0].content
        for shot in shots:
            assert f"Review: {REVIEWS[shot]['sentence']}\n" in prompt
        assert prompt.count("OPTIONS:") == 3  # two exemplars and the question
        assert prompt.endswith(f"Review: {REVIEWS[index]['sentence']}\nIs this review positive or negative?\n"
                               "OPTIONS:\n- negative\n- positive")
    assert conversations[0].meta["exemplars"] == integrate(
        REVIEWS, "sentiment", templates=["sentiment-1"], few_shot=2, seed=0)[0].meta["exemplars"]


def test_few_shot_as_turns():
    [conversation] = integrate(REVIEWS[:1], "sentiment", templates=["sentiment-0"], few_shot=2,
                               exemplar_rows=REVIEWS[1:], few_shot_as_turns=True)
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 3
    assert conversation.messages[1].content in ("positive", "negative")
    assert conversation.messages[-1].content == "positive"


def test_qa_task_on_gsm8k(gsm8k_train):
    conversations = integrate(gsm8k_train, "gsm8k", per_row="all", templates="train")
    assert len(conversations) == 300 * 3
    first = conversations[0]
    assert first.messages[0].content == gsm8k_train[0]["question"].strip()
    assert first.messages[1].content == gsm8k_train[0]["answer"].strip()
    assert "OPTIONS" not in first.messages[0].content


def test_mix_tasks_caps_each_task(gsm8k_train):
    mixed = mix_tasks({"gsm8k": gsm8k_train, "sentiment": REVIEWS}, cap=100, seed=0)
    assert Counter(c.meta["task"] for c in mixed) == {"gsm8k": 100, "sentiment": 6}
    again = mix_tasks({"gsm8k": gsm8k_train, "sentiment": REVIEWS}, cap=100, seed=0)
    assert [c.id for c in mixed] == [c.id for c in again]
    uncapped = mix_tasks({"gsm8k": gsm8k_train, "sentiment": REVIEWS}, cap=None)
    assert len(uncapped) == 306


def test_errors_name_what_is_wrong():
    with pytest.raises(DataError, match="out of range"):
        integrate([{"sentence": "x", "label": 7}], "sentiment")
    with pytest.raises(DataError, match="sentence"):
        integrate([{"text": "x", "label": 1}], "sentiment")
    with pytest.raises(ConfigError, match="no template 'sentiment-9'"):
        integrate(REVIEWS, "sentiment", templates=["sentiment-9"])
    with pytest.raises(ConfigError, match="few_shot=9"):
        integrate(REVIEWS, "sentiment", few_shot=9)
    with pytest.raises(ConfigError, match="did you mean 'sentiment'"):
        integrate(REVIEWS, "sentimnet")


def test_apply_template_command_renders_held_out_templates(tmp_path):
    from sftlab.cli import main

    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in REVIEWS))
    out = tmp_path / "eval.jsonl"
    assert main(["data", "apply-template", str(data), "--task", "sentiment", "--templates", "held_out",
                 "--few-shot", "1", "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(REVIEWS)
    assert {row["meta"]["template_id"] for row in rows} == {"sentiment-4"}
    assert all(row["meta"]["few_shot"] == 1 for row in rows)
