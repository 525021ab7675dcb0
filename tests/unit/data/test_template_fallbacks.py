"""The Jinja fallbacks (what a saved template carries) render exactly what the Python
fallbacks (``hermes_messages``, ``think_messages``) specify, and nothing else changes."""
from __future__ import annotations

import itertools
import random

import pytest

from sftlab.data.chat import CHAT_TEMPLATES
from sftlab.data.template_fallbacks import has_fallbacks, with_fallbacks
from sftlab.data.tools import hermes_messages, think_messages
from sftlab.models.tiny import tiny_tokenizer
from sftlab.types import Conversation, Message, ToolCall

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather: 'now' \\ today.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "add", "parameters": {}}}]


def conversations(seed: int = 0, n: int = 60) -> list[Conversation]:
    """Random conversations mixing system turns, tool calls (0-2 per turn, with and without
    content), runs of tool results, reasoning, and non-ASCII / quote / backslash text."""
    rng = random.Random(seed)
    texts = ["Paris", "naïve 'quoted' \\ text", "", "line\nbreak", "{\"json\": 1}"]
    out = []
    for _ in range(n):
        messages = [Message("system", rng.choice(texts[:2]))] if rng.random() < 0.5 else []
        for turn in range(rng.randint(1, 3)):
            messages.append(Message("user", rng.choice(texts[:2] + texts[3:])))
            calls = tuple(ToolCall(rng.choice(["get_weather", "add"]), {"city": rng.choice(texts), "n": [1, 2.5]},
                                   id=f"c{turn}{k}") for k in range(rng.randint(0, 2)))
            reasoning = rng.choice([None, "think 'hard'", ""])
            if calls:
                messages.append(Message("assistant", rng.choice(["", "Let me look."]), tool_calls=calls,
                                        reasoning=reasoning))
                messages += [Message("tool", rng.choice(texts), tool_call_id=c.id) for c in calls]
            messages.append(Message("assistant", rng.choice(texts[:2]) or "ok", reasoning=reasoning))
        out.append(Conversation(messages, tools=TOOLS if rng.random() < 0.8 else None))
    return out


def python_fallback(tokenizer, conversation: Conversation, generation: bool) -> str:
    messages = think_messages(hermes_messages(conversation.messages, conversation.tools))
    return tokenizer.apply_chat_template([m.to_dict() for m in messages], tokenize=False,
                                         add_generation_prompt=generation)


@pytest.mark.parametrize("name", ["chatml", "llama2", "zephyr", "alpaca"])
def test_jinja_fallbacks_equal_the_python_ones(name):
    plain = tiny_tokenizer()
    plain.chat_template = CHAT_TEMPLATES.get(name).jinja
    wrapped = tiny_tokenizer()
    wrapped.chat_template = with_fallbacks(plain.chat_template)
    for conversation, generation in itertools.product(conversations(), (False, True)):
        if name == "llama2" and generation:
            continue  # llama2's generation prompt is the [/INST] already written
        dicts = [m.to_dict() for m in conversation.messages]
        got = wrapped.apply_chat_template(dicts, tools=conversation.tools, tokenize=False,
                                          add_generation_prompt=generation)
        assert got == python_fallback(plain, conversation, generation)


def test_plain_conversations_render_as_under_the_original_template():
    plain, wrapped = tiny_tokenizer(), tiny_tokenizer()
    wrapped.chat_template = with_fallbacks(plain.chat_template)
    for conversation in conversations(seed=1):
        stripped = [Message(m.role if m.role != "tool" else "user", m.content or "x") for m in conversation.messages]
        dicts = [m.to_dict() for m in stripped]
        assert wrapped.apply_chat_template(dicts, tokenize=False) == plain.apply_chat_template(dicts, tokenize=False)


def test_wrapping_is_idempotent_and_marked():
    template = CHAT_TEMPLATES.get("chatml").jinja
    once = with_fallbacks(template)
    assert has_fallbacks(once) and not has_fallbacks(template)
    assert with_fallbacks(once) == once
    assert with_fallbacks(template, tools=False, reasoning=False) == template
    assert once.endswith(template)  # the model's own template follows, untouched
