"""Per-message loss weights (OpenAI ``weight``, LLaMA-Factory v1 ``loss_weight``, Axolotl
``train``) and content given as a list of text parts."""
from __future__ import annotations

import json

import pytest

from sftlab.data.chat import format_mask, render, tokenize_conversations, trained_segments
from sftlab.data.formats import parse_messages
from sftlab.data.io import read_conversations, write_conversations
from sftlab.errors import DataError
from sftlab.types import Conversation, Message


def chat(weight_key: str, value) -> list[dict]:
    return [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", weight_key: value},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]


@pytest.mark.parametrize("key, zero, one", [("weight", 0, 1), ("loss_weight", 0.0, 1.0), ("train", False, True)])
def test_each_weight_key_reads_into_message_weight(key, zero, one):
    assert [m.weight for m in parse_messages(chat(key, zero))] == [1, 0, 1, 1]
    assert [m.weight for m in parse_messages(chat(key, one))] == [1, 1, 1, 1]


@pytest.mark.parametrize("value", [0.5, 2, -1, "0", None])
def test_other_weights_are_a_clear_error(value):
    with pytest.raises(DataError, match="not 0 or 1") as error:
        parse_messages(chat("weight", value))
    assert error.value.field == "messages[1].weight"
    assert "fractional weights are not supported yet" in str(error.value)


def test_non_assistant_weights():
    zero = parse_messages([{"role": "user", "content": "q", "loss_weight": 0.0}])
    assert zero == [Message("user", "q", 0)]
    with pytest.raises(DataError, match="only assistant turns are trained") as error:
        parse_messages([{"role": "user", "content": "q", "loss_weight": 1.0}])
    assert error.value.field == "messages[0].loss_weight"


def test_two_weight_keys_on_one_message_are_an_error():
    with pytest.raises(DataError, match="several loss weights"):
        parse_messages([{"role": "assistant", "content": "a", "weight": 0, "train": False}])


def test_content_parts_of_both_shapes_are_joined():
    messages = parse_messages([
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
        {"role": "assistant", "content": [{"type": "text", "value": "Hi "}, {"type": "text", "value": "there"}]},
    ])
    assert [m.content for m in messages] == ["Hello", "Hi there"]


def test_a_non_text_part_names_file_line_and_field(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [chat("weight", 1), [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "x.png"}}]},
        {"role": "assistant", "content": "A cat."}]]
    path.write_text("\n".join(json.dumps({"messages": r}) for r in rows) + "\n")
    with pytest.raises(DataError) as error:
        read_conversations(path)
    assert (error.value.file, error.value.line, error.value.field) == (str(path), 2, "messages[0].content[1]")
    assert "'image_url' content part is not supported" in str(error.value)


def test_the_llamafactory_v1_sample_loads_with_exact_weight_counts(shared_data):
    result = read_conversations(shared_data / "formats" / "lf_v1_sft_sample.jsonl")
    messages = [m for c in result.conversations for m in c.messages]
    assert (result.format, len(result.conversations), len(messages)) == ("openai", 20, 40)
    # the file gives every user turn loss_weight 0.0 and every assistant turn 1.0
    assert sum(m.weight == 0 for m in messages) == 20
    assert sum(m.weight == 1 for m in messages) == 20
    assert all((m.weight == 1) == (m.role == "assistant") for m in messages)
    assert result.conversations[0].messages[1].content == "The show was an unexpected hit."


@pytest.mark.parametrize("fmt", ["canonical", "openai"])
def test_writers_round_trip_the_weight(tmp_path, fmt):
    conversation = Conversation(
        [Message("user", "q1"), Message("assistant", "a1", 0), Message("user", "q2"), Message("assistant", "a2")],
        id="c0")
    path = tmp_path / f"{fmt}.jsonl"
    write_conversations([conversation], path, format=fmt)
    row = json.loads(path.read_text())
    assert [m.get("weight") for m in row["messages"]] == [None, 0, None, None]
    back = read_conversations(path).conversations[0]
    assert back.messages == conversation.messages
    assert Conversation.from_dict(conversation.to_dict()).messages == conversation.messages


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
def test_writers_without_weights_refuse_a_weight_0_assistant_turn(tmp_path, fmt):
    context = Conversation([Message("user", "q1"), Message("assistant", "a1", 0), Message("user", "q2"),
                            Message("assistant", "a2")], id="c0")
    with pytest.raises(DataError, match=f"conversation 'c0': {fmt} cannot hold loss weights"):
        write_conversations([context], tmp_path / f"{fmt}.jsonl", format=fmt)
    # a user turn's weight 0 (LLaMA-Factory v1 gives every one) changes nothing: it is written
    plain = Conversation([Message("user", "q1", 0), Message("assistant", "a1")], id="c1")
    assert write_conversations([plain], tmp_path / f"{fmt}.jsonl", format=fmt) == 1


def test_a_weight_0_turn_is_context_and_shows_untrained(tiny_tokenizer):
    conversation = Conversation([Message("user", "q1"), Message("assistant", "CONTEXTANSWER", 0),
                                 Message("user", "q2"), Message("assistant", "a2")])
    example = render(conversation, tiny_tokenizer)
    assert trained_segments(example, tiny_tokenizer) == ["a2<|im_end|>"]
    assert "CONTEXTANSWER" in tiny_tokenizer.decode(example.input_ids)
    assert trained_segments(render(conversation, tiny_tokenizer, strategy="last_assistant"),
                            tiny_tokenizer) == ["a2<|im_end|>"]
    preview = format_mask(example, tiny_tokenizer)
    assert "CONTEXTANSWER" in preview and "[[CONTEXTANSWER" not in preview and "[[a2<|im_end|>]]" in preview


def test_last_assistant_trains_the_last_weight_1_turn(tiny_tokenizer):
    conversation = Conversation([Message("user", "q1"), Message("assistant", "a1"),
                                 Message("user", "q2"), Message("assistant", "a2", 0)])
    example = render(conversation, tiny_tokenizer, strategy="last_assistant")
    assert trained_segments(example, tiny_tokenizer) == ["a1<|im_end|>"]


def test_all_weight_0_conversations_are_dropped_and_counted(tiny_tokenizer):
    conversations = [Conversation([Message("user", "q"), Message("assistant", "a", 0)], id="zero"),
                     Conversation([Message("user", "q"), Message("assistant", "a")], id="one")]
    result = tokenize_conversations(conversations, tiny_tokenizer)
    assert [e.id for e in result.examples] == ["one"]
    assert result.dropped == {"all_turns_weight_0": 1}
    assert result.dropped_ids == [("zero", "all_turns_weight_0")]
    assert len(tokenize_conversations(conversations, tiny_tokenizer, strategy="everything").examples) == 2
