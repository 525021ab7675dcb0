"""The OpenAI API's shapes: request bodies (validated), response bodies and errors.

What ``sftlab.infer.server`` accepts and answers, in one place:

* ``ChatRequest`` (``POST /v1/chat/completions``) and ``CompletionRequest``
  (``POST /v1/completions``): pydantic models of the request JSON. Unknown OpenAI fields
  are accepted and ignored; out-of-range values are HTTP 400 through ``parse_request``.
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
from typing import Any, Literal, Union

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.infer.base import Generation, SamplingConfig
from sftlab.types import Message

MAX_NEW_TOKENS_LIMIT = 4096
"""The largest ``max_tokens`` a request may ask for."""


# -- request bodies ---------------------------------------------------------------------------


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[_TextPart]]

    def to_message(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # OpenAI's newer name for the system role
        return Message("system" if self.role == "developer" else self.role, text)


class _Sampling(BaseModel):
    """Fields shared by both endpoints; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
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
    """The body of ``POST /v1/chat/completions``."""

    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)


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


async def parse_request(request: Request, model: type[BaseModel]):
    """The request's JSON body validated as ``model``; anything malformed is an ``ApiError`` 400."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


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


def chat_completion_body(name: str, results: list[Generation], n: int = 1) -> dict[str, Any]:
    """The ``chat.completion`` response: one choice per result, in order."""
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "finish_reason": r.finish_reason, "logprobs": None}
                        for i, r in enumerate(results)],
            "usage": usage_counts(results, n)}


def completion_body(name: str, results: list[Generation], n: int = 1) -> dict[str, Any]:
    """The ``text_completion`` response: one choice per result, in order."""
    return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                        for i, r in enumerate(results)],
            "usage": usage_counts(results, n)}
