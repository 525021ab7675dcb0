"""Instruction-data formats: one pure reader function per format, into ``Conversation``.

A reader takes one parsed row (a dict) and the read options, and returns the
conversations it holds (usually one; an Open Assistant tree holds many)::

    @FORMATS.register("alpaca")
    def read_alpaca(row: dict, options: ReadOptions) -> list[Conversation]: ...

It raises ``DataError(message, field=..., hint=..., reason=...)`` for a bad row; the file
driver (``sftlab.data.io.read_conversations``) adds the file and line, then either stops
or counts the record as skipped under ``reason``. Every conversation a reader returns is
checked by the one shared ``validate`` function.

Formats: alpaca, dolly, openai, sharegpt (with LLaMA-Factory's ``function_call`` /
``observation`` tool turns), prompt_completion, xp3, canonical, oasst, xlam (function-calling
rows: ``query``, ``tools``, ``answers``), and the task collections of ``sftlab.data.tasks`` (self_instruct, superni), registered at the
end of this file. ``detect_format(rows)`` picks one from the first rows of a file; each
format registers a small ``(row) -> bool`` detector.

Every OpenAI-style message list (``[{"role", "content"}, ...]``) anywhere in sftlab is
parsed by ``parse_messages``, which names the bad field (``messages[2].role``).

Tool use and reasoning (``Message.tool_calls``, ``tool`` turns, ``Message.reasoning``,
``Conversation.tools``): OpenAI ``tool_calls`` (arguments a JSON string or an object),
``tool`` messages with ``tool_call_id``, top-level ``tools``; LLaMA-Factory's
``function_call`` / ``observation`` turns and ``tools`` string; xLAM rows. An assistant
turn's reasoning comes from ``reasoning_content``, ``reasoning`` or ``thinking``, or a
leading ``<think>...</think>`` in its content (two of these in one message is an error).
With ``parse_hermes_tool_calls`` (default) assistant text holding ``<tool_call>`` blocks
(Hermes / Qwen2.5 style) is parsed into tool calls; user turns holding
``<tool_response>`` blocks are *not* rewritten into tool turns (they stay user turns, which
may follow an assistant turn with tool calls). Conversions live in ``sftlab.data.tools``.

With ``require_assistant=False`` (prompt files, ``sftlab.data.prompts``) a row may leave out
its answer (alpaca ``output``, dolly ``response``, xp3 ``targets``, ``completion``): the
conversation then ends on the user turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Literal

from sftlab.data import tasks
from sftlab.data.tools import normalize_tools, parse_hermes_calls, parse_tool_calls, split_reasoning
from sftlab.errors import DataError
from sftlab.registry import Registry
from sftlab.types import ROLES, Conversation, Message, ToolCall

FORMATS: Registry = Registry("format")
"""name -> reader ``(row: dict, options: ReadOptions) -> list[Conversation]``."""

DETECTORS: dict[str, Callable[[Any], bool]] = {}
"""name -> ``(row) -> bool``; tried in registration order, most specific first."""


@dataclass
class ReadOptions:
    """How to read a file. ``on_error``: ``fail`` stops at the first bad record; ``skip``
    drops it and counts it per reason."""

    on_error: Literal["fail", "skip"] = "fail"
    require_assistant: bool = True
    """Training data: the last turn must be a non-empty assistant turn. False for prompts."""
    oasst_best_path: bool = False
    """Open Assistant: one thread per tree following the best-ranked reply, not every thread."""
    oasst_keep_deleted: bool = False
    """Open Assistant: keep messages marked ``deleted: true`` (dropped with their subtree by default)."""
    oasst_keep_unreviewed: bool = False
    """Open Assistant: keep messages whose ``review_result`` is false or null."""
    user_input_separator: str = "\n\n"
    """Joins an instruction and its input (alpaca ``input``, dolly ``context``) into one user turn."""
    parse_hermes_tool_calls: bool = True
    """Assistant text with ``<tool_call>`` blocks (Hermes / Qwen2.5 style) becomes structured tool
    calls (openai, sharegpt, canonical); ``<tool_response>`` user turns stay user turns."""
    # task formats (sftlab.data.tasks: self_instruct, superni)
    expand_instances: bool = False
    """self_instruct: one conversation per instance instead of per task."""
    num_positive_examples: int = 2
    """superni: positive examples shown in each prompt."""
    num_negative_examples: int = 0
    """superni: negative examples shown in each prompt."""
    add_explanation: bool = False
    """superni: show the examples' explanations."""
    add_task_name: bool = False
    """superni: name the task in the prompt."""
    max_instances: int | None = None
    """superni: at most this many instances per task (None: all)."""
    tk_spacing: bool = False
    """superni: reproduce Tk-Instruct's stray leading spaces byte for byte."""


class ConversationList(list):
    """A reader's result when it also drops parts of a record on purpose (not errors):
    ``dropped`` counts them per reason, e.g. ``{"deleted message": 2}``."""

    def __init__(self, conversations=(), dropped: dict[str, int] | None = None) -> None:
        super().__init__(conversations)
        self.dropped = dict(dropped or {})


def register_detector(name: str) -> Callable:
    """``@register_detector("alpaca")`` on a ``(row) -> bool`` function."""

    def add(fn: Callable[[Any], bool]) -> Callable[[Any], bool]:
        DETECTORS[name] = fn
        return fn

    return add


