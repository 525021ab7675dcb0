"""The file driver and writers: real files load exactly, errors name file+line+field,
skip counts per reason, and read -> write -> read is the identity."""
from __future__ import annotations

import gzip
import json

import pytest

from sftlab.data.formats import detect_format
from sftlab.data.io import iter_records, read_conversations, write_conversations
from sftlab.errors import ConfigError, DataError

REAL_FILES = {  # file -> (format, conversations)
    "alpaca_en_demo.json": ("alpaca", 999),
    "sharegpt_dummy_conversation.json": ("sharegpt", 500),
    "oasst_en_100_tree.jsonl": ("oasst", 546),  # 546 threads from 100 trees
}


@pytest.fixture(scope="module")
def real(shared_data):
    """Each real file read once: name -> ReadResult."""
    return {name: read_conversations(shared_data / "formats" / name) for name in REAL_FILES}


@pytest.mark.parametrize("name", list(REAL_FILES))
def test_real_files_load_exactly_with_detected_format(real, name):
    format, count = REAL_FILES[name]
    result = real[name]
    assert result.format == format
    assert len(result.conversations) == count
    assert not result.skipped and not result.errors
    ids = [conversation.id for conversation in result.conversations]
    assert len(set(ids)) == len(ids)  # stable ids are unique
    assert {conversation.source for conversation in result.conversations} == {name}


@pytest.mark.parametrize("name", list(REAL_FILES))
def test_detection_from_first_rows_of_each_real_file(shared_data, name):
    rows = [record.value for _, record in zip(range(5), iter_records(shared_data / "formats" / name))]
    assert detect_format(rows) == REAL_FILES[name][0]


def test_real_file_counts_and_ids(real, shared_data):
    assert real["alpaca_en_demo.json"].records == 999
    assert real["alpaca_en_demo.json"].conversations[0].id == "alpaca_en_demo-0"
    assert real["alpaca_en_demo.json"].conversations[998].id == "alpaca_en_demo-998"
    assert real["sharegpt_dummy_conversation.json"].conversations[0].id == "identity_0"
    oasst = real["oasst_en_100_tree.jsonl"]
    assert oasst.records == 100
    assert oasst.conversations[0].id == "054e1df3-35e0-4bb8-a585-607dbdcd24e0-0"
    assert sum(c.turns for c in oasst.conversations) == 903
    best = read_conversations(shared_data / "formats" / "oasst_en_100_tree.jsonl", oasst_best_path=True)
    assert len(best.conversations) == 100
    assert len({c.meta["message_tree_id"] for c in best.conversations}) == 100


def test_sharegpt_real_turn_structure(real):
    first = real["sharegpt_dummy_conversation.json"].conversations[0]
    assert [m.role for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert first.messages[0].content == "Who are you?"


# --- bad input ----------------------------------------------------------------------------

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
BAD_ALPACA = [  # (line text, field, reason)
    ('{"instruction": "Say hi.", "output": ', None, "invalid json"),
    (json.dumps({"instruction": "Say hi.", "input": ""}), "output", "missing field"),
    (json.dumps({"instruction": ["Say", "hi"], "input": "", "output": "Hi!"}), "instruction", "wrong type"),
    (json.dumps({"instruction": "Say hi.", "input": "", "output": "   "}), "output", "empty assistant turn"),
]
BAD_SHAREGPT = [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
     "conversations[1].from", "unknown role"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hi?"},
                        {"from": "gpt", "value": "Hello"}]}, "conversations[1].from", "roles do not alternate"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": 42}]},
     "conversations[1].value", "wrong type"),
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("text, field, reason", BAD_ALPACA)
def test_fail_names_file_line_and_field(tmp_path, text, field, reason):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), "", text])
    with pytest.raises(DataError) as caught:
        read_conversations(path, format="alpaca")
    error = caught.value
    assert (error.file, error.line, error.field, error.reason) == (str(path), 3, field, reason)
    assert str(error).startswith(f"{path}:3: ") and "(fix: " in str(error)
    if field:
        assert f"field '{field}'" in str(error)


@pytest.mark.parametrize("row, field, reason", BAD_SHAREGPT)
def test_sharegpt_errors_name_line_and_field(tmp_path, row, field, reason):
    good = {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(good), json.dumps(row)])
    with pytest.raises(DataError) as caught:
        read_conversations(path)  # detected from the first rows
    assert (caught.value.line, caught.value.field, caught.value.reason) == (2, field, reason)
    assert str(path) in str(caught.value)


def test_skip_counts_every_bad_record_per_reason(tmp_path):
    lines = [json.dumps(GOOD)] + [text for text, _, _ in BAD_ALPACA] + [json.dumps(GOOD), BAD_ALPACA[0][0]]
    path = write_lines(tmp_path / "train.jsonl", lines)
    result = read_conversations(path, format="alpaca", on_error="skip")
    assert len(result.conversations) == 2 and result.records == 7
    assert dict(result.skipped) == {"invalid json": 2, "missing field": 1, "wrong type": 1,
                                    "empty assistant turn": 1}
    assert sum(result.skipped.values()) + len(result.conversations) == result.records  # nothing silent
    assert [error.line for error in result.errors] == [2, 3, 4, 5, 7]
    assert [c.id for c in result.conversations] == ["train-0", "train-5"]  # index counts every record


