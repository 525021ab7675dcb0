"""Tool calls and reasoning traces as text: the conventions models are trained on.

Pure functions (no torch, no tokenizer), shared by the readers (``sftlab.data.formats``),
the renderer's fallbacks (``sftlab.data.chat``) and the OpenAI server (generated text ->
structured calls):

* ``format_hermes_calls`` / ``parse_hermes_calls``: the Hermes / Qwen2.5 convention, one
  ``<tool_call>`` block of JSON per call::

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>

* ``split_reasoning``: a leading ``<think>...</think>`` block -> (reasoning, answer).
* ``normalize_tools``: tool lists in the shapes data sets use -> OpenAI's shape.
* ``parse_tool_call``: one call in OpenAI's shape or bare ``{"name", "arguments"}``.
* ``hermes_messages`` / ``think_messages``: the named rendering fallbacks (``hermes``,
  ``think_tags``) for chat templates that know no tools or no reasoning field.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any, Sequence

from sftlab.errors import DataError
from sftlab.types import Message, ToolCall

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# a closed block, or an unclosed last block (generation stopped before its closing tag)
_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)

HERMES_FALLBACK = "hermes"
"""Name of the tool-rendering fallback for templates that know no tools."""
THINK_FALLBACK = "think_tags"
"""Name of the reasoning-rendering fallback for templates that know no ``reasoning_content``."""


# --- calls as Hermes text ------------------------------------------------------------------

def format_hermes_calls(calls: Sequence[ToolCall]) -> str:
    """One ``<tool_call>`` block per call, joined by newlines.

    >>> print(format_hermes_calls([ToolCall("add", {"a": 1, "b": 2})]))
    <tool_call>
    {"name": "add", "arguments": {"a": 1, "b": 2}}
    </tool_call>
    """
    return "\n".join(
        f'{CALL_OPEN}\n{json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)}\n{CALL_CLOSE}'
        for call in calls)


def parse_hermes_calls(text: str) -> tuple[str, list[ToolCall]]:
    """``(content outside the blocks, stripped; the calls)`` of a text in Hermes style.

    A block that is not a JSON object with a string ``name`` and an object ``arguments``
    raises ``DataError`` (reason ``bad tool call``).

    >>> parse_hermes_calls('Let me check.\\n<tool_call>\\n{"name": "now", "arguments": {}}\\n</tool_call>')
    ('Let me check.', [ToolCall(name='now', arguments={})])
    >>> parse_hermes_calls("no calls")
    ('no calls', [])
    """
    calls = [_hermes_call(match.group(1), index) for index, match in enumerate(_CALL_BLOCK.finditer(text))]
    if not calls:
        return text.strip(), []
    return _CALL_BLOCK.sub("", text).strip(), calls


def _hermes_call(body: str, index: int) -> ToolCall:
    field = f"<tool_call> block {index}"
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise DataError(f"{field} is not valid JSON ({exc.msg} at {exc.pos}): {body.strip()!r:.80}",
                        hint='write {"name": ..., "arguments": {...}} inside the block',
                        reason="bad tool call") from None
    if not (isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict)):
        raise DataError(f"{field} needs a string 'name' and an object 'arguments': {body.strip()!r:.80}",
                        hint='write {"name": ..., "arguments": {...}} inside the block', reason="bad tool call")
    return ToolCall(value["name"], value["arguments"])


# --- reasoning -------------------------------------------------------------------------------

def split_reasoning(text: str, *, implicit_open: bool = True) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a text that starts with a ``<think>...</think>`` block.

    The reasoning loses its surrounding newlines, the answer its leading whitespace. No
    block: ``(None, text)``. With ``implicit_open`` (generated text), a text holding
    ``</think>`` but no ``<think>`` had its opening tag in the prompt (Qwen3 thinking and
    DeepSeek-R1 templates write it there): everything before ``</think>`` is the
    reasoning. An opened block never closed (generation cut off) is all reasoning.
    Readers pass ``implicit_open=False``: in data, only a leading block counts.

    >>> split_reasoning("<think>\\n2 + 2 = 4\\n</think>\\n\\nFour.")
    ('2 + 2 = 4', 'Four.')
    >>> split_reasoning("2 + 2 = 4\\n</think>\\n\\nFour.")
    ('2 + 2 = 4', 'Four.')
    >>> split_reasoning("Four.")
    (None, 'Four.')
    """
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        inner, closed, rest = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
        return inner.strip("\n"), rest.lstrip() if closed else ""
    if implicit_open and THINK_CLOSE in text and THINK_OPEN not in text:
        inner, _, rest = text.partition(THINK_CLOSE)
        return inner.strip("\n"), rest.lstrip()
    return None, text


def join_reasoning(reasoning: str | None, content: str) -> str:
    """Inverse of ``split_reasoning``: ``<think>\\n{reasoning}\\n</think>\\n\\n{content}``."""
    return content if reasoning is None else f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{content}"


# --- tool lists and calls from data -----------------------------------------------------------

def normalize_tools(value: Any, field: str = "tools") -> list[dict]:
    """A tool list -> OpenAI's shape ``[{"type": "function", "function": {...}}]``.

    Accepts that shape, bare function objects ``{"name", "description", "parameters"}``
    (LLaMA-Factory, glaive, xLAM), a single tool object, or a JSON string of any of these
    (an empty string is no tools). Bad input raises ``DataError`` naming ``field``.

    >>> normalize_tools('[{"name": "now", "description": "The time", "parameters": {}}]')
    [{'type': 'function', 'function': {'name': 'now', 'description': 'The time', 'parameters': {}}}]
    """
    hint = 'give a list of {"name", "description", "parameters"} or {"type": "function", "function": ...} objects'
    if isinstance(value, str):
        if not value.strip():
            return []
        value = _json(value, field, hint, "bad tools")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"expected a list of tools, got {type(value).__name__}", field=field, hint=hint,
                        reason="bad tools")
    return [_tool(item, f"{field}[{index}]", hint) for index, item in enumerate(value)]


