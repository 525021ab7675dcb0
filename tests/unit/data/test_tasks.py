"""Self-Instruct seed tasks and Super-NaturalInstructions task files -> conversations."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sftlab.data.formats import FORMATS, detect_format
from sftlab.data.tasks import (
    is_self_instruct_row,
    is_superni_task,
    read_self_instruct,
    read_superni_task,
    superni_prefix,
)
from sftlab.errors import DataError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "superni"
YES_NO = FIXTURES / "task_yes_no_question.json"


def seed_rows(shared_data):
    path = shared_data / "self_instruct" / "seed_tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row_instruction(rows, row_id):
    return next(row["instruction"] for row in rows if row["id"] == row_id)


# -- Self-Instruct ---------------------------------------------------------------------------


def test_self_instruct_file_gives_one_conversation_per_task(shared_data):
    from sftlab.data.io import read_conversations

    result = read_conversations(shared_data / "self_instruct" / "seed_tasks.jsonl")
    assert result.format == "self_instruct"  # detected, not passed
    assert len(result.conversations) == 175
    assert len({c.id for c in result.conversations}) == 175
    classification = [c for c in result.conversations if c.meta["is_classification"]]
    assert len(classification) == 26  # as flagged in the file
    rows = seed_rows(shared_data)
    without_input = [c for c, row in zip(result.conversations, rows) if not row["instances"][0]["input"]]
    assert len(without_input) == 50
    # no input: the user turn is the instruction alone
    assert all(c.messages[0].content == row_instruction(rows, c.id).strip() for c in without_input)
    assert all(c.meta["task"] for c in result.conversations)


def test_self_instruct_user_turn_joins_instruction_and_input(shared_data):
    rows = {row["id"]: row for row in seed_rows(shared_data)}
    [with_input] = read_self_instruct(rows["seed_task_1"])
    assert with_input.messages[0].content == (
        "What is the relation between the given pairs?\n\nNight : Day :: Right : Left")
    assert with_input.messages[1].content == "The relation between the given pairs is that they are opposites."
    assert with_input.meta == {"task": "antonym_relation", "is_classification": False, "instance": 0}
    [without_input] = read_self_instruct(rows["seed_task_0"])
    assert without_input.messages[0].content == rows["seed_task_0"]["instruction"]


def test_self_instruct_expands_every_instance_on_request():
    row = {"id": "t", "name": "n", "instruction": "Add.", "is_classification": False,
           "instances": [{"input": "1+1", "output": "2"}, {"input": "2+2", "output": "4"}]}
    assert len(read_self_instruct(row)) == 1
    expanded = read_self_instruct(row, SimpleNamespace(expand_instances=True))
    assert [c.id for c in expanded] == ["t-0", "t-1"]
    assert [c.messages[1].content for c in expanded] == ["2", "4"]


def test_self_instruct_bad_row_names_the_field():
    with pytest.raises(DataError) as error:
        read_self_instruct({"instruction": "x", "instances": [{"input": "a"}], "is_classification": False})
    assert error.value.field == "instances[0].output"
    with pytest.raises(DataError, match="instances"):
        read_self_instruct({"instruction": "x", "instances": [], "is_classification": False})


def test_detectors(shared_data):
    rows = seed_rows(shared_data)[:8]
    assert all(is_self_instruct_row(row) for row in rows)
    assert detect_format(rows) == "self_instruct"
    task = json.loads(YES_NO.read_text())
    assert is_superni_task(task) and not is_self_instruct_row(task)
    assert not is_superni_task(rows[0])
    assert {"self_instruct", "superni"} <= set(FORMATS.names())


# -- Super-NaturalInstructions ---------------------------------------------------------------


def test_superni_one_conversation_per_instance_target_is_first_output():
    conversations = read_superni_task(YES_NO)
    assert [c.id for c in conversations] == [
        "task_yes_no_question-1a2b", "task_yes_no_question-3c4d", "task_yes_no_question-5e6f"]
    second = conversations[1]
    assert second.messages[1].content == "no"
    assert second.meta["references"] == ["no", "No"]
    assert second.meta["task"] == "task_yes_no_question"
    assert second.source == "task_yes_no_question.json"


def test_superni_renders_tk_instruct_encoding():
    first = read_superni_task(YES_NO, k=1)[0].messages[0].content
    assert first == (
        'Definition: In this task, you are given a statement about everyday physics. Answer "yes" if '
        'the statement is true and "no" if it is false.\n\n'
        "Positive Example 1 -\nInput: Ice floats on liquid water.\nOutput: yes.\n\n"
        "Now complete the following example -\nInput: Sound travels faster in steel than in air.\nOutput:")


def test_superni_k_negatives_and_explanations_are_configurable():
    task = json.loads(YES_NO.read_text())
    zero = superni_prefix(task, k=0)
    assert "Example" not in zero and zero.startswith("Definition: ")
    two = superni_prefix(task, k=2)
    assert "Positive Example 2 -" in two and "Positive Example 3" not in two
    assert "Explanation" not in two and "Negative" not in two
    full = superni_prefix(task, k=2, negative=1, explanation=True)
    assert "Explanation: Ice is less dense than liquid water, so it floats.\n" in full
    assert "Negative Example 1 -\nInput: Water boils at 100 degrees Celsius at sea level.\nOutput: true.\n" in full
    # Tk-Instruct's own strings carry a stray leading space; tk_spacing reproduces them
    assert " Positive Example 1 -\nInput: Ice floats on liquid water.\n Output: yes.\n" in superni_prefix(
        task, k=1, tk_spacing=True)


def test_superni_reader_in_registry_reads_a_task_object():
    task = json.loads((FIXTURES / "task_word_reverse.json").read_text())
    conversations = FORMATS.get("superni")(task, SimpleNamespace(num_positive_examples=1))
    assert len(conversations) == 2
    prompt = conversations[0].messages[0].content
    assert prompt.count("Positive Example") == 1
    assert prompt.endswith("Input: one two three.\nOutput:")
    assert conversations[0].messages[1].content == "three two one"


def test_superni_bad_task(tmp_path):
    task = json.loads(YES_NO.read_text())
    task["Instances"][1]["output"] = []
    path = tmp_path / "task_bad.json"
    path.write_text(json.dumps(task))
    with pytest.raises(DataError) as error:
        read_superni_task(path)
    assert error.value.file == str(path) and error.value.index == 1
    path.write_text(json.dumps([task]))
    with pytest.raises(DataError, match="not a Super-NaturalInstructions task"):
        read_superni_task(path)