def test_json_array_errors_carry_the_record_index(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "x", "input": ""}]))
    with pytest.raises(DataError) as caught:
        read_conversations(path)
    assert (caught.value.index, caught.value.line, caught.value.field) == (2, None, "output")
    assert f"{path}[record 2]" in str(caught.value)


def test_broken_json_array_fails_with_line_even_when_skipping(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"instruction": "x", "output": "y"},\n {"instruction": }\n]')
    with pytest.raises(DataError) as caught:
        read_conversations(path, on_error="skip")
    assert caught.value.line == 3 and caught.value.reason == "invalid json"


def test_undetectable_file_says_pass_format(tmp_path):
    path = write_lines(tmp_path / "qa.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    with pytest.raises(DataError, match="pass --format"):
        read_conversations(path)


def test_options_are_checked(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ConfigError, match="oasst_best_pth"):
        read_conversations(path, oasst_best_pth=True)
    with pytest.raises(ConfigError, match="on_error"):
        read_conversations(path, on_error="ignore")


def test_oasst_drops_are_counted_in_the_result(tmp_path):
    root = {"message_id": "q", "role": "prompter", "text": "Q", "review_result": True, "deleted": False, "replies": [
        {"message_id": "a", "role": "assistant", "text": "A", "review_result": True, "deleted": True, "replies": []},
        {"message_id": "b", "role": "assistant", "text": "B", "review_result": True, "deleted": False, "replies": []}]}
    path = write_lines(tmp_path / "trees.jsonl", [json.dumps({"message_tree_id": "t", "prompt": root})])
    result = read_conversations(path)
    assert [c.id for c in result.conversations] == ["t-0"] and dict(result.dropped) == {"oasst deleted message": 1}


# --- file kinds -----------------------------------------------------------------------------

def test_gzip_jsonl_json_lines_named_json_and_single_object(tmp_path):
    rows = [GOOD, {**GOOD, "output": "Hello!"}]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(row) for row in rows))
    with gzip.open(tmp_path / "b.json.gz", "wt") as handle:
        json.dump(rows, handle)
    write_lines(tmp_path / "c.json", [json.dumps(row) for row in rows])
    (tmp_path / "d.json").write_text(json.dumps(GOOD, indent=2))
    outputs = {name: [m.content for c in read_conversations(tmp_path / name).conversations for m in c.messages]
               for name in ("a.jsonl.gz", "b.json.gz", "c.json")}
    assert all(value == ["Say hi.", "Hi!", "Say hi.", "Hello!"] for value in outputs.values())
    assert read_conversations(tmp_path / "a.jsonl.gz").conversations[1].id == "a-1"
    assert len(read_conversations(tmp_path / "d.json").conversations) == 1


# --- writers: read -> write -> read ---------------------------------------------------------

def comparable(conversations):
    return [(c.id, c.messages, c.meta) for c in conversations]


@pytest.mark.parametrize("name", list(REAL_FILES))
@pytest.mark.parametrize("to, suffix", [("canonical", ".jsonl"), ("alpaca", ".json"), ("sharegpt", ".json"),
                                        ("openai", ".jsonl.gz")])
def test_round_trip(real, tmp_path, name, to, suffix):
    original = real[name].conversations
    path = tmp_path / f"out{suffix}"
    assert write_conversations(original, path, to) == len(original)
    again = read_conversations(path)
    assert again.format == {"canonical": "canonical", "alpaca": "alpaca", "sharegpt": "sharegpt",
                            "openai": "openai"}[to]
    assert comparable(again.conversations) == comparable(original)
    if to == "canonical":
        assert [c.source for c in again.conversations] == [c.source for c in original]


def test_alpaca_writer_puts_earlier_turns_in_history(real, tmp_path):
    conversation = real["sharegpt_dummy_conversation.json"].conversations[0]
    write_conversations([conversation], tmp_path / "a.json", "alpaca")
    [row] = json.loads((tmp_path / "a.json").read_text())
    assert row == {"id": "identity_0", "instruction": "Have a nice day!", "input": "", "output": "You too!",
                   "history": [["Who are you?", conversation.messages[1].content]]}


def test_unknown_output_format(tmp_path):
    with pytest.raises(ConfigError, match="unknown output format"):
        write_conversations([], tmp_path / "x.jsonl", "csv")


def test_a_record_that_is_no_object_is_named_in_json_words(tmp_path):
    path = tmp_path / "bare.json"
    path.write_text('[{"instruction": "a", "output": "b"}, 5]')
    with pytest.raises(DataError) as caught:
        read_conversations(path)
    # the record is at fault, not a field of it
    assert (caught.value.index, caught.value.field) == (1, None)
    assert "expected an object, got a number (5)" in str(caught.value)
