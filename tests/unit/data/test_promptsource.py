"""PromptSource (P3) templates: safe YAML loading, sandboxed rendering, answer choices."""
from __future__ import annotations

import gzip
import json

import pytest

from sftlab.data.promptsource import PromptTemplate, apply_promptsource, load_templates
from sftlab.errors import DataError

# HumanEval tasks whose tests have no `assert ... == ...` line: PromptSource's
# "function call return value generation" template renders nothing for them.
NO_EQUALITY_ASSERT = {4, 32, 52, 56, 61, 72}


@pytest.fixture(scope="module")
def humaneval(shared_data):
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        return [json.loads(line) for line in handle]


def templates_of(shared_data, dataset):
    return load_templates(shared_data / "promptsource" / dataset / "templates.yaml")


def test_loads_every_shared_template_file(shared_data):
    counts = {str(path.parent.relative_to(shared_data / "promptsource")): len(load_templates(path))
              for path in sorted((shared_data / "promptsource").rglob("templates.yaml"))}
    assert counts == {"ag_news": 7, "ai2_arc/ARC-Easy": 6, "glue/sst2": 5, "imdb": 11,
                      "openai_humaneval": 2, "super_glue/rte": 10}
    rte = templates_of(shared_data, "super_glue/rte")
    assert rte[0].dataset == "super_glue" and rte[0].subset == "rte"
    assert rte[0].metadata["choices_in_prompt"] is True and rte[0].metadata["metrics"] == ["Accuracy"]


