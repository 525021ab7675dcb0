"""Unpaired (KTO) rows in TRL's and LLaMA-Factory's layouts -> one ``UnpairedExample``; the
label must be a JSON boolean; bad rows name file, line and field."""
from __future__ import annotations

import json

import pytest

from sftlab.data.unpaired import parse_unpaired, read_unpaired
from sftlab.errors import DataError
from sftlab.types import Message


def test_llamafactory_kto_sample_reads_with_exact_counts(shared_data):
    path = shared_data / "formats" / "lf_kto_sample.json"
    raw = json.loads(path.read_text())
    info = json.loads((shared_data / "formats" / "lf_dataset_info_sample.json").read_text())
    tag = info["kto_en_demo"]["columns"]["kto_tag"]  # the column LLaMA-Factory reads the tag from
    desirable = sum(row[tag] is True for row in raw)
    undesirable = sum(row[tag] is False for row in raw)
    examples, skipped = read_unpaired(path)
    assert not skipped and len(examples) == len(raw) == desirable + undesirable
    assert sum(e.desirable for e in examples) == desirable
    assert sum(not e.desirable for e in examples) == undesirable
    for example, row in zip(examples, raw):
        assert example.completion == row["messages"][-1]["content"]
        assert [m.content for m in example.prompt] == [m["content"] for m in row["messages"][:-1]]
        assert example.prompt[-1].role == "user"


def test_trl_rows_as_strings_and_messages():
    text = parse_unpaired({"prompt": "2+2?", "completion": "4", "label": True, "id": "a"})
    assert (text.prompt, text.completion, text.desirable, text.id) == \
        ([Message("user", "2+2?")], "4", True, "a")
    messages = parse_unpaired({"prompt": [{"role": "system", "content": "Be terse."},
                                          {"role": "user", "content": "2+2?"}],
                               "completion": [{"role": "assistant", "content": "5"}],
                               "label": False})
    assert [m.role for m in messages.prompt] == ["system", "user"] and not messages.desirable


def test_sharegpt_conversations_with_kto_tag_and_system():
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                             {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
           "system": "Be brief.", "kto_tag": True}
    example = parse_unpaired(row)
    assert [m.role for m in example.prompt] == ["system", "user", "assistant", "user"]
    assert example.completion == "4" and example.desirable


@pytest.mark.parametrize("row, line, field, words", [
    ({"prompt": "2+2?", "completion": "4", "label": "true"}, 2, "label", "must be true or false"),
    ({"prompt": "2+2?", "completion": "4"}, 2, "label", "needs a boolean label"),
    ({"prompt": "", "completion": "4", "label": True}, 2, "prompt", "missing or empty"),
    ({"messages": [{"role": "user", "content": "2+2?"}], "label": True}, 2, "messages",
     "last turn must be the assistant"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, 2, None, "objective=dpo"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, line, field, words):
    good = {"prompt": "1+1?", "completion": "2", "label": True}
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as caught:
        read_unpaired(path)
    error = caught.value
    assert error.file == str(path) and error.line == line and words in str(error)
    assert field is None or error.field == field
    kept, skipped = read_unpaired(path, on_error="skip")
    assert len(kept) == 1 and sum(skipped.values()) == 1


def test_unpaired_rows_read_as_sft_say_to_train_them_with_kto(shared_data):
    from sftlab.data.io import read_conversations

    path = shared_data / "formats" / "lf_kto_sample.json"
    with pytest.raises(DataError, match=r"lf_kto_sample.json: the rows are KTO's unpaired examples: "
                                        r"\d+ of the first \d+ are marked undesirable.*objective=kto"):
        read_conversations(path)
    # the format given: read as plain conversations, every answer (the user asked for it)
    assert len(read_conversations(path, format="openai").conversations) == len(json.loads(path.read_text()))