def detect_format(rows: list[Any]) -> str:
    """The format whose detector accepts the most of ``rows`` (the first rows of a file;
    a broken row among them does not hide the format); ties go to the more specific one.

    >>> detect_format([{"instruction": "Hi", "input": "", "output": "Hello"}])
    'alpaca'
    """
    if not rows:
        raise DataError("no records to detect the format from", hint="pass --format or check the file")
    scores = {name: sum(bool(accepts(row)) for row in rows) for name, accepts in DETECTORS.items()}
    best = max(scores, key=scores.get)  # max keeps the first of equal scores
    if scores[best]:
        return best
    keys = sorted({key for row in rows if isinstance(row, dict) for key in row})
    raise DataError(
        f"cannot detect the format from keys {keys}",
        hint=f"pass --format, one of: {', '.join(FORMATS.names())}",
        reason="unknown format",
    )


# --- field helpers shared by readers -------------------------------------------------

def require(row: dict, key: str, kind: type | tuple = str, *, field: str | None = None) -> Any:
    """``row[key]``, which must exist and be of ``kind``; else a DataError naming the field."""
    field = field or key
    if not isinstance(row, dict):  # the fault is the value holding the field: the record itself at the top
        parent = field.rsplit(".", 1)[0] if "." in field else None
        raise DataError(f"expected an object, got {_json_value(row)}", field=parent,
                        hint=f"make '{parent}' a JSON object" if parent else "each record must be a JSON object",
                        reason="wrong type")
    if key not in row or row[key] is None:
        raise DataError("missing field", field=field, hint=f"add a '{key}' value to the record",
                        reason="missing field")
    return check_type(row[key], kind, field)


def optional(row: dict, key: str, kind: type | tuple = str, default: Any = "") -> Any:
    """``row[key]`` if present and not null (then it must be of ``kind``), else ``default``."""
    if row.get(key) is None:
        return default
    return check_type(row[key], kind, key)


def check_type(value: Any, kind: type | tuple, field: str) -> Any:
    """``value`` when it is a ``kind`` (never a boolean); else a ``DataError`` in JSON's words.

    >>> check_type(5, str, "instruction")
    Traceback (most recent call last):
    sftlab.errors.DataError: <data>: field 'instruction': expected a string, got a number (5) (fix: make 'instruction' a JSON string)
    """
    if isinstance(value, bool) or not isinstance(value, kind):
        kinds = (kind,) if isinstance(kind, type) else kind
        expected = " or ".join(f"a{'n' if _json_name(k)[0] in 'ao' else ''} {_json_name(k)}" for k in kinds)
        raise DataError(f"expected {expected}, got {_json_value(value)}", field=field,
                        hint=f"make '{field}' a JSON {_json_name(kinds[0])}", reason="wrong type")
    return value


def _json_name(kind: type) -> str:
    return {str: "string", list: "array", dict: "object", int: "number", float: "number",
            bool: "boolean"}.get(kind, kind.__name__)


def _json_value(value: Any) -> str:
    """What a JSON reader calls ``value``, with a short excerpt of scalars: ``a number (5)``."""
    if value is None:
        return "null"
    name = _json_name(type(value)) if not isinstance(value, bool) else "boolean"
    article = "an" if name[0] in "ao" else "a"
    shown = f" ({json.dumps(value)[:40]})" if isinstance(value, (int, float, str)) else ""
    return f"{article} {name}{shown}"