def test_loader_refuses_arbitrary_python_objects(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text("dataset: x\ntemplates:\n  a: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DataError, match="not a PromptSource template file"):
        load_templates(path)


def test_humaneval_templates_on_all_164_problems(shared_data, humaneval):
    templates = templates_of(shared_data, "openai_humaneval")
    assert len(humaneval) == 164 and len(templates) == 2
    skipped = []
    conversations = apply_promptsource(humaneval, templates, skipped=skipped)
    # every pair renders, except the six problems the second template cannot use
    assert len(conversations) == 164 * 2 - len(NO_EQUALITY_ASSERT)
    assert {s["row"] for s in skipped} == NO_EQUALITY_ASSERT
    assert {s["template"] for s in skipped} == {"function call return value generation"}
    assert all(m.content.strip() for c in conversations for m in c.messages)
    by_template = {}
    for conversation in conversations:
        by_template.setdefault(conversation.meta["template"], []).append(conversation)
    body = by_template["function body generation"]
    assert len(body) == 164
    assert body[0].messages[0].content.endswith("Given the following docstring, what is the function body?")
    assert body[0].messages[1].content == humaneval[0]["canonical_solution"].strip()
    calls = by_template["function call return value generation"]
    assert calls[0].messages[0].content.rstrip().endswith("=")  # "entry_point(args) ="
    assert calls[0].messages[1].content in humaneval[0]["test"]


def test_random_choice_filter_is_seeded(shared_data, humaneval):
    template = templates_of(shared_data, "openai_humaneval")[1]
    row = humaneval[0]  # has several candidate asserts to choose from
    assert template.apply(row, seed=3) == template.apply(row, seed=3)
    outputs = {template.apply(row, seed=s).target for s in range(20)}
    assert len(outputs) > 1


def test_ag_news_answer_choices_and_target(shared_data):
    row = {"text": "Shares of the chip maker rose 5% after strong earnings.", "label": 2}
    templates = templates_of(shared_data, "ag_news")
    first = next(t for t in templates if t.name == "classify_question_first")
    rendered = first.apply(row)
    assert rendered.answer_choices == ["World politics", "Sports", "Business", "Science and technology"]
    assert rendered.target == "Business"
    assert rendered.input == "What label best describes this news article?\n" + row["text"]
    conversations = apply_promptsource([row], templates)
    assert len(conversations) == 7
    assert {c.messages[1].content for c in conversations} == {"Business", "Business executive"}
    assert all(c.meta["dataset"] == "ag_news" for c in conversations)


def test_answer_choices_rendered_from_the_row(shared_data):
    row = {"question": "Which of these is a gas at room temperature?", "answerKey": "B",
           "choices": {"text": ["ice", "steam", "wood", "iron"], "label": ["A", "B", "C", "D"]}}
    qa_options = next(t for t in templates_of(shared_data, "ai2_arc/ARC-Easy") if t.name == "qa_options")
    rendered = qa_options.apply(row)
    assert rendered.answer_choices == ["ice", "steam", "wood", "iron"]
    assert rendered.target == "steam"
    assert rendered.input.endswith("Options:\n- ice\n- steam\n- wood\n- iron")


def test_super_glue_unlabelled_rows_are_skipped(shared_data):
    templates = templates_of(shared_data, "super_glue/rte")
    labelled = {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "label": 1}
    test_row = {**labelled, "label": -1}  # the test split has no labels
    skipped = []
    conversations = apply_promptsource([labelled, test_row], templates, skipped=skipped)
    assert len(conversations) == 10 and len(skipped) == 10
    assert {s["reason"] for s in skipped} == {"empty target"}
    gpt3 = next(c for c in conversations if c.meta["template"] == "GPT-3 style")
    assert gpt3.messages[1].content == "False" and gpt3.meta["answer_choices"] == ["True", "False"]


def test_separator_inside_data_does_not_split(shared_data):
    template = templates_of(shared_data, "ag_news")[0]
    rendered = template.apply({"text": "a ||| b", "label": 0})
    assert rendered.input.endswith("a ||| b") and rendered.target == "World politics"


def test_sandbox_and_missing_fields_are_data_errors():
    escape = PromptTemplate("x", "escape", "{{ ''.__class__.__mro__[1].__subclasses__() }} ||| y")
    with pytest.raises(DataError, match="escape"):
        escape.apply({})
    missing = PromptTemplate("y", "needs text", "{{ text }} ||| {{ label }}")
    with pytest.raises(DataError, match="text"):
        missing.apply({"label": 1})


def test_apply_template_command(tmp_path, shared_data, capsys):
    from sftlab.cli import main

    out = tmp_path / "humaneval_p3.jsonl"
    code = main(["data", "apply-template", str(shared_data / "humaneval" / "HumanEval.jsonl.gz"),
                 "--promptsource", str(shared_data / "promptsource" / "openai_humaneval" / "templates.yaml"),
                 "-o", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 164 * 2 - len(NO_EQUALITY_ASSERT)
    assert rows[0]["meta"]["template"] == "function body generation"
    assert "left out 6" in capsys.readouterr().out


@pytest.mark.parametrize("jinja, message", [
    ("{{ 9**(9**8) }} ||| x", "too large"),
    ('{{ "ab" * 200000000 }} ||| x', "too large"),
    ('{{ "ab" * 2e8 }} ||| x', "can't multiply"),
    ("{{ ([1] * 10**9)|length }} ||| x", "too large"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %} ||| x", "passed 1000000 characters"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %} ||| x", "range"),
])
def test_render_bombs_fail_fast_naming_template_and_row(jinja, message):
    import time

    template = PromptTemplate(id="t", name="bomb", jinja=jinja)
    start = time.perf_counter()
    with pytest.raises(DataError, match=message) as caught:
        apply_promptsource([{"text": "a"}, {"text": "b"}], [template])
    assert time.perf_counter() - start < 1.0
    assert caught.value.index == 0 and caught.value.field == "bomb"


def test_max_chars_is_configurable():
    template = PromptTemplate(id="t", name="long", jinja="{{ 'x' * 50 }} ||| y")
    assert apply_promptsource([{}], [template], max_chars=60)[0].messages[0].content == "x" * 50
    with pytest.raises(DataError, match="passed 40 characters"):
        apply_promptsource([{}], [template], max_chars=40)
