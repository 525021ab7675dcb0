"""Tool calls in sftlab's conversation type: the types, the Hermes text convention, the
readers (OpenAI, LLaMA-Factory's glaive layout, xLAM, Hermes text), turn-order validation
and the writers' round trips."""
from __future__ import annotations

import json

import pytest

from sftlab.data.formats import detect_format, parse_messages, read_openai, ReadOptions
from sftlab.data.io import read_conversations, write_conversations
from sftlab.data.tools import (format_hermes_calls, normalize_tools, parse_hermes_calls, parse_tool_call,
                               parse_tool_calls)
from sftlab.errors import DataError
from sftlab.types import Conversation, Message, ToolCall

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def openai_row(**changes) -> dict:
    """Weather question -> a call (arguments as a JSON string, content null) -> result -> answer."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18 C, sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny."},
    ]
    return {"tools": [WEATHER], "messages": messages, **changes}


# --- types -------------------------------------------------------------------------------------

def test_message_to_dict_is_the_chat_template_shape():
    call = ToolCall("get_weather", {"city": "Paris"}, id="c1")
    assert Message("assistant", "", tool_calls=(call,)).to_dict() == {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert Message("tool", "18 C", tool_call_id="c1", name="get_weather").to_dict() == {
        "role": "tool", "content": "18 C", "tool_call_id": "c1", "name": "get_weather"}
    assert Message("user", "Hi").to_dict() == {"role": "user", "content": "Hi"}
    assert repr(Message("tool", "x", tool_call_id="c1")) == "Message(role='tool', content='x', tool_call_id='c1')"
    assert hash(Message("assistant", "", tool_calls=(call,))) == hash(Message("assistant", "", tool_calls=(call,)))


def test_conversation_dict_round_trip_keeps_tools_and_new_fields():
    conversation = read_openai(openai_row(), ReadOptions())[0]
    row = conversation.to_dict()
    assert row["tools"] == [WEATHER]
    assert Conversation.from_dict(json.loads(json.dumps(row))) == conversation
    assert "tools" not in Conversation([Message("user", "a"), Message("assistant", "b")]).to_dict()


# --- Hermes text ---------------------------------------------------------------------------------

def test_hermes_format_and_parse_are_inverse():
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("now", {})]
    text = format_hermes_calls(calls)
    assert text == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')
    assert parse_hermes_calls("Checking both.\n" + text) == ("Checking both.", calls)
    # generation stopped before the closing tag of the last block
    assert parse_hermes_calls('<tool_call>\n{"name": "now", "arguments": {}}') == ("", [ToolCall("now", {})])


@pytest.mark.parametrize("body", ['{"name": "now", "arguments": {}', '{"arguments": {}}',
                                  '{"name": "now", "arguments": "{}"}', '["now"]'])
def test_a_bad_hermes_block_is_a_data_error(body):
    with pytest.raises(DataError) as error:
        parse_hermes_calls(f"<tool_call>\n{body}\n</tool_call>")
    assert error.value.reason == "bad tool call"


def test_parse_tool_call_shapes():
    assert parse_tool_call({"name": "add", "arguments": {"a": 1}}, "x") == ToolCall("add", {"a": 1})
    assert parse_tool_call({"function": {"name": "add", "arguments": ""}}, "x") == ToolCall("add", {})
    assert parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]', "v") == [
        ToolCall("a", {}), ToolCall("b", {})]
    with pytest.raises(DataError) as error:
        parse_tool_call({"function": {"name": "add", "arguments": "{oops"}}, "tool_calls[0]")
    assert error.value.field == "tool_calls[0].function.arguments"
    with pytest.raises(DataError) as error:
        parse_tool_call({"function": {"name": "add", "arguments": "[1]"}}, "tool_calls[0]")
    assert error.value.field == "tool_calls[0].function.arguments"


def test_normalize_tools_accepts_the_shapes_data_sets_use():
    bare = WEATHER["function"]
    assert normalize_tools([WEATHER]) == normalize_tools([bare]) == normalize_tools(json.dumps([bare])) == [WEATHER]
    assert normalize_tools(bare) == [WEATHER] and normalize_tools("") == []
    for bad, field in [("[oops", "tools"), (5, "tools"), ([{"description": "no name"}], "tools[0].name"),
                       ([{"type": "function", "function": "x"}], "tools[0]")]:
        with pytest.raises(DataError) as error:
            normalize_tools(bad, "tools")
        assert error.value.field == field and error.value.reason == "bad tools"


# --- OpenAI rows and validation ----------------------------------------------------------------------

def test_openai_tool_calls_are_read():
    conversation = read_openai(openai_row(), ReadOptions())[0]
    assert conversation.tools == [WEATHER] and "tools" not in conversation.meta
    user, call, result, answer = conversation.messages
    assert call == Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "c1"),))
    assert result == Message("tool", "18 C, sunny", tool_call_id="c1", name="get_weather")
    assert answer.content == "It is 18 C and sunny." and not answer.tool_calls
    # content absent instead of null, arguments as an object
    row = openai_row()
    del row["messages"][1]["content"]
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    assert read_openai(row, ReadOptions())[0] == conversation


def test_a_tool_call_id_that_matches_no_call_names_the_field():
    row = openai_row()
    row["messages"][2]["tool_call_id"] = "c9"
    with pytest.raises(DataError, match="answers call 'c9'") as error:
        read_openai(row, ReadOptions())
    assert error.value.field == "messages[2].tool_call_id" and error.value.reason == "unknown tool_call_id"


@pytest.mark.parametrize("messages, index", [
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}], 1),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"},
      {"role": "assistant", "content": "b"}], 2),
])
def test_a_tool_turn_without_a_call_before_it_is_an_error(messages, index):
    with pytest.raises(DataError, match="does not follow an assistant turn with tool calls") as error:
        read_openai({"messages": messages}, ReadOptions())
    assert error.value.field == f"messages[{index}].role" and error.value.reason == "misplaced tool turn"


def test_turn_order_around_tool_calls():
    row = openai_row()
    # several results, then an assistant turn that calls again, then its result and the answer
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "now", "arguments": {}}}]}
    more = [row["messages"][2], {"role": "tool", "content": "extra"}, call, {"role": "tool", "content": "noon"},
            {"role": "assistant", "content": "Done."}]
    messages = row["messages"][:2] + more
    assert [m.role for m in read_openai({"messages": messages}, ReadOptions())[0].messages] == [
        "user", "assistant", "tool", "tool", "assistant", "tool", "assistant"]
    # a user turn after tool results, before any answer: an error
    bad = row["messages"][:3] + [{"role": "user", "content": "?"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match="message 3 is user but tool or assistant was expected"):
        read_openai({"messages": bad}, ReadOptions())
    # training data must end on an assistant turn, prompts need not
    with pytest.raises(DataError, match="last turn is tool"):
        read_openai({"messages": row["messages"][:3]}, ReadOptions())
    assert len(read_openai({"messages": row["messages"][:3]}, ReadOptions(require_assistant=False))[0].messages) == 3
    # tool calls on a user turn
    with pytest.raises(DataError, match="only assistant turns"):
        from sftlab.data.formats import validate
        validate(Conversation([Message("user", "q", tool_calls=(ToolCall("now", {}),)), Message("assistant", "a")]))


# --- LLaMA-Factory glaive ----------------------------------------------------------------------------

def test_glaive_sample_loads_with_exact_counts(shared_data):
    path = shared_data / "formats" / "lf_glaive_toolcall_sample.json"
    raw = json.loads(path.read_text())
    result = read_conversations(path)
    assert result.format == "sharegpt" and not result.skipped
    assert len(result.conversations) == len(raw)
    for row, conversation in zip(raw, result.conversations):
        turns = row["conversations"]
        calls = [c for t in turns if t["from"] == "function_call" for c in _as_list(json.loads(t["value"]))]
        assert sum(len(m.tool_calls) for m in conversation.messages) == len(calls)
        assert [(c.name, c.arguments) for m in conversation.messages for c in m.tool_calls] == [
            (c["name"], c["arguments"]) for c in calls]
        assert sum(m.role == "tool" for m in conversation.messages) == sum(t["from"] == "observation" for t in turns)
        assert conversation.turns == sum(t["from"] in ("gpt", "function_call") for t in turns)
        assert all(m.content == "" for m in conversation.messages if m.tool_calls)
        tools = json.loads(row["tools"]) if row["tools"] else []
        assert [t["function"] for t in conversation.tools or []] == tools
    totals = {key: sum(t["from"] == key for row in raw for t in row["conversations"])
              for key in ("function_call", "observation")}
    assert totals["function_call"] > 10 and totals["observation"] == totals["function_call"]


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_several_calls_in_one_function_call_turn(tmp_path):
    path = tmp_path / "lf.json"
    calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": json.dumps(calls)},
                             {"from": "observation", "value": "r1"}, {"from": "observation", "value": "r2"},
                             {"from": "gpt", "value": "a"}], "tools": "[]"}
    path.write_text(json.dumps([row]))
    conversation = read_conversations(path).conversations[0]
    assert conversation.messages[1].tool_calls == (ToolCall("a", {"x": 1}), ToolCall("b", {}))
    assert conversation.tools is None
    row["conversations"][1]["value"] = '{"name": "a", "arguments": '
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError) as error:
        read_conversations(path)
    assert error.value.field == "conversations[1].value" and error.value.index == 0


# --- xLAM ------------------------------------------------------------------------------------------

XLAM_ROW = {"id": 7, "query": "Live giveaways for beta access and games?",
            "tools": json.dumps([{"name": "live_giveaways_by_type", "description": "Giveaways by type",
                                  "parameters": {"type": {"description": "beta or game", "type": "str"}}}]),
            "answers": json.dumps([{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}},
                                   {"name": "live_giveaways_by_type", "arguments": {"type": "game"}}])}


def test_xlam_rows_are_detected_and_read(tmp_path):
    path = tmp_path / "xlam.json"
    path.write_text(json.dumps([XLAM_ROW]))
    assert detect_format([XLAM_ROW]) == "xlam"
    result = read_conversations(path)
    conversation = result.conversations[0]
    assert result.format == "xlam" and conversation.id == "7"
    assert conversation.messages == [
        Message("user", XLAM_ROW["query"]),
        Message("assistant", "", tool_calls=(ToolCall("live_giveaways_by_type", {"type": "beta"}),
                                             ToolCall("live_giveaways_by_type", {"type": "game"})))]
    assert conversation.tools[0]["function"]["name"] == "live_giveaways_by_type"
    path.write_text(json.dumps([{**XLAM_ROW, "answers": "[{\"arguments\": {}}]"}]))
    with pytest.raises(DataError) as error:
        read_conversations(path)
    assert error.value.field == "answers[0].name"


# --- Hermes text in plain data -----------------------------------------------------------------------

HERMES = [{"from": "human", "value": "Weather in Paris?"},
          {"from": "gpt", "value": 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                   '\n</tool_call>'},
          {"from": "tool", "value": "<tool_response>\n18 C\n</tool_response>"},
          {"from": "gpt", "value": "18 C."}]


def test_hermes_text_becomes_tool_calls_unless_turned_off(tmp_path):
    path = tmp_path / "hermes.jsonl"
    path.write_text(json.dumps({"conversations": HERMES}) + "\n")
    messages = read_conversations(path).conversations[0].messages
    assert messages[1] == Message("assistant", "Let me look.", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),))
    assert messages[2] == Message("tool", "<tool_response>\n18 C\n</tool_response>")
    # turned off, the text stays text: the tool turn then follows no call, which is an error
    with pytest.raises(DataError, match="does not follow an assistant turn with tool calls"):
        read_conversations(path, parse_hermes_tool_calls=False)
    turns = [*HERMES[:2], {"from": "human", "value": HERMES[2]["value"]}, HERMES[3]]
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    plain = read_conversations(path, parse_hermes_tool_calls=False).conversations[0].messages
    assert plain[1] == Message("assistant", HERMES[1]["value"])


def test_tool_response_user_turns_stay_user_turns(tmp_path):
    """Results written as a user turn after the call are not rewritten into tool turns."""
    path = tmp_path / "hermes.jsonl"
    turns = [*HERMES[:2], {"from": "human", "value": HERMES[2]["value"]}, HERMES[3]]
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    messages = read_conversations(path).conversations[0].messages
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].tool_calls and messages[2].content == HERMES[2]["value"]


def test_bad_hermes_text_names_the_field():
    with pytest.raises(DataError) as error:
        parse_messages([{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "<tool_call>\n{not json}\n</tool_call>"}])
    assert error.value.field == "messages[1].content" and error.value.reason == "bad tool call"


# --- writers -------------------------------------------------------------------------------------------

def _same(a: list[Conversation], b: list[Conversation]) -> None:
    assert [(c.id, c.messages, c.tools) for c in a] == [(c.id, c.messages, c.tools) for c in b]


@pytest.mark.parametrize("format, suffix", [("sharegpt", "json"), ("openai", "jsonl"), ("canonical", "jsonl")])
def test_glaive_round_trips_through_every_chat_writer(shared_data, tmp_path, format, suffix):
    original = read_conversations(shared_data / "formats" / "lf_glaive_toolcall_sample.json").conversations
    path = tmp_path / f"out.{suffix}"
    write_conversations(original, path, format)
    _same(read_conversations(path).conversations, original)


def test_sharegpt_writes_llama_factory_roles(shared_data, tmp_path):
    original = read_conversations(shared_data / "formats" / "lf_glaive_toolcall_sample.json").conversations[:1]
    path = tmp_path / "out.json"
    write_conversations(original, path, "sharegpt")
    raw = json.loads((shared_data / "formats" / "lf_glaive_toolcall_sample.json").read_text())[0]
    row = json.loads(path.read_text())[0]
    assert [t["from"] for t in row["conversations"]] == [t["from"] for t in raw["conversations"]]
    assert json.loads(row["tools"]) == json.loads(raw["tools"])
    assert json.loads(row["conversations"][1]["value"]) == json.loads(raw["conversations"][1]["value"])


def test_ids_reasoning_and_text_with_calls_round_trip(tmp_path):
    call = ToolCall("get_weather", {"city": "Paris"}, id="c1")
    conversation = Conversation([
        Message("system", "Be brief."), Message("user", "Weather?"),
        Message("assistant", "Checking.", tool_calls=(call,), reasoning="I need the weather tool."),
        Message("tool", "18 C", tool_call_id="c1", name="get_weather"),
        Message("assistant", "18 C.", reasoning="Report it.")], id="w", tools=[WEATHER])
    for format in ("openai", "canonical"):
        write_conversations([conversation], tmp_path / f"{format}.jsonl", format)
        _same(read_conversations(tmp_path / f"{format}.jsonl").conversations, [conversation])
    # sharegpt keeps everything but the call id and tool name (the format has no place for them)
    write_conversations([conversation], tmp_path / "sharegpt.jsonl", "sharegpt")
    back = read_conversations(tmp_path / "sharegpt.jsonl").conversations[0]
    expected = [Message("system", "Be brief."), Message("user", "Weather?"),
                Message("assistant", "Checking.", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),),
                        reasoning="I need the weather tool."),
                Message("tool", "18 C"), Message("assistant", "18 C.", reasoning="Report it.")]
    assert back.messages == expected and back.tools == [WEATHER]
    with pytest.raises(DataError, match="alpaca cannot hold tools"):
        write_conversations([conversation], tmp_path / "alpaca.json", "alpaca")


def test_bad_tool_fields_name_file_line_and_field(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = openai_row()
    bad_id = openai_row()
    bad_id["messages"][2]["tool_call_id"] = 5
    bad_calls = openai_row()
    bad_calls["messages"][1]["tool_calls"] = {"id": "c1"}
    for row, field in [(bad_id, "messages[2].tool_call_id"), (bad_calls, "messages[1].tool_calls"),
                       ({**good, "tools": "not json"}, "tools")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError) as error:
            read_conversations(path)
        assert (error.value.line, error.value.field) == (2, field)
        assert str(error.value).startswith(f"{path}:2: field '{field}'")
    result = read_conversations(path, on_error="skip")
    assert len(result.conversations) == 1 and result.skipped == {"bad tools": 1}


def test_openai_writer_gives_arguments_as_json_strings(tmp_path):
    """OpenAI's chat fine-tuning rows carry ``function.arguments`` as a JSON string."""
    import json as _json

    from sftlab.data.io import write_conversations
    from sftlab.types import Conversation, Message, ToolCall

    conversation = Conversation([Message("user", "Paris?"),
                                 Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
                                 Message("tool", "18"), Message("assistant", "18 degrees.")])
    write_conversations([conversation], tmp_path / "out.jsonl", format="openai")
    row = _json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    arguments = row["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str) and _json.loads(arguments) == {"city": "Paris"}
