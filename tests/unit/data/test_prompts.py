"""The one prompt-file reader: every row format, ids, raw text, the kept system turn, errors."""
import json

import pytest

from sftlab.data.io import read_conversations
from sftlab.data.prompts import prompt_format, read_prompts
from sftlab.errors import DataError
from sftlab.types import Message


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _turns(prompt):
    return [(m.role, m.content) for m in prompt.messages]


@pytest.mark.parametrize("row, turns", [
    ({"instruction": "Add the numbers.", "input": "2 and 3"}, [("user", "Add the numbers.\n\n2 and 3")]),
    ({"instruction": "Add.", "input": "2, 3", "output": "5", "system": "Be brief."},
     [("system", "Be brief."), ("user", "Add.\n\n2, 3")]),
    ({"instruction": "Hi", "context": "a greeting"}, [("user", "Hi\n\na greeting")]),
    ({"prompt": "Once upon a time"}, [("user", "Once upon a time")]),
    ({"prompt": [{"role": "user", "content": "Hi"}]}, [("user", "Hi")]),
    ({"prompt": "p", "completion": "c"}, [("user", "p")]),
    ({"inputs": "Is the sky blue?"}, [("user", "Is the sky blue?")]),
    ({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "x"},
                        {"from": "gpt", "value": "y"}]}, [("system", "s"), ("user", "x")]),
    ({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                   {"role": "assistant", "content": "d"}]},
     [("system", "Be brief."), ("user", "a"), ("assistant", "b"), ("user", "c")]),
])
def test_every_format_gives_the_conversation_up_to_the_last_user_turn(tmp_path, row, turns):
    [prompt] = read_prompts(_write(tmp_path / "p.jsonl", [row]))
    assert _turns(prompt) == turns
    assert prompt.text == turns[-1][1] and prompt.row == row


def test_self_instruct_seed_keeps_the_instance_input(tmp_path):
    """A "rewrite the given text" task must reach the model with its text."""
    seed = {"id": "seed_task_7", "name": "formal", "instruction": "Rewrite the text formally.",
            "instances": [{"input": "gonna be late, sry", "output": "I will be late; my apologies."}],
            "is_classification": False}
    no_output = {"instruction": "Rewrite the text.", "instances": [{"input": "hey"}]}
    first, second = read_prompts(_write(tmp_path / "seed.jsonl", [seed, no_output]))
    assert (first.id, _turns(first)) == ("seed_task_7", [("user", "Rewrite the text formally.\n\ngonna be late, sry")])
    assert _turns(second) == [("user", "Rewrite the text.\n\nhey")]


def test_raw_text_only_for_prompt_strings(tmp_path):
    rows = [{"id": "a", "prompt": "The cat"}, {"id": "b", "messages": [{"role": "user", "content": "Hi"}]}]
    raw, chat = read_prompts(_write(tmp_path / "p.jsonl", rows))
    assert raw.raw == "The cat" and raw.prompt == "The cat"
    assert chat.raw is None and chat.prompt == [Message("user", "Hi")]


def test_ids_are_the_rows_or_file_stem_and_index_like_read_conversations(tmp_path):
    rows = [{"id": 7, "instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"},
            {"id": "q", "instruction": "c", "output": "z"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    assert [p.id for p in read_prompts(path)] == ["7", "alpaca-1", "q"]
    assert [p.id for p in read_prompts(path)] == [c.id for c in read_conversations(path).conversations]


def test_one_file_may_mix_formats_and_skip_blank_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"instruction": "b"}\n{"messages": [{"role": "user", "content": "c"}]}\n')
    assert [(p.id, p.text) for p in read_prompts(path)] == [("mixed-0", "a"), ("mixed-1", "b"), ("mixed-2", "c")]


@pytest.mark.parametrize("line, field, message", [
    ('{"id": 1}', None, "no prompt in this row"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "unknown role 'bot'"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "messages[0].role", "user was expected"),
    ('{"instruction": "  "}', None, "empty prompt"),
    ('{"instruction": 3}', "instruction", r"expected a string, got a number \(3\)"),
    ("{oops", None, "invalid JSON"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, field, message):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=message) as caught:
        read_prompts(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 2, field)


def test_prompt_format_prefers_the_data_file_detectors():
    assert prompt_format({"instruction": "i", "output": "o"}) == "alpaca"
    assert prompt_format({"instruction": "i", "instances": [], "is_classification": True}) == "self_instruct"
    assert prompt_format({"instruction": "i", "instances": []}) == "self_instruct"
    assert prompt_format([{"role": "user", "content": "u"}]) == "openai"