def _tool(item: Any, field: str, hint: str) -> dict:
    if isinstance(item, dict) and item.get("type") == "function" and isinstance(item.get("function"), dict):
        function = item["function"]
    elif isinstance(item, dict) and "function" not in item:
        function = item
    else:
        raise DataError(f"not a tool: {item!r:.80}", field=field, hint=hint, reason="bad tools")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise DataError("a tool needs a non-empty string 'name'", field=f"{field}.name", hint=hint,
                        reason="bad tools")
    return {"type": "function", "function": dict(function)}


def parse_tool_call(value: Any, field: str) -> ToolCall:
    """One call: OpenAI's ``{"id"?, "type": "function", "function": {"name", "arguments"}}``
    (``arguments`` a JSON string, as OpenAI's API sends it, or an object) or a bare
    ``{"name", "arguments"}`` (LLaMA-Factory ``function_call``, xLAM ``answers``).

    >>> parse_tool_call({"id": "c1", "type": "function",
    ...                  "function": {"name": "add", "arguments": '{"a": 1}'}}, "tool_calls[0]")
    ToolCall(name='add', arguments={'a': 1}, id='c1')
    """
    hint = 'write {"type": "function", "function": {"name": ..., "arguments": {...}}}'
    if not isinstance(value, dict):
        raise DataError(f"expected a tool call object, got {type(value).__name__}", field=field, hint=hint,
                        reason="bad tool call")
    function, where = (value["function"], f"{field}.function") if "function" in value else (value, field)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise DataError("a tool call needs a non-empty string 'name'", field=f"{where}.name", hint=hint,
                        reason="bad tool call")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        arguments = _json(arguments, f"{where}.arguments", hint, "bad tool call") if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise DataError(f"arguments must be a JSON object, got {type(arguments).__name__}",
                        field=f"{where}.arguments", hint=hint, reason="bad tool call")
    call_id = value.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise DataError(f"a call id must be a string, got {type(call_id).__name__}", field=f"{field}.id",
                        hint="write the id as a JSON string", reason="bad tool call")
    return ToolCall(function["name"], arguments, call_id)


def parse_tool_calls(value: Any, field: str) -> list[ToolCall]:
    """One call or a list of calls (a JSON string of either is decoded first)."""
    if isinstance(value, str):
        value = _json(value, field, 'write {"name": ..., "arguments": {...}} or a list of them', "bad tool call")
    if isinstance(value, list):
        return [parse_tool_call(item, f"{field}[{index}]") for index, item in enumerate(value)]
    return [parse_tool_call(value, field)]


def _json(text: str, field: str, hint: str, reason: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at {exc.pos}): {text!r:.80}", field=field, hint=hint,
                        reason=reason) from None


# --- rendering fallbacks -----------------------------------------------------------------------

def hermes_tools_prompt(tools: Sequence[dict]) -> str:
    """The system text that lists ``tools`` and says how to call them (Hermes style)."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("# Tools\n\nYou can call the functions below to help with the request. "
            "Their signatures are JSON objects inside <tools></tools> tags:\n"
            f"<tools>\n{lines}\n</tools>\n\n"
            "To call a function, answer with one JSON object per call, naming the function and "
            "giving its arguments, inside <tool_call></tool_call> tags:\n"
            '<tool_call>\n{"name": <function name>, "arguments": <arguments object>}\n</tool_call>')


def hermes_messages(messages: Sequence[Message], tools: Sequence[dict] | None) -> list[Message]:
    """``messages`` written for a template that knows no tools (the ``hermes`` fallback).

    The tool list joins the system turn (one is added if there is none); an assistant
    turn's calls become ``format_hermes_calls`` text after its content; consecutive tool
    turns merge into one user turn of ``<tool_response>`` blocks. Only plain
    system/user/assistant turns remain, so any template renders them.
    """
    out: list[Message] = []
    if tools:
        prompt = hermes_tools_prompt(tools)
        if messages and messages[0].role == "system":
            out.append(replace(messages[0], content=f"{messages[0].content}\n\n{prompt}"))
            messages = messages[1:]
        else:
            out.append(Message("system", prompt))
    previous_tool = False
    for message in messages:
        if message.role == "tool":
            block = f"<tool_response>\n{message.content}\n</tool_response>"
            if previous_tool:  # Qwen2.5 answers a run of calls in one user turn
                out[-1] = replace(out[-1], content=f"{out[-1].content}\n{block}")
            else:
                out.append(Message("user", block))
        elif message.tool_calls:
            calls = format_hermes_calls(message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            out.append(replace(message, content=content, tool_calls=()))
        else:
            out.append(message)
        previous_tool = message.role == "tool"
    return out


def think_messages(messages: Sequence[Message]) -> list[Message]:
    """``messages`` written for a template that knows no ``reasoning_content`` (the
    ``think_tags`` fallback): each reasoning goes into its content with ``join_reasoning``."""
    return [replace(m, content=join_reasoning(m.reasoning, m.content), reasoning=None)
            if m.reasoning is not None else m for m in messages]
