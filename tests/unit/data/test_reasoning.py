"""Reasoning traces (``Message.reasoning``): splitting ``<think>`` text, the readers' fields,
the reasoning policy and the ``think_tags`` rendering fallback."""
from __future__ import annotations

import warnings

import pytest

from sftlab.data.chat import apply_reasoning_policy, apply_template, render, trained_segments
from sftlab.data.formats import parse_messages
from sftlab.data.tools import join_reasoning, split_reasoning
from sftlab.errors import ConfigError, DataError
from sftlab.models.tiny import tiny_tokenizer
from sftlab.types import Conversation, Message


@pytest.mark.parametrize("text, expected", [
    ("<think>\n2 + 2 = 4\n</think>\n\nFour.", ("2 + 2 = 4", "Four.")),
    ("  <think>a\nb</think>Four.", ("a\nb", "Four.")),
    ("<think>\n\n</think>\n\nFour.", ("", "Four.")),
    ("<think>\ncut off", ("cut off", "")),                 # never closed: all reasoning
    ("2 + 2 = 4\n</think>\n\nFour.", ("2 + 2 = 4", "Four.")),  # <think> was in the prompt
    ("Four.", (None, "Four.")),
    ("Four. <think>late</think>", (None, "Four. <think>late</think>")),  # not leading: not a block
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def test_readers_take_only_a_leading_block():
    assert split_reasoning("a </think> b", implicit_open=False) == (None, "a </think> b")
    assert split_reasoning(join_reasoning("why", "Four.")) == ("why", "Four.")
    assert join_reasoning(None, "Four.") == "Four."


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_each_reasoning_field_reads_into_message_reasoning(key):
    messages = parse_messages([{"role": "user", "content": "2 + 2?"},
                               {"role": "assistant", "content": "Four.", key: "Add them."}])
    assert messages[1] == Message("assistant", "Four.", reasoning="Add them.")


def test_a_think_block_in_content_becomes_the_reasoning():
    messages = parse_messages([{"role": "user", "content": "2 + 2?"},
                               {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nFour."}])
    assert messages[1] == Message("assistant", "Four.", reasoning="Add them.")
    # a user turn's text is never split
    assert parse_messages([{"role": "user", "content": "<think>x</think> y"}])[0].reasoning is None


@pytest.mark.parametrize("message, field", [
    ({"content": "<think>a</think>Four.", "reasoning_content": "b"}, "messages[0].reasoning_content"),
    ({"content": "Four.", "reasoning": "a", "thinking": "b"}, "messages[0].thinking"),
])
def test_two_reasoning_sources_are_an_error(message, field):
    with pytest.raises(DataError, match="reasoning") as error:
        parse_messages([{"role": "assistant", **message}])
    assert error.value.field == field and error.value.reason == "several reasoning fields"


def test_a_non_string_reasoning_is_an_error():
    with pytest.raises(DataError) as error:
        parse_messages([{"role": "assistant", "content": "x", "reasoning_content": ["a"]}])
    assert error.value.field == "messages[0].reasoning_content"


CONVERSATION = Conversation([
    Message("user", "q1"), Message("assistant", "a1", reasoning="r1"),
    Message("user", "q2"), Message("assistant", "a2", reasoning="r2")])


def test_reasoning_policy():
    reasonings = lambda c: [m.reasoning for m in c.messages if m.role == "assistant"]  # noqa: E731
    assert apply_reasoning_policy(CONVERSATION, "keep") is CONVERSATION
    assert reasonings(apply_reasoning_policy(CONVERSATION, "last_turn")) == [None, "r2"]
    assert reasonings(apply_reasoning_policy(CONVERSATION, "drop")) == [None, None]
    assert reasonings(CONVERSATION) == ["r1", "r2"]  # the input is not changed
    with pytest.raises(ConfigError, match="unknown reasoning policy"):
        apply_reasoning_policy(CONVERSATION, "some")


def test_think_tags_fallback_renders_reasoning_into_the_content_and_warns_once():
    tokenizer = tiny_tokenizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = apply_template(tokenizer, CONVERSATION.messages, add_generation_prompt=False)
        example = render(CONVERSATION, tokenizer)
    assert "<|im_start|>assistant\n<think>\nr1\n</think>\n\na1<|im_end|>" in text
    assert trained_segments(example, tokenizer) == ["<think>\nr1\n</think>\n\na1<|im_end|>",
                                                    "<think>\nr2\n</think>\n\na2<|im_end|>"]
    fallback = [w for w in caught if "think_tags" in str(w.message)]
    assert len(fallback) == 1 and issubclass(fallback[0].category, UserWarning)


def test_a_template_that_knows_reasoning_content_gets_the_field():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m.reasoning_content %}{{ '[R:' + m.reasoning_content + ']' }}{% endif %}"
        "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        example = render(CONVERSATION, tokenizer, reasoning="last_turn")
    assert trained_segments(example, tokenizer) == ["a1<|im_end|>", "[R:r2]a2<|im_end|>"]