def record_id(row: dict) -> str | None:
    """A record's own id (``id`` field, string or number), or None."""
    value = row.get("id") if isinstance(row, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def extra_fields(row: dict, used: set[str]) -> dict[str, Any]:
    """Top-level fields a reader does not consume: they go to ``Conversation.meta``."""
    return {key: value for key, value in row.items() if key not in used}


def join_input(instruction: str, extra: str, options: ReadOptions) -> str:
    """One user turn from an instruction and optional input/context."""
    return f"{instruction}{options.user_input_separator}{extra}" if extra.strip() else instruction


def answer(row: dict, key: str, options: ReadOptions) -> list[Message]:
    """The assistant turn from ``row[key]``: required for training data; for prompts
    (``require_assistant=False``) an absent answer gives no turn at all."""
    if options.require_assistant:
        return [Message("assistant", require(row, key))]
    text = optional(row, key, str, None)
    return [] if text is None else [Message("assistant", text)]


# --- the one validation shared by every reader -----------------------------------------

def canonical_field(index: int, key: str) -> str:
    return f"messages[{index}].{key}"


def validate(conversation: Conversation, *, require_assistant: bool = True,
             field_name: Callable[[int, str], str] = canonical_field) -> Conversation:
    """Check roles, types and turn order; return the conversation or raise ``DataError``.

    Rules: roles are system/user/assistant/tool; a system turn only comes first; user and
    assistant alternate starting with user; contents are strings. An assistant turn with
    tool calls is followed by one or more tool turns and then an assistant turn (which may
    call tools again), or by a user turn (results written as text, e.g. Hermes
    ``<tool_response>``), or ends the conversation; a tool turn anywhere else, or a
    ``tool_call_id`` that matches none of the preceding calls' ids, is an error. Only
    assistant turns carry tool calls or reasoning. With ``require_assistant`` (training
    data) the last turn is assistant and no assistant turn is empty (one with tool calls
    may have empty content). ``field_name(index, "role"|"content"|"tool_call_id")`` names
    a message's field in the source format (``conversations[3].from`` for ShareGPT).
    """
    messages = conversation.messages
    if not messages:
        raise DataError("conversation has no messages", field=field_name(0, "role").split("[")[0],
                        hint="add at least a user and an assistant turn", reason="empty conversation")
    for index, message in enumerate(messages):
        _check_message(index, message, field_name, require_assistant)
    _check_order(messages, field_name)
    if require_assistant and messages[-1].role != "assistant":
        raise DataError(f"the last turn is {messages[-1].role}, not assistant",
                        field=field_name(len(messages) - 1, "role"),
                        hint="end each record with the assistant's answer", reason="no final assistant turn")
    return conversation


def _check_message(index: int, message: Message, field_name, require_assistant: bool) -> None:
    if message.role not in ROLES:
        raise DataError(f"unknown role '{message.role}'", field=field_name(index, "role"),
                        hint=f"use one of {', '.join(ROLES)}", reason="unknown role")
    if not isinstance(message.content, str):
        raise DataError(f"content must be a string, got {type(message.content).__name__}",
                        field=field_name(index, "content"), hint="make the message text a JSON string",
                        reason="wrong type")
    if message.role != "assistant" and (message.tool_calls or message.reasoning is not None):
        what = "tool calls" if message.tool_calls else "reasoning"
        raise DataError(f"a {message.role} turn (message {index}) carries {what}; only assistant turns do",
                        field=field_name(index, "role"), hint=f"move the {what} to an assistant turn",
                        reason="misplaced tool call" if message.tool_calls else "misplaced reasoning")
    if (require_assistant and message.role == "assistant" and not message.content.strip()
            and not message.tool_calls):
        raise DataError(f"assistant turn (message {index}) is empty", field=field_name(index, "content"),
                        hint="fill in the answer or drop the record", reason="empty assistant turn")


# which roles may come next, by what came last (see ``validate``)
_NEXT = {"user": ("user",), "assistant": ("assistant",), "calls": ("tool", "user"), "results": ("tool", "assistant")}


def _check_order(messages: list[Message], field_name) -> None:
    state, calls = "user", ()
    for index, message in enumerate(messages):
        if message.role == "system":
            if index != 0:
                raise DataError(f"system turn at message {index}; only the first turn may be system",
                                field=field_name(index, "role"),
                                hint="move the system prompt to the start", reason="misplaced system turn")
            continue
        if message.role not in _NEXT[state]:
            raise _order_error(messages, index, _NEXT[state], field_name)
        if message.role == "tool":
            _check_call_id(message, calls, index, field_name)
            state = "results"
        elif message.role == "assistant":
            state, calls = ("calls", message.tool_calls) if message.tool_calls else ("user", ())
        else:
            state = "assistant"


def _order_error(messages: list[Message], index: int, allowed: tuple[str, ...], field_name) -> DataError:
    role = messages[index].role
    if role == "tool":
        return DataError(f"tool turn at message {index} does not follow an assistant turn with tool calls",
                         field=field_name(index, "role"),
                         hint="put tool results right after the assistant turn that makes the calls",
                         reason="misplaced tool turn")
    previous = messages[index - 1].role if index else "start"
    what = (f"two {role} turns in a row at message {index}" if previous == role
            else f"message {index} is {role} but {' or '.join(allowed)} was expected")
    return DataError(what, field=field_name(index, "role"),
                     hint="user and assistant turns must alternate, starting with user (tool turns "
                          "follow an assistant turn with tool calls)", reason="roles do not alternate")


def _check_call_id(message: Message, calls: tuple[ToolCall, ...], index: int, field_name) -> None:
    ids = [call.id for call in calls if call.id is not None]
    if message.tool_call_id is not None and ids and message.tool_call_id not in ids:
        raise DataError(f"tool turn {index} answers call '{message.tool_call_id}', but the assistant "
                        f"turn before it made calls {ids}", field=field_name(index, "tool_call_id"),
                        hint="give the id of one of the preceding calls", reason="unknown tool_call_id")


def finish(conversation: Conversation, options: ReadOptions,
           field_name: Callable[[int, str], str] = canonical_field) -> Conversation:
    """Validate with the reader's own field names (the driver validates again generically)."""
    return validate(conversation, require_assistant=options.require_assistant, field_name=field_name)


# --- readers ----------------------------------------------------------------------------

ALPACA_FIELDS = {"instruction", "input", "output", "system", "history", "id"}


@FORMATS.register("alpaca")
def read_alpaca(row: dict, options: ReadOptions) -> list[Conversation]:
    """Stanford Alpaca / LLaMA-Factory alpaca. A row of ``alpaca_en_demo.json``::

        {"instruction": "Describe a process of making crepes.", "input": "",
         "output": "Making crepes is an easy and delicious process! ..."}

    Optional ``system`` (string) and ``history`` (``[[user, assistant], ...]``, the turns
    before this one). ``input`` joins the instruction as one user turn.
    """
    instruction = require(row, "instruction")
    user = join_input(instruction, optional(row, "input"), options)
    messages = _system(optional(row, "system")) + _history(optional(row, "history", list, []))
    messages += [Message("user", user)] + answer(row, "output", options)
    conversation = Conversation(messages, id=record_id(row), meta=extra_fields(row, ALPACA_FIELDS))
    return [finish(conversation, options, _alpaca_field(conversation))]


def _system(text: str) -> list[Message]:
    return [Message("system", text)] if text else []


def _history(history: list) -> list[Message]:
    """``[[user, assistant], ...]`` -> messages; each pair must hold two strings."""
    messages = []
    for turn, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise DataError(f"expected a [user, assistant] pair, got {pair!r:.60}", field=f"history[{turn}]",
                            hint="write history as a list of [user, assistant] pairs", reason="wrong type")
        user = check_type(pair[0], str, f"history[{turn}][0]")
        assistant = check_type(pair[1], str, f"history[{turn}][1]")
        messages += [Message("user", user), Message("assistant", assistant)]
    return messages


def _alpaca_field(conversation: Conversation) -> Callable[[int, str], str]:
    """Message index -> the alpaca field it came from (system, history[k][j], instruction, output)."""
    offset = 1 if conversation.messages[0].role == "system" else 0
    last = len(conversation.messages) - 1
    answered = conversation.messages[-1].role == "assistant"  # a prompt row has no output
    instruction = last - 1 if answered else last

    def name(index: int, key: str) -> str:
        if answered and index == last:
            return "output"
        if index == instruction:
            return "instruction"
        if index < offset:
            return "system"
        turn, side = divmod(index - offset, 2)
        return f"history[{turn}][{side}]"

    return name


@FORMATS.register("dolly")
def read_dolly(row: dict, options: ReadOptions) -> list[Conversation]:
    """Databricks Dolly 15k. A row::

        {"instruction": "When did Virgin Australia start operating?",
         "context": "Virgin Australia ... commenced services on 31 August 2000 ...",
         "response": "Virgin Australia commenced services on 31 August 2000.",
         "category": "closed_qa"}

    ``context`` joins the instruction as one user turn; ``category`` goes to ``meta``.
    """
    user = join_input(require(row, "instruction"), optional(row, "context"), options)
    messages = [Message("user", user)] + answer(row, "response", options)
    meta = extra_fields(row, {"instruction", "context", "response", "id"})
    field = {0: "instruction", 1: "response"}
    conversation = Conversation(messages, id=record_id(row), meta=meta)
    return [finish(conversation, options, lambda index, key: field[index])]


# roles of other formats that mean the same as ours
ROLE_ALIASES = {
    "system": "system", "user": "user", "assistant": "assistant",
    "human": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant", "developer": "system", "tool": "tool",
    "observation": "tool",
}
SHAREGPT_ROLES = ("human", "user", "gpt", "assistant", "chatgpt", "bing", "bard", "system")
# LLaMA-Factory's tool turns (and "tool", as Hermes function-calling data writes results)
SHAREGPT_TOOL_ROLES = ("function_call", "observation", "tool")
# the reasoning fields of an assistant message (DeepSeek / vLLM, OpenRouter, Anthropic-style)
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


@FORMATS.register("openai")
def read_openai(row: dict | list, options: ReadOptions) -> list[Conversation]:
    """OpenAI chat fine-tuning format (also TRL "conversational"). A row::

        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "Capital of France?"},
                      {"role": "assistant", "content": "Paris."}]}

    A bare list of messages is accepted as the row too. ``developer`` means system.
    Tool use (OpenAI's API shape)::

        {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}],
         "messages": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1",
                       "type": "function", "function": {"name": "get_weather",
                                                        "arguments": "{\"city\": \"Paris\"}"}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
                      {"role": "assistant", "content": "It is 18 C and sunny."}]}
    """
    if isinstance(row, list):
        row = {"messages": row}
    messages = parse_messages(require(row, "messages", list), "messages",
                              hermes_calls=options.parse_hermes_tool_calls)
    meta = extra_fields(row, {"messages", "id", "tools"})
    conversation = Conversation(messages, id=record_id(row), meta=meta, tools=_tools(row))
    return [finish(conversation, options)]


def _tools(row: dict, key: str = "tools") -> list[dict] | None:
    """The row's tool list in OpenAI's shape, or None when it has none."""
    return normalize_tools(row[key], key) or None if row.get(key) is not None else None


def parse_messages(value: Any, field: str = "messages", *, hermes_calls: bool = True) -> list[Message]:
    """OpenAI-style messages -> ``Message`` list: the one message parser of sftlab.

    ``value`` is ``[{"role": "system"|"user"|"assistant"|"developer"|"tool", "content": str or
    [{"type": "text", "text"|"value": ...}], "weight"|"loss_weight"|"train": 0|1}, ...]``;
    ``developer`` means system; the optional weight is the turn's loss weight (``Message.weight``).
    An assistant message may carry ``tool_calls`` (then ``content`` may be null or absent)
    and its reasoning (``reasoning_content``, ``reasoning``, ``thinking`` or a leading
    ``<think>`` block); a tool message ``tool_call_id`` and ``name``. With ``hermes_calls``
    an assistant's ``<tool_call>`` text becomes tool calls.
    A bad item raises ``DataError`` naming it under ``field`` (``messages[1].role``,
    ``prompt[0].content``).
    Turn order is not checked here (``validate`` does that).

    >>> parse_messages([{"role": "user", "content": "Hi"}])
    [Message(role='user', content='Hi')]
    """
    check_type(value, list, field)
    return [_openai_message(item, f"{field}[{index}]", hermes_calls) for index, item in enumerate(value)]


def parse_turns(value: Any, field: str, role: str) -> list[Message]:
    """A string (one turn of ``role``) or an OpenAI-style message list, e.g. the ``prompt``
    and ``completion`` of a prompt-completion row or a preference pair's ``chosen``."""
    if isinstance(value, str):
        return [Message(role, value)]
    return parse_messages(value, field)


def _openai_message(item: Any, field: str, hermes_calls: bool = True) -> Message:
    role = require(item, "role", field=f"{field}.role")
    if role not in ("system", "user", "assistant", "developer", "tool"):
        raise DataError(f"unknown role '{role}'", field=f"{field}.role",
                        hint="use system, user, assistant or tool", reason="unknown role")
    role = ROLE_ALIASES[role]
    if role != "assistant" and item.get("tool_calls"):
        raise DataError(f"a {role} message has tool_calls; only assistant messages call tools",
                        field=f"{field}.tool_calls", hint="move the calls to an assistant message or drop them",
                        reason="misplaced tool call")
    calls = tool_calls_field(item, field) if role == "assistant" else []
    if calls and item.get("content") is None:  # OpenAI's API sends null content with calls
        content = ""
    else:
        content = _text_content(require(item, "content", (str, list), field=f"{field}.content"), field)
    weight = _loss_weight(item, role, field)
    if role == "tool":
        return Message("tool", content, weight, tool_call_id=_optional_text(item, "tool_call_id", field),
                       name=_optional_text(item, "name", field))
    if role != "assistant":
        return Message(role, content, weight)
    return assistant_message(content, f"{field}.content", weight=weight, calls=calls, hermes_calls=hermes_calls,
                             reasoning=_reasoning_field(item, field))


def _optional_text(item: dict, key: str, field: str) -> str | None:
    return None if item.get(key) is None else check_type(item[key], str, f"{field}.{key}")


def tool_calls_field(item: dict, field: str) -> list[ToolCall]:
    """An OpenAI message's ``tool_calls`` (absent or null: none)."""
    calls = item.get("tool_calls")
    if not calls:
        return []
    return parse_tool_calls(check_type(calls, list, f"{field}.tool_calls"), f"{field}.tool_calls")


def _reasoning_field(item: dict, field: str) -> tuple[str, str] | None:
    """``(key, text)`` of the message's one reasoning field, or None."""
    given = [key for key in REASONING_KEYS if item.get(key) is not None]
    if len(given) > 1:
        raise DataError(f"several reasoning fields ({', '.join(given)})", field=f"{field}.{given[1]}",
                        hint="give the reasoning once", reason="several reasoning fields")
    return (f"{field}.{given[0]}", check_type(item[given[0]], str, f"{field}.{given[0]}")) if given else None


def assistant_message(content: str, content_field: str, *, weight: int = 1, calls: list[ToolCall] = (),
                      hermes_calls: bool = True, reasoning: tuple[str, str] | None = None) -> Message:
    """An assistant turn from its text: a leading ``<think>`` block becomes the reasoning (an
    error if ``reasoning``, ``(field, text)``, was given too); with ``hermes_calls`` and no
    structured ``calls``, ``<tool_call>`` blocks become the calls."""
    thought, rest = split_reasoning(content, implicit_open=False)
    if thought is not None:
        if reasoning is not None:
            raise DataError("the reasoning is given twice: in a <think> block and a reasoning field",
                            field=reasoning[0], hint="keep one of them", reason="several reasoning fields")
        content = rest
    elif reasoning is not None:
        thought = reasoning[1]
    if hermes_calls and not calls and "<tool_call>" in content:
        try:
            content, calls = parse_hermes_calls(content)
        except DataError as error:
            error.field = content_field
            raise
    return Message("assistant", content, weight, tool_calls=tuple(calls), reasoning=thought)


# the per-message loss-weight keys: OpenAI fine-tuning, LLaMA-Factory v1, Axolotl
WEIGHT_KEYS = ("weight", "loss_weight", "train")


def _loss_weight(item: dict, role: str, field: str) -> int:
    """The message's loss weight, 0 or 1 (1 when it gives none).

    A weight-0 turn is context only; a non-assistant turn is never trained, so its weight may
    be 0 but not 1.
    """
    given = [key for key in WEIGHT_KEYS if key in item]
    if not given:
        return 1
    if len(given) > 1:
        raise DataError(f"several loss weights ({', '.join(given)})", field=f"{field}.{given[0]}",
                        hint="give one of weight, loss_weight or train", reason="bad loss weight")
    key = given[0]
    value = item[key]
    if not isinstance(value, (bool, int, float)) or value not in (0, 1):
        raise DataError(f"loss weight {value!r} is not 0 or 1 (fractional weights are not supported yet)",
                        field=f"{field}.{key}", hint="use 0 (context only) or 1 (trained)",
                        reason="bad loss weight")
    weight = int(value)
    if role != "assistant" and weight == 1:
        raise DataError(f"a {role} turn has loss weight 1, but only assistant turns are trained",
                        field=f"{field}.{key}", hint="drop the weight or set it to 0",
                        reason="bad loss weight")
    return weight


def _text_content(content: str | list, field: str) -> str:
    """A string, or text content parts joined: OpenAI's ``[{"type": "text", "text": ...}]``
    or LLaMA-Factory v1's ``[{"type": "text", "value": ...}]``."""
    if isinstance(content, str):
        return content
    return "".join(_part_text(part, f"{field}.content[{index}]") for index, part in enumerate(content))


def _part_text(part: Any, field: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind != "text":
        what = f"a '{kind}' content part" if isinstance(kind, str) else "a content part without type 'text'"
        raise DataError(f"{what} is not supported: only text parts are (multimodal data is not yet)",
                        field=field, hint="use a plain string or {'type': 'text', 'text': ...} parts",
                        reason="wrong type")
    key = "text" if "text" in part else "value"
    return require(part, key, field=f"{field}.{key}")


@FORMATS.register("sharegpt")
def read_sharegpt(row: dict, options: ReadOptions) -> list[Conversation]:
    """ShareGPT / Vicuna. A row of ``sharegpt_dummy_conversation.json``::

        {"id": "identity_0", "conversations": [
            {"from": "human", "value": "Who are you?"},
            {"from": "gpt", "value": "I am Vicuna, a language model trained by ..."}]}

    ``from``: human/user -> user; gpt/assistant/chatgpt/bing/bard -> assistant; system.
    An optional top-level ``system`` string (LLaMA-Factory) becomes the first turn.

    LLaMA-Factory's tool data (the glaive demo): ``function_call`` (``value`` the JSON of
    ``{"name", "arguments"}``, or a JSON list of several) is an assistant turn with tool
    calls and empty content; ``observation`` (or ``tool``) is a tool turn; the top-level
    ``tools`` string lists the functions::

        {"conversations": [{"from": "human", "value": "Tip on a $50 bill at 15%?"},
                           {"from": "function_call", "value": "{\"name\": \"calculate_tip\", ...}"},
                           {"from": "observation", "value": "{\"tip_amount\": 7.5}"},
                           {"from": "gpt", "value": "The tip is $7.5."}],
         "tools": "[{\"name\": \"calculate_tip\", \"description\": ..., \"parameters\": {...}}]"}
    """
    turns = require(row, "conversations", list)
    messages = [sharegpt_message(item, f"conversations[{index}]", options) for index, item in enumerate(turns)]
    system = _system(optional(row, "system"))
    meta = extra_fields(row, {"conversations", "system", "id", "tools"})
    conversation = Conversation(system + messages, id=record_id(row), meta=meta, tools=_tools(row))

    def field_name(index: int, key: str) -> str:
        if index < len(system):
            return "system"
        return f"conversations[{index - len(system)}].{'from' if key == 'role' else 'value'}"

    return [finish(conversation, options, field_name)]


def sharegpt_turns(row: dict, options: ReadOptions | None = None) -> list[Message]:
    """A ShareGPT row's optional top-level ``system`` and its ``conversations`` turns as
    messages (turn order unchecked): the prompt part of preference and unpaired rows."""
    turns = require(row, "conversations", list)
    if not turns:
        raise DataError("must be a non-empty list of {from, value} turns", field="conversations",
                        hint="give at least the user turn", reason="bad conversations")
    messages = [sharegpt_message(item, f"conversations[{index}]", options) for index, item in enumerate(turns)]
    return _system(optional(row, "system")) + messages


def sharegpt_message(item: Any, field: str, options: ReadOptions | None = None) -> Message:
    """One ShareGPT turn ``{"from", "value"}`` (``field`` names it in errors:
    ``conversations[3]``, ``chosen``)."""
    options = options or ReadOptions()
    if not isinstance(item, dict):
        raise DataError('missing or malformed: expected {"from": ..., "value": ...}', field=field,
                        hint="write each turn as an object with 'from' and 'value'", reason="wrong type")
    speaker = require(item, "from", field=f"{field}.from")
    if speaker not in SHAREGPT_ROLES + SHAREGPT_TOOL_ROLES:
        raise DataError(f"unknown speaker '{speaker}'", field=f"{field}.from",
                        hint=f"use one of {', '.join(SHAREGPT_ROLES)}", reason="unknown role")
    value = require(item, "value", field=f"{field}.value")
    if speaker == "function_call":
        return Message("assistant", "", tool_calls=tuple(parse_tool_calls(value, f"{field}.value")))
    role = ROLE_ALIASES[speaker]
    if role == "assistant":
        return assistant_message(value, f"{field}.value", hermes_calls=options.parse_hermes_tool_calls)
    return Message(role, value)


@FORMATS.register("prompt_completion")
def read_prompt_completion(row: dict, options: ReadOptions) -> list[Conversation]:
    """Prompt-completion pairs (OpenAI legacy, TRL "prompt-completion"). A row::

        {"prompt": "Translate to French: cheese", "completion": "fromage"}

    TRL's conversational variant (``prompt`` and ``completion`` as message lists) works too.
    """
    messages = parse_turns(require(row, "prompt", (str, list)), "prompt", "user")
    if options.require_assistant or row.get("completion") is not None:
        completion = require(row, "completion", (str, list))
        messages += parse_turns(completion, "completion", "assistant")
    meta = extra_fields(row, {"prompt", "completion", "id"})
    return [finish(Conversation(messages, id=record_id(row), meta=meta), options)]


@FORMATS.register("xp3")
def read_xp3(row: dict, options: ReadOptions) -> list[Conversation]:
    """xP3 / Flan-style templated tasks: one input, one target. A row::

        {"inputs": "Premise: ... Hypothesis: ... Does the premise entail the hypothesis?",
         "targets": "yes", "language": "en", "template": "GPT-3 style", "dataset": "anli"}
    """
    messages = [Message("user", require(row, "inputs"))] + answer(row, "targets", options)
    meta = extra_fields(row, {"inputs", "targets", "id"})
    field = {0: "inputs", 1: "targets"}
    conversation = Conversation(messages, id=record_id(row), meta=meta)
    return [finish(conversation, options, lambda index, key: field[index])]


@FORMATS.register("canonical")
def read_canonical(row: dict, options: ReadOptions) -> list[Conversation]:
    """sftlab's own JSONL (what ``sftlab data convert --to jsonl`` writes). A row::

        {"id": "alpaca_en_demo-0", "source": "alpaca_en_demo.json",
         "messages": [{"role": "user", "content": "Describe a process of making crepes."},
                      {"role": "assistant", "content": "Making crepes is ..."}],
         "meta": {}}
    """
    messages = parse_messages(require(row, "messages", list), "messages",
                              hermes_calls=options.parse_hermes_tool_calls)
    conversation = Conversation(messages, id=record_id(row), source=optional(row, "source", str, None),
                                meta=dict(optional(row, "meta", dict, {})), tools=_tools(row))
    return [finish(conversation, options)]


@FORMATS.register("xlam")
def read_xlam(row: dict, options: ReadOptions) -> list[Conversation]:
    """Salesforce xLAM function-calling rows (APIGen): one query answered by tool calls. A row::

        {"id": 0, "query": "Where can I find live giveaways for beta access?",
         "tools": "[{\"name\": \"live_giveaways_by_type\", \"description\": ...,
                     \"parameters\": {\"type\": {...}}}]",
         "answers": "[{\"name\": \"live_giveaways_by_type\", \"arguments\": {\"type\": \"beta\"}}]"}

    ``tools`` and ``answers`` are JSON strings (or already lists); the answer is one
    assistant turn that makes every call of ``answers``, with empty content.
    """
    messages = [Message("user", require(row, "query"))]
    answers = require(row, "answers", (str, list))
    calls = parse_tool_calls(answers, "answers")
    if not calls and options.require_assistant:
        raise DataError("no calls in 'answers'", field="answers", hint="give at least one {name, arguments} call",
                        reason="empty assistant turn")
    messages.append(Message("assistant", "", tool_calls=tuple(calls)))
    meta = extra_fields(row, {"query", "tools", "answers", "id"})
    conversation = Conversation(messages, id=record_id(row), meta=meta, tools=_tools(row))
    return [finish(conversation, options, lambda index, key: "query" if index == 0 else "answers")]


# --- Open Assistant message trees -------------------------------------------------------

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@FORMATS.register("oasst")
def read_oasst(row: dict, options: ReadOptions) -> ConversationList:
    """Open Assistant message trees: a prompt with nested ``replies``. A row of
    ``oasst_en_100_tree.jsonl`` (shortened)::

        {"message_tree_id": "054e1df3-...", "tree_state": "ready_for_export",
         "prompt": {"message_id": "054e1df3-...", "role": "prompter",
                    "text": "How can I find the best 401k plan for my needs?",
                    "deleted": false, "review_result": true,
                    "replies": [{"message_id": "fa783ef0-...", "role": "assistant", "rank": 0,
                                 "text": "The first step is ...", "replies": []}, ...]}}

    Every root-to-leaf thread becomes one conversation (a trailing prompter turn with no
    answer is cut off), id ``<message_tree_id>-<k>``. With ``oasst_best_path`` only the
    thread that follows the best-ranked reply (lowest ``rank``; the first reply where
    ranks are missing), id ``<message_tree_id>-best``. Deleted or unreviewed messages are
    dropped with their subtree unless ``oasst_keep_deleted`` / ``oasst_keep_unreviewed``;
    the drops are counted in ``ConversationList.dropped``.
    """
    tree_id = str(require(row, "message_tree_id"))
    root = require(row, "prompt", dict)
    dropped: dict[str, int] = {}
    kept = _prune(root, options, dropped, "prompt")
    if kept is None:
        return ConversationList([], dropped)
    if options.oasst_best_path:
        threads = {"best": _best_thread(kept)}
    else:
        threads = {str(index): thread for index, thread in enumerate(_all_threads(kept))}
    conversations = [_oasst_conversation(thread, f"{tree_id}-{key}", tree_id, options)
                     for key, thread in threads.items() if thread]
    return ConversationList(conversations, dropped)


def _prune(root: dict, options: ReadOptions, dropped: dict[str, int], field: str) -> dict | None:
    """A copy of the tree without dropped subtrees (None if the root itself is dropped);
    checks role and text on the way, so later steps can trust the tree. Walks with a stack,
    not recursion: a tree can be thousands of messages deep."""
    kept_root = None
    stack: list[tuple[Any, _Place, list | None]] = [(root, (None, field), None)]
    while stack:
        message, place, siblings = stack.pop()
        _check_oasst_message(message, place)
        reason = _drop_reason(message, options)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        replies = optional(message, "replies", list, [])
        kept = {**message, "replies": []}
        if siblings is None:
            kept_root = kept
        else:
            siblings.append(kept)
        stack += [(replies[index], (place, f"replies[{index}]"), kept["replies"])
                  for index in reversed(range(len(replies)))]
    return kept_root


_Place = tuple  # (parent place or None, "prompt" | "replies[i]"): a field name built only on error


def _field(place: _Place) -> str:
    parts = []
    while place is not None:
        place, part = place
        parts.append(part)
    return ".".join(reversed(parts))


def _check_oasst_message(message: Any, place: _Place) -> None:
    if isinstance(message, dict) and message.get("role") in OASST_ROLES and isinstance(message.get("text"), str):
        return
    where = _field(place)
    role = require(message, "role", field=f"{where}.role")
    if role not in OASST_ROLES:
        raise DataError(f"unknown role '{role}'", field=f"{where}.role",
                        hint="Open Assistant roles are prompter and assistant", reason="unknown role")
    require(message, "text", field=f"{where}.text")


def _drop_reason(message: dict, options: ReadOptions) -> str | None:
    # A missing review_result means the export carries no review data: keep the message.
    if message.get("deleted") is True and not options.oasst_keep_deleted:
        return "oasst deleted message"
    if "review_result" in message and message["review_result"] is not True and not options.oasst_keep_unreviewed:
        return "oasst unreviewed message"
    return None


def _ends_thread(root: dict) -> set[int]:
    """``id`` of every message with an assistant message at or below it: a thread can end
    in its subtree (a trailing prompter turn with no answer is cut off)."""
    order, stack = [], [root]
    while stack:
        message = stack.pop()
        order.append(message)
        stack += message["replies"]
    ends: set[int] = set()
    for message in reversed(order):  # children before parents
        if message["role"] == "assistant" or any(id(reply) in ends for reply in message["replies"]):
            ends.add(id(message))
    return ends


def _all_threads(root: dict) -> list[list[dict]]:
    """Every root-to-leaf path that ends on an assistant message, in depth-first order."""
    ends = _ends_thread(root)
    threads, stack = [], [[root]] if id(root) in ends else []
    while stack:
        path = stack.pop()
        below = [reply for reply in path[-1]["replies"] if id(reply) in ends]
        if not below:
            threads.append(path)
        stack += [path + [reply] for reply in reversed(below)]
    return threads


def _best_thread(root: dict) -> list[dict]:
    """Follow the lowest-ranked reply at each step (ties and missing ranks: reply order)."""
    ends = _ends_thread(root)
    path = [root] if id(root) in ends else []
    while path:
        below = [(index, reply) for index, reply in enumerate(path[-1]["replies"]) if id(reply) in ends]
        if not below:
            break
        path.append(min(below, key=lambda item: (_rank(item[1]), item[0]))[1])
    return path


def _rank(message: dict) -> float:
    rank = message.get("rank")
    return rank if isinstance(rank, (int, float)) and not isinstance(rank, bool) else float("inf")


def _oasst_conversation(thread: list[dict], conversation_id: str, tree_id: str,
                        options: ReadOptions) -> Conversation:
    messages = [Message(OASST_ROLES[message["role"]], message["text"]) for message in thread]
    meta = {"message_tree_id": tree_id, "message_ids": [message.get("message_id") for message in thread],
            "lang": thread[0].get("lang")}
    return finish(Conversation(messages, id=conversation_id, meta=meta), options)


# --- detectors, most specific first -----------------------------------------------------

def _has(row: Any, *keys: str) -> bool:
    return isinstance(row, dict) and all(key in row for key in keys)


register_detector("xlam")(lambda row: _has(row, "query", "answers", "tools"))
register_detector("oasst")(lambda row: _has(row, "message_tree_id", "prompt") and isinstance(row["prompt"], dict))
register_detector("canonical")(lambda row: _has(row, "messages", "meta"))
register_detector("openai")(lambda row: _has(row, "messages") or (isinstance(row, list) and all(
    _has(item, "role", "content") for item in row)))
register_detector("sharegpt")(lambda row: _has(row, "conversations"))
register_detector("dolly")(lambda row: _has(row, "instruction", "response"))
register_detector("alpaca")(lambda row: _has(row, "instruction", "output"))
register_detector("prompt_completion")(lambda row: _has(row, "prompt", "completion"))
register_detector("xp3")(lambda row: _has(row, "inputs", "targets"))


# Task collections (sftlab.data.tasks) come last: a tie in detection goes to a chat format.
FORMATS.register("self_instruct")(tasks.read_self_instruct)
register_detector("self_instruct")(tasks.is_self_instruct_row)
FORMATS.register("superni")(tasks.read_superni)
register_detector("superni")(tasks.is_superni_task)
