"""What the OpenAI server makes of a generated text: content, tool calls and reasoning.

One function, ``parse_reply``, used by the server (``sftlab.infer.server``) and by the
train-to-serve check (``sftlab.infer.conformance``), so the check proves what the server does.

* **Reasoning** (only when asked: ``reasoning=True``): a leading ``<think>...</think>``
  block, or text before a ``</think>`` whose opening tag was in the prompt (Qwen3 and
  DeepSeek-R1 templates open it themselves), is returned apart as ``reasoning``: vLLM's
  field name in the response message.
* **Tool calls** (only when the request gave ``tools``): the Hermes convention sftlab's
  templates teach (Qwen2.5, Hermes, and sftlab's own ``hermes`` fallback for templates
  that know no tools): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.
  The calls are returned apart; the text around them is the content (``None`` when empty,
  as OpenAI answers). A block that is not a valid call leaves the whole text as content:
  a model's malformed call reaches the client as text, never as an error.

>>> reply = parse_reply('<think>\\nsum\\n</think>\\n\\n<tool_call>\\n{"name": "add", "arguments": {"a": 1}}\\n'
...                     '</tool_call>', tools=True, reasoning=True)
>>> reply.reasoning, reply.content, [c.name for c in reply.tool_calls]
('sum', None, ['add'])
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from sftlab.data.tools import parse_hermes_calls, split_reasoning
from sftlab.errors import DataError
from sftlab.types import ToolCall


@dataclass
class Reply:
    """A generated text, split. ``content`` is None only when tool calls took all of it."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str | None = None

    def message(self) -> dict:
        """The OpenAI ``choices[].message`` object (``tool_calls`` arguments as JSON strings)."""
        out: dict = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = [openai_tool_call(call) for call in self.tool_calls]
        return out


def parse_reply(text: str, *, tools: bool = False, reasoning: bool = False) -> Reply:
    """Split ``text`` into content, tool calls (when ``tools``) and reasoning (when ``reasoning``)."""
    thought = None
    if reasoning:
        thought, text = split_reasoning(text)
    if not tools or "<tool_call>" not in text:
        return Reply(text, [], thought)
    try:
        content, calls = parse_hermes_calls(text)
    except DataError:
        return Reply(text, [], thought)
    return Reply(content or None, list(calls), thought)


def openai_tool_call(call: ToolCall) -> dict:
    """``{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}`` (OpenAI's
    response shape: the arguments as a JSON string); a call without an id gets a fresh one."""
    return {"id": call.id or f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
