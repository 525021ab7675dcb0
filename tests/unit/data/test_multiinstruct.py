"""MultiInstruct task rows (``sftlab.data.images.read_multiinstruct``): detection, template
expansion (one seeded template per row, or all), determinism, the errors that name the
file, line and field, and a sample file that trains through ``objective: vision``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.images import (TASK_TEMPLATES, check_images, detect_visual_format, has_images, read_multiinstruct,
                                read_templates, read_visual, read_visual_file)
from sftlab.data.visual_tasks import MULTIINSTRUCT_SAMPLE_TEMPLATES, write_multiinstruct_sample
from sftlab.errors import ConfigError, DataError

EXAMPLE = Path(__file__).parents[3] / "examples" / "data"
ROW = {"id": "q1", "task": "vqa", "image": "cat.png", "inputs": {"question": "What colour is it?"}, "output": "Red."}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_are_detected_by_task_and_inputs():
    assert detect_visual_format(ROW) == "multiinstruct"
    assert has_images(ROW)
    # a LLaVA row with a task tag (as sftlab.data.visual_tasks writes) stays LLaVA
    assert detect_visual_format({"task": "shape", "image": "a.png", "conversations": []}) == "llava"


def test_expand_all_fills_every_template_into_a_visual_conversation():
    examples = read_multiinstruct(ROW, TASK_TEMPLATES, expand="all", base_dir="/data")
    assert len(examples) == len(TASK_TEMPLATES["vqa"])
    for k, example in enumerate(examples):
        user, assistant = example.conversation.messages
        assert user.role == "user" and assistant.role == "assistant" and assistant.content == "Red."
        assert user.content == "<image>\n" + TASK_TEMPLATES["vqa"][k].format(question="What colour is it?")
        assert [ref.path for ref in example.images] == ["/data/cat.png"]
        assert example.id == f"q1-{k}"
        assert example.conversation.meta == {"task": "vqa", "template": k}
    assert len({e.conversation.messages[0].content for e in examples}) == len(examples)


def test_lists_are_joined_and_a_template_may_place_the_image_itself():
    row = {"task": "pick", "image": ["a.png", "b.png"], "inputs": {"options": ["cat", "dog"], "n": 2},
           "output": "cat"}
    templates = read_templates({"pick": ["First <image>, then <image>: which of {options} ({n})?"]})
    (example,) = read_multiinstruct(row, templates)
    assert example.conversation.messages[0].content == "First <image>, then <image>: which of cat, dog (2)?"
    assert [ref.path for ref in example.images] == ["a.png", "b.png"]
    # without the placeholder in the template: one <image> per image before it
    (example,) = read_multiinstruct(row, read_templates({"pick": "Which of {options}?"}))
    assert example.conversation.messages[0].content == "<image><image>\nWhich of cat, dog?"


def test_one_template_per_row_is_seeded_and_independent_of_file_order(tmp_path):
    rows = [{**ROW, "id": f"q{i}"} for i in range(24)]
    first, _ = read_visual_file(_write(tmp_path / "a.jsonl", rows), seed=0)
    again, _ = read_visual_file(_write(tmp_path / "b.jsonl", rows[::-1]), seed=0)
    other, _ = read_visual_file(_write(tmp_path / "c.jsonl", rows), seed=1)
    choice = {e.id: e.conversation.meta["template"] for e in first}
    assert choice == {e.id: e.conversation.meta["template"] for e in again}  # same seed, any order
    assert set(choice.values()) == set(range(len(TASK_TEMPLATES["vqa"])))  # the templates are all used
    assert choice != {e.id: e.conversation.meta["template"] for e in other}  # the seed decides
    assert [e.id for e in first] == [f"q{i}" for i in range(24)]


def test_expand_all_in_a_file_gives_ids_per_template(tmp_path):
    path = _write(tmp_path / "tasks.jsonl", [{k: v for k, v in ROW.items() if k != "id"}])
    examples, _ = read_visual_file(path, expand="all")
    assert [e.id for e in examples] == [f"tasks-0-{k}" for k in range(len(TASK_TEMPLATES["vqa"]))]
    assert {e.conversation.source for e in examples} == {"tasks.jsonl"}


def test_a_missing_slot_names_the_file_line_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [ROW, {**ROW, "id": "q2", "inputs": {"query": "Why?"}}])
    with pytest.raises(DataError) as caught:
        read_visual_file(path)
    error = caught.value
    assert error.file == str(path) and error.line == 2 and error.field == "inputs.question"
    assert error.reason == "missing_template_field" and "needs inputs.question" in str(error)
    examples, skipped = read_visual_file(path, on_error="skip")
    assert [e.id for e in examples] == ["q1"] and skipped == {"missing_template_field": 1}


def test_an_unknown_task_without_templates_names_the_file_line_and_field(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{**ROW, "task": "ocr"}])
    with pytest.raises(DataError, match="task 'ocr' has no instruction templates") as caught:
        read_visual_file(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 1, "task")
    # given templates for it, the same row reads
    examples, _ = read_visual_file(path, templates={"ocr": ["Read the text. {question}"]})
    assert examples[0].conversation.messages[0].content == "<image>\nRead the text. What colour is it?"


@pytest.mark.parametrize("row, field", [({**ROW, "inputs": "What?"}, "inputs"), ({**ROW, "output": 3}, "output"),
                                        ({**ROW, "inputs": {"question": {"a": 1}}}, "inputs.question")])
def test_bad_fields_are_named(row, field):
    with pytest.raises(DataError) as caught:
        read_multiinstruct(row, TASK_TEMPLATES)
    assert caught.value.field == field


def test_bad_templates_name_the_templates_file_and_entry(tmp_path):
    file = tmp_path / "templates.yaml"
    file.write_text("vqa:\n  - 'Answer {question'\n")
    with pytest.raises(DataError) as caught:
        read_templates(file)
    assert caught.value.file == str(file) and caught.value.field == "vqa[0]"
    with pytest.raises(DataError, match="not a plain name"):
        read_templates({"vqa": ["Answer {0}"]})
    with pytest.raises(DataError, match="non-empty list"):
        read_templates({"vqa": []})
    with pytest.raises(ConfigError, match="file not found"):
        read_templates(tmp_path / "missing.json")
    # a bad templates file is not a bad row: on_error=skip still stops
    path = _write(tmp_path / "rows.jsonl", [ROW])
    with pytest.raises(DataError):
        read_visual_file(path, templates=file, on_error="skip")


def test_prompt_rows_may_leave_out_the_output():
    from sftlab.data.formats import ReadOptions

    row = {k: v for k, v in ROW.items() if k != "output"}
    example = read_visual(row, options=ReadOptions(require_assistant=False))
    assert [m.role for m in example.conversation.messages] == ["user"]
    with pytest.raises(DataError) as caught:
        read_visual(row)
    assert caught.value.field == "output"


def test_the_example_sample_is_what_the_generator_writes_and_reads(tmp_path):
    written = write_multiinstruct_sample(tmp_path)
    for name in ("multiinstruct_sample.jsonl", "multiinstruct_templates.json", "images/mi-vqa.png"):
        assert (EXAMPLE / name).read_bytes() == (tmp_path / name).read_bytes(), name
    examples, skipped = read_visual_file(written["data"], templates=written["templates"])
    assert not skipped and len(examples) == 4
    assert {e.conversation.meta["task"] for e in examples} == {"vqa", "caption", "classification", "count"}
    count = next(e for e in examples if e.conversation.meta["task"] == "count")
    assert count.conversation.messages[0].content.removeprefix("<image>\n") in [
        t.format(shape="square") for t in MULTIINSTRUCT_SAMPLE_TEMPLATES["count"]]
    assert len(check_images(examples)) == 4  # every image opens
    with pytest.raises(DataError, match="task 'count' has no instruction templates"):
        read_visual_file(written["data"])  # its own task needs its templates file


def test_the_example_trains_through_objective_vision(tmp_path):
    from sftlab.config import build_config
    from sftlab.models.vision import load_vision_model
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": "vision", "model": {"name": "tiny"}, "output_dir": str(tmp_path / "run"), "plot": False,
        "progress": False, "batch_size": 4, "max_steps": 2, "optim": {"lr": 3e-3, "schedule": "constant"},
        "data": {"paths": [str(EXAMPLE / "multiinstruct_sample.jsonl")], "max_length": 128},
        "vision": {"templates": str(EXAMPLE / "multiinstruct_templates.json"), "expand_templates": "all"}})
    result = train(config)
    assert result.steps == 2 and all(row["loss"] > 0 for row in result.history if "loss" in row)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data_fingerprint"]
    model, tokenizer = load_vision_model(result.saved_to)
    assert tokenizer.convert_tokens_to_ids("<image>") == model.settings.image_token_id
