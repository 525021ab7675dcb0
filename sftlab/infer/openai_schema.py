"""The OpenAI API's shapes: request bodies (validated), response bodies and errors.

What ``sftlab.infer.server`` accepts and answers, in one place:

* ``ChatRequest`` (``POST /v1/chat/completions``) and ``CompletionRequest``
  (``POST /v1/completions``): pydantic models of the request JSON; their fields are the
  accepted fields, strictly typed. ``parse_request`` answers HTTP 400 for wrongly typed
  (``"max_tokens": "5"``) or out-of-range values, for an
  OpenAI field this server cannot honour (``UNSUPPORTED_FIELDS``: ``logprobs``,
  ``response_format``, ...) unless its value asks for nothing (``logprobs: false``), and,
  as OpenAI does, for unknown fields; ``IGNORED_FIELDS`` (``user``) are accepted and have
  no effect. ``param`` names the field. A body over ``max_bytes`` is 413, refused from its
  ``Content-Length`` before it is read (a chunked body is cut off at the limit).
  ``request.sampling(default_max_tokens)`` turns the OpenAI fields into a ``SamplingConfig``.
* ``chat_completion_body`` / ``completion_body``: the response JSON for a list of
  ``Generation`` (``n`` choices per prompt), with ``usage`` from ``usage_counts``.
* ``ApiError``: an error answered as ``{"error": {"message", "type", "param", "code"}}``.

Example::

    >>> body = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}],
    ...                                    "temperature": 0, "max_tokens": 8})
    >>> body.sampling(default_max_tokens=256).max_new_tokens
    8
    >>> usage_counts([Generation("Hello", 3, 2, "stop")])
    {'prompt_tokens': 3, 'completion_tokens': 2, 'total_tokens': 5}
"""
from __future__ import annotations

import json
import secrets
import time
import types
import typing
from typing import Any, Literal, Union

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.data.formats import ReadOptions, parse_messages
from sftlab.data.images import VisualConversation, has_images, read_visual
from sftlab.data.tools import normalize_tools
from sftlab.errors import DataError
from sftlab.infer.base import Generation, SamplingConfig
from sftlab.infer.parsing import Reply, parse_reply
from sftlab.types import Conversation

MAX_NEW_TOKENS_LIMIT = 4096
"""The largest ``max_tokens`` a request may ask for."""

UNSUPPORTED_FIELDS: dict[str, tuple] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "functions": (None, []), "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "web_search_options": (None,),
}
"""OpenAI request fields this server cannot honour, each with the values that ask for nothing
(accepted); any other value is HTTP 400 naming the field."""

IGNORED_FIELDS = frozenset({"user"})
"""Accepted and without effect: ``user`` only labels the end user for the caller's records."""


# -- request bodies ---------------------------------------------------------------------------


class _Sampling(BaseModel):
    """Fields shared by both endpoints (``model``: a served name; empty: the first one).
    Strict, as OpenAI is: ``"max_tokens": "5"`` or ``"stream": "yes"`` is 400, not converted
    (an int is still a float: ``"temperature": 1``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = ""
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def sampling(self, default_max_tokens: int) -> SamplingConfig:
        """The request's settings; OpenAI's defaults (temperature 1, top_p 1) where unset."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingConfig(
            max_new_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            # no seed: fresh randomness per call, as OpenAI does (-1, see HFGenerator)
            top_k=self.top_k or 0, seed=-1 if self.seed is None else self.seed, stop=stop)


class ChatRequest(_Sampling):
    """The body of ``POST /v1/chat/completions``.

    ``messages`` are parsed by sftlab's one message parser (``sftlab.data.formats.parse_messages``:
    tool turns, ``tool_calls``, content parts, reasoning), ``tools`` by ``normalize_tools``;
    ``conversation()`` gives both as one ``Conversation``. ``tool_choice``: ``auto`` (the
    default with tools: the reply's tool calls are parsed into ``tool_calls``) or ``none``
    (the tools are still shown to the model, its reply stays text). ``include_reasoning``
    (vLLM's option): return a reasoning block apart as ``message.reasoning``.
    """

    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    tools: list[Any] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None
    include_reasoning: bool = False

    def conversation(self) -> Conversation:
        """The request's messages and tools; ``ApiError`` 400 naming the bad field."""
        try:
            messages = parse_messages(self.messages, "messages")
            tools = normalize_tools(self.tools, "tools") if self.tools else None
        except DataError as exc:
            raise ApiError(400, f"{exc.field}: {exc.message}" if exc.field else exc.message,
                           param=exc.field) from None
        return Conversation(messages, tools=tools or None)

    def visual_conversation(self) -> VisualConversation | None:
        """The request as a ``VisualConversation`` when a message has image parts
        (``{"type": "image_url", "image_url": {"url": path | file:// URL | data:image/...;base64,...}}``),
        else None. ``ApiError`` 400 naming the field for a bad part (a remote URL, bad base64);
        the images load later, in the generator's ``encode`` (a bad or too large image is 400 there)."""
        if not has_images(self.messages):
            return None
        row = {"messages": self.messages, **({"tools": self.tools} if self.tools else {})}
        try:
            return read_visual(row, format="openai", options=ReadOptions(require_assistant=False))
        except DataError as exc:
            raise ApiError(400, f"{exc.field}: {exc.message}" if exc.field else exc.message,
                           param=exc.field) from None

    @property
    def parses_tool_calls(self) -> bool:
        """True when the reply's tool calls go to ``tool_calls``: tools given, choice not ``none``."""
        return bool(self.tools) and self.tool_choice != "none"


