"""Tool calls and reasoning through the OpenAI server: the prompt is the one training renders,
the reply is parsed into ``tool_calls`` / ``reasoning`` by the same parser ``sftlab check`` proves."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from sftlab.data.chat import apply_template
from sftlab.infer.base import Generation
from sftlab.infer.hf import HFGenerator
from sftlab.infer.server import start_server
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.types import Conversation, Message, ToolCall

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class Scripted(HFGenerator):
    """The real prompt path (``encode``), a scripted reply: what the model says is under test control."""

    reply = ""

    def generate(self, prompts, sampling=None, on_text=None, **kwargs):
        self.prompts = list(prompts)
        return [Generation(self.reply, len(p), 7, "stop") for p in prompts]


@pytest.fixture(scope="module")
def generator():
    return Scripted(tiny_model(), tiny_tokenizer(), name="tiny")


@pytest.fixture(scope="module")
def server(generator):
    with start_server(generator, batch_window_ms=1) as handle:
        yield handle


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30)


def ask(client, generator, reply: str, **kwargs):
    generator.reply = reply
    kwargs.setdefault("messages", [{"role": "user", "content": "Weather in Paris?"}])
    return client.chat.completions.create(model="tiny", max_tokens=16, **kwargs)


def test_tool_call_reply_is_parsed_into_tool_calls(client, generator):
    answer = ask(client, generator, CALL_TEXT, tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


def test_prompt_with_tools_is_the_training_rendering(client, generator):
    ask(client, generator, "Sunny.", tools=[WEATHER])
    tokenizer = generator.tokenizer
    expected = apply_template(tokenizer, [Message("user", "Weather in Paris?")], tools=[WEATHER],
                              add_generation_prompt=True)
    assert tokenizer.decode(generator.prompts[0]) == expected
    assert "get_weather" in expected  # the tools reached the prompt


def test_tool_turns_of_a_request_render_as_in_training(client, generator):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18}'}]
    answer = ask(client, generator, "It is 18 degrees.", tools=[WEATHER], messages=messages)
    assert answer.choices[0].message.content == "It is 18 degrees."
    assert answer.choices[0].finish_reason == "stop"
    conversation = [Message("user", "Weather in Paris?"),
                    Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, id="call_1"),)),
                    Message("tool", '{"temperature": 18}', tool_call_id="call_1")]
    expected = apply_template(generator.tokenizer, conversation, tools=[WEATHER], add_generation_prompt=True)
    assert generator.tokenizer.decode(generator.prompts[0]) == expected
    assert '{"temperature": 18}' in expected


def test_tool_choice_none_and_no_tools_leave_the_text(client, generator):
    assert ask(client, generator, CALL_TEXT, tools=[WEATHER], tool_choice="none").choices[0].message.content == CALL_TEXT
    plain = ask(client, generator, CALL_TEXT)
    assert plain.choices[0].message.content == CALL_TEXT and not plain.choices[0].message.tool_calls


def test_malformed_call_comes_back_as_text(client, generator):
    broken = '<tool_call>\n{"name": "get_weather", "arguments": \n</tool_call>'
    choice = ask(client, generator, broken, tools=[WEATHER]).choices[0]
    assert choice.message.content == broken and choice.finish_reason == "stop"


def test_reasoning_is_returned_apart_when_asked(server, generator):
    generator.reply = "<think>\nTwo and two.\n</think>\n\nFour."
    body = {"messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 8}
    plain = httpx.post(f"{server.base_url}/chat/completions", json=body).json()
    assert plain["choices"][0]["message"]["content"] == generator.reply
    asked = httpx.post(f"{server.base_url}/chat/completions", json={**body, "include_reasoning": True}).json()
    message = asked["choices"][0]["message"]
    assert message["reasoning"] == "Two and two." and message["content"] == "Four."


def test_streamed_tool_call_arrives_as_one_delta(client, generator):
    generator.reply = CALL_TEXT
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Paris?"}],
                                            tools=[WEATHER], stream=True, max_tokens=16)
    chunks = list(stream)
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [(0, "get_weather", {"city": "Paris"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                          "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                                           "arguments": "{not json"}}]}],
     "messages[1].tool_calls[0]"),
])
def test_bad_tool_messages_are_400_naming_the_field(server, messages, param):
    response = httpx.post(f"{server.base_url}/chat/completions", json={"messages": messages, "tools": [WEATHER]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_bad_tools_are_400(server):
    response = httpx.post(f"{server.base_url}/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("tools[0]")


def test_conversation_of_request_keeps_tools():
    from sftlab.infer.openai_schema import ChatRequest

    body = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]})
    assert body.conversation() == Conversation([Message("user", "hi")], tools=[WEATHER])
    assert body.parses_tool_calls
