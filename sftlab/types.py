"""The types every stage shares: messages, conversations and tokenized examples.

Data flows one way: records -> ``Conversation`` -> ``Tokenized`` -> model. Readers in
``sftlab.data.formats`` produce conversations; ``sftlab.data.chat`` renders them into
token ids with labels; the trainer consumes ``Tokenized``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# Label value of a position that carries no loss (the PyTorch cross-entropy default).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant turn makes: ``ToolCall("get_weather", {"city": "Paris"})``.

    ``arguments`` is always a parsed JSON object (readers decode OpenAI's JSON-string
    arguments); ``id`` links the call to the ``tool`` turn that answers it (optional).

    >>> ToolCall("get_weather", {"city": "Paris"}, id="call_0").to_dict()
    {'id': 'call_0', 'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}
    """

    name: str
    arguments: dict
    id: str | None = None

    def __hash__(self) -> int:  # arguments is a dict: hash its JSON text
        return hash((self.name, json.dumps(self.arguments, sort_keys=True, default=str), self.id))

    def __repr__(self) -> str:
        call_id = "" if self.id is None else f", id={self.id!r}"
        return f"ToolCall(name={self.name!r}, arguments={self.arguments!r}{call_id})"

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI / Hugging Face chat-template shape (arguments as an object, not a string)."""
        head = {"id": self.id} if self.id is not None else {}
        return {**head, "type": "function", "function": {"name": self.name, "arguments": dict(self.arguments)}}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "ToolCall":
        """Inverse of ``to_dict`` (trusted rows; ``sftlab.data.tools.parse_tool_call`` checks input)."""
        function = row.get("function", row)
        arguments = function.get("arguments") or {}
        return cls(function["name"], json.loads(arguments) if isinstance(arguments, str) else dict(arguments),
                   row.get("id"))


@dataclass(frozen=True)
class Message:
    """One turn: ``Message("user", "Name three colours.")``.

    ``weight`` is the turn's loss weight: 1 (the default) trains an assistant turn as the
    mask strategy says; 0 keeps it as context only, never trained (OpenAI's ``weight``,
    LLaMA-Factory v1's ``loss_weight``, Axolotl's ``train``). Only assistant turns are
    ever trained: a system or user turn's weight (0 or 1) changes nothing.

    Tool use: an assistant turn may make ``tool_calls`` (its ``content`` may then be
    empty); a ``tool`` turn carries one call's result, ``tool_call_id`` naming the call it
    answers and ``name`` the tool (both optional). ``reasoning`` is an assistant turn's
    reasoning trace, kept apart from ``content`` and without ``<think>`` tags.

    >>> Message("assistant", "", tool_calls=(ToolCall("now", {}),))
    Message(role='assistant', content='', tool_calls=(ToolCall(name='now', arguments={}),))
    """

    role: Role
    content: str
    weight: int = 1
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None

    def __repr__(self) -> str:
        extra = "".join(f", {key}={value!r}" for key, value in self._extra().items())
        return f"Message(role={self.role!r}, content={self.content!r}{extra})"

    def _extra(self) -> dict[str, Any]:
        """The fields that differ from their defaults, in field order."""
        values = {"weight": self.weight, "tool_calls": self.tool_calls, "tool_call_id": self.tool_call_id,
                  "name": self.name, "reasoning": self.reasoning}
        defaults = {"weight": 1, "tool_calls": ()}
        return {key: value for key, value in values.items() if value != defaults.get(key)}

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face chat-template shape, only non-default fields: ``tool_calls`` as
        dicts, ``reasoning`` as ``reasoning_content``.

        >>> Message("assistant", "Paris.", reasoning="Capital of France.").to_dict()
        {'role': 'assistant', 'content': 'Paris.', 'reasoning_content': 'Capital of France.'}
        """
        row: dict[str, Any] = {"role": self.role, "content": self.content}
        for key, value in self._extra().items():
            if key == "tool_calls":
                value = [call.to_dict() for call in value]
            row["reasoning_content" if key == "reasoning" else key] = value
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Message":
        """Inverse of ``to_dict`` (trusted rows; ``sftlab.data.formats.parse_messages`` checks input)."""
        return cls(row["role"], row.get("content") or "", row.get("weight", 1),
                   tuple(ToolCall.from_dict(call) for call in row.get("tool_calls") or ()),
                   row.get("tool_call_id"), row.get("name"), row.get("reasoning_content"))


@dataclass
class Conversation:
    """An instruction-data record in sftlab's one internal form.

    ``messages`` alternate user/assistant turns after an optional leading system turn; an
    assistant turn with tool calls may be followed by ``tool`` turns (its results), then
    an assistant turn. ``tools`` lists the functions the assistant may call, in OpenAI's
    shape ``[{"type": "function", "function": {"name", "description", "parameters"}}]``.
    ``id`` is stable across conversions; ``source`` names the file or pipeline it came
    from; ``meta`` keeps everything else a format carried (category, task, ranks, ...).

    Canonical JSONL row::

        {"id": "alpaca-0", "source": "alpaca_en_demo.json",
         "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "meta": {}}

    ``"tools"`` is written only when the conversation has tools.
    """

    messages: list[Message]
    id: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None

    def to_dict(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "source": self.source,
            "messages": [m.to_dict() for m in self.messages],
            "meta": self.meta,
        }
        if self.tools is not None:
            row["tools"] = self.tools
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Conversation":
        return cls(
            messages=[Message.from_dict(m) for m in row["messages"]],
            id=row.get("id"),
            source=row.get("source"),
            meta=dict(row.get("meta") or {}),
            tools=row.get("tools"),
        )

    @property
    def turns(self) -> int:
        """Number of assistant turns."""
        return sum(m.role == "assistant" for m in self.messages)


@dataclass
class Tokenized:
    """A rendered example: ``labels[t]`` is ``input_ids[t]`` where the model is trained
    to produce that token, else ``IGNORE_INDEX``. Labels are *not* shifted: the loss
    predicts ``labels[t]`` from position ``t - 1`` (the Hugging Face convention).

    >>> Tokenized([1, 5, 6, 2], [-100, -100, 6, 2]).num_trained
    2
    """

    input_ids: list[int]
    labels: list[int]
    id: str | None = None

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(
                f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ in length"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        # position 0 has no previous token, so a label there is never trained
        return sum(label != IGNORE_INDEX for label in self.labels[1:])