class CompletionRequest(_Sampling):
    """The body of ``POST /v1/completions``: one prompt or a list of them."""

    prompt: Union[str, list[str]]


# -- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


async def parse_request(request: Request, model: type[BaseModel], max_bytes: int):
    """The request's JSON body validated as ``model``: an ``ApiError`` 413 when it exceeds
    ``max_bytes``, 400 when it is malformed or has a field the server does not accept."""
    try:
        data = json.loads(await read_body(request, max_bytes))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(accepted_fields(data, model))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = first["loc"][0] if first["loc"] else None
        kinds = dict.fromkeys(str(e["loc"][1]) for e in exc.errors()
                              if len(e["loc"]) > 1 and e["loc"][0] == field)
        if kinds and _is_union(model, field):  # one error per member type, each loc naming it: ("stop", "str")
            raise ApiError(400, f"{field}: expected {' or '.join(kinds)}, got {json.dumps(data[field])[:80]}",
                           param=field) from None
        param = ".".join(str(part) for part in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


def _is_union(model: type[BaseModel], field: Any) -> bool:
    """True for a field typed as a union of several types besides None (``str | list[str]``)."""
    info = model.model_fields.get(field) if isinstance(field, str) else None
    members = typing.get_args(info.annotation) if info is not None and typing.get_origin(
        info.annotation) in (Union, types.UnionType) else ()
    return len([m for m in members if m is not type(None)]) > 1


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) from its declared ``Content-Length`` before any of it is read,
    or as soon as a chunked body passes ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {max_bytes} bytes, the most this server accepts",
                    code="request_too_large")


def accepted_fields(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """``data`` without the ignored fields and the unsupported ones that ask for nothing;
    an ``ApiError`` 400 naming the first field that is unsupported or unknown."""
    known = set(model.model_fields)
    kept = {}
    for key, value in data.items():
        if key in known:
            kept[key] = value
        elif key in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[key]:
            raise ApiError(400, f"{key}: not supported by this server (it accepts {', '.join(sorted(known))})",
                           param=key, code="unsupported_parameter")
        elif key not in UNSUPPORTED_FIELDS and key not in IGNORED_FIELDS:
            raise ApiError(400, f"{key}: unknown field (this server accepts {', '.join(sorted(known))})",
                           param=key, code="unknown_parameter")
    return kept


# -- response bodies --------------------------------------------------------------------------


def wants_usage(body: _Sampling) -> bool:
    """True when a streaming request asked for a final usage chunk (``stream_options``)."""
    return bool((body.stream_options or {}).get("include_usage"))


def usage_counts(results: list[Generation], n: int = 1) -> dict[str, int]:
    """``{"prompt_tokens", "completion_tokens", "total_tokens"}`` of ``results`` (``n`` per prompt)."""
    # the n copies of a prompt count its tokens once, as OpenAI does
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion_body(name: str, results: list[Generation], n: int = 1,
                         body: ChatRequest | None = None) -> dict[str, Any]:
    """The ``chat.completion`` response: one choice per result, in order; with ``body``, each
    reply is parsed as the request asks (tool calls, reasoning: ``reply_of``)."""
    replies = [reply_of(r, body) for r in results]
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "message": reply.message(), "finish_reason": finish_reason(r, reply),
                         "logprobs": None}
                        for i, (r, reply) in enumerate(zip(results, replies))],
            "usage": usage_counts(results, n)}


def reply_of(result: Generation, body: ChatRequest | None) -> Reply:
    """The generated text split as ``body`` asks: tool calls when it gave tools, reasoning
    when it set ``include_reasoning``; else the text as it is."""
    if body is None:
        return Reply(result.text)
    return parse_reply(result.text, tools=body.parses_tool_calls, reasoning=body.include_reasoning)


def finish_reason(result: Generation, reply: Reply) -> str:
    """OpenAI's ``tool_calls`` when the reply is tool calls, else the generation's own reason."""
    return "tool_calls" if reply.tool_calls and result.finish_reason == "stop" else result.finish_reason


def completion_body(name: str, results: list[Generation], n: int = 1) -> dict[str, Any]:
    """The ``text_completion`` response: one choice per result, in order."""
    return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                        for i, r in enumerate(results)],
            "usage": usage_counts(results, n)}
