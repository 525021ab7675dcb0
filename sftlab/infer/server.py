"""An OpenAI-compatible HTTP server over any ``Generator``, batching concurrent requests.

    sftlab serve default --port 8000                      # CLI
    handle = start_server("tiny", port=0)                 # Python: background thread, free port
    client = openai.OpenAI(base_url=handle.base_url, api_key="unused")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    handle.stop()

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with
``stream: true`` server-sent events), ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /health`` (no key needed: for load balancers) and ``GET /sftlab/stats`` (the size of
every batch run and the rows generating now, to see batching at work).

Batching: request handlers do not call the model. They render the chat template and
tokenise (``generator.encode``, in a worker thread, so a huge prompt stalls no one else),
then put a job of token ids on the queue of a ``sftlab.infer.batcher.Batcher``, whose one
worker thread waits ``batch_window_ms`` after the first request to collect others, groups
them by sampling settings and runs ONE ``generator.generate`` per group. Streaming requests
are batched the same way: the generator's ``on_text`` callback routes each row's new text
to its request's event stream. Request and response shapes (and the error body) live in
``sftlab.infer.openai_schema``.

Under abuse: a body over ``max_body_bytes`` is 413 before it is read; a prompt that cannot
fit the context is 400 ``context_length_exceeded`` before it reaches the batcher (a text
too long for any tokenisation to fit is refused without tokenising it); a model name the
server does not answer to is 404 ``model_not_found``; a client that hangs up has its rows
cancelled at their next token (streams at once, other requests within
``DISCONNECT_POLL_S``), which frees their batch slots.

Images: a chat message may hold ``{"type": "image_url", "image_url": {"url": ...}}`` parts (a
file path, a ``file://`` URL or a base64 ``data:image/png;base64,...`` URL; nothing is
downloaded) when the model is a vision model (``sftlab.infer.vision``); for a text-only
model such a request is 400 ``images_not_supported``. A missing, corrupt or too large image
(``MAX_PIXELS``), or image tokens that overflow the context, are 400 as well. File paths
are read by the server process: serve a vision model only to clients you would let read
its image files.

Errors: malformed requests get HTTP 400 (401 for a missing or wrong key when the server
has one) with the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``;
a failing generation answers 500 in the same shape and the server keeps running.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import uvicorn
from fastapi import FastAPI, Request  # Request at module level: FastAPI resolves handler annotations by name
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from sftlab.errors import SftlabError
from sftlab.infer.base import Generation, Prompt
from sftlab.infer.batcher import Batcher, Job
from sftlab.infer.hf import ImagesNotSupported, PromptTooLong
from sftlab.infer.backends import generator_for
from sftlab.infer.openai_schema import (ApiError, ChatRequest, CompletionRequest, chat_completion_body,
                                        completion_body, finish_reason, parse_request, reply_of, usage_counts,
                                        wants_usage)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Default largest request body (4 MiB): far more text than any context holds."""

DISCONNECT_POLL_S = 0.25
"""How often a non-streaming request checks that its client is still connected."""


# -- the app ----------------------------------------------------------------------------------


def create_app(generator, *, model_name: str | Sequence[str] | None = None, api_key: str | None = None,
               batch_window_ms: float = 10.0, default_max_tokens: int = 256,
               max_body_bytes: int = MAX_BODY_BYTES):
    """A FastAPI app serving ``generator``; ``app.state.batcher`` holds the batching worker.

    ``model_name``: the name (or names) requests may ask for; the first is reported in
    responses to requests that name none. Default: the generator's name.
    """
    names = [model_name] if isinstance(model_name, str) else list(model_name or [])
    names = names or [getattr(generator, "name", "sftlab")]
    batcher = Batcher(generator, window_ms=batch_window_ms)
    app = FastAPI(title="sftlab", description="OpenAI-compatible completions from an sftlab model")
    app.state.batcher = batcher
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return ApiError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error").response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else None
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    def served(model: str) -> str:
        """The name to answer with; 404 for a model this server does not serve."""
        if not model:
            return names[0]
        if model not in names:
            raise ApiError(404, f"The model '{model}' does not exist; this server serves {', '.join(names)}",
                           param="model", code="model_not_found")
        return model

    def card(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": created, "owned_by": "sftlab"}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [card(n) for n in names]}

    @app.get("/v1/models/{model:path}")
    async def model_card(model: str, request: Request):
        check_key(request)
        return card(served(model))

    @app.get("/sftlab/stats")
    async def stats(request: Request):
        check_key(request)
        return {"batch_sizes": list(batcher.batch_sizes), "in_flight": batcher.in_flight}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        body = await parse_request(request, ChatRequest, max_body_bytes)
        name = served(body.model)
        sampling = body.sampling(default_max_tokens)
        if body.max_completion_tokens:
            sampling.max_new_tokens = body.max_completion_tokens
        visual = body.visual_conversation()  # None without image parts
        conversation = body.conversation() if visual is None else visual.conversation
        prompt = visual if visual is not None else conversation if conversation.tools else conversation.messages
        prompt = await _encode(generator, prompt, sampling.max_new_tokens, "messages")
        job = Job([prompt] * body.n, sampling)
        if body.stream:
            return _stream(batcher, job, name, chat=True, usage=wants_usage(body), n=body.n, body=body)
        return chat_completion_body(name, await _wait(batcher, job, request), body.n, body)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        body = await parse_request(request, CompletionRequest, max_body_bytes)
        name = served(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        sampling = body.sampling(default_max_tokens)
        prompts = [await _encode(generator, t, sampling.max_new_tokens, "prompt") for t in texts]
        job = Job([p for p in prompts for _ in range(body.n)], sampling)
        if body.stream:
            return _stream(batcher, job, name, chat=False, usage=wants_usage(body), n=body.n)
        return completion_body(name, await _wait(batcher, job, request), body.n)

    return app


async def _encode(generator, prompt: Prompt, max_new_tokens: int, param: str):
    """The prompt as token ids when the generator can ``encode`` (rendered and tokenised in a
    worker thread, off the event loop and the batcher); else the prompt unchanged."""
    encode = getattr(generator, "encode", None)
    if encode is None:
        return prompt
    try:
        return await asyncio.to_thread(encode, prompt, max_new_tokens)
    except PromptTooLong as exc:
        raise ApiError(400, str(exc), param=param, code="context_length_exceeded") from None
    except ImagesNotSupported as exc:  # an image part sent to a text-only model
        raise ApiError(400, str(exc), param=param, code="images_not_supported") from None
    except SftlabError as exc:
        raise ApiError(400, str(exc), param=param) from None


async def _wait(batcher: Batcher, job: Job, request: Request) -> list[Generation]:
    """The job's generations; a failure becomes an ``ApiError`` (400 for a bad prompt, else
    500). A client that hangs up meanwhile cancels the job."""
    future = asyncio.wrap_future(batcher.submit(job))
    try:
        while not future.done():
            await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if not future.done() and await request.is_disconnected():
                raise ApiError(499, "the client closed the connection")  # nobody reads this answer
        return future.result()
    except SftlabError as exc:  # e.g. the prompt does not fit the context
        code = "context_length_exceeded" if isinstance(exc, PromptTooLong) else None
        raise ApiError(400, str(exc), code=code) from None
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None
    finally:
        job.cancel.set()  # a no-op once done; frees the rows of a request abandoned midway


def _stream(batcher: Batcher, job: Job, name: str, *, chat: bool, usage: bool, n: int,
            body: ChatRequest | None = None):
    """Server-sent events: one chunk per text delta, a final chunk per choice, ``[DONE]``.

    A chat request whose reply is parsed (tools given, or ``include_reasoning``) streams no
    text deltas: each choice's parsed message (content, reasoning, ``tool_calls`` with their
    ``index``) comes as one delta when it is complete, since a tool call is only known to be
    one once its block has closed."""
    parsed = chat and body is not None and (body.parses_tool_calls or body.include_reasoning)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def put(event: tuple) -> None:  # called from the batcher's thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (shutdown): nobody reads this stream
            job.cancel.set()

    if not parsed:
        job.on_text = lambda k, delta: put(("text", k, delta))
    future = batcher.submit(job)
    future.add_done_callback(lambda f: put(("done", None, None)))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
    created, kind = int(time.time()), "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict], **extra) -> str:
        body = {"id": ident, "object": kind, "created": created, "model": name, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def choice(k: int, text: str | None, finish: str | None, role: bool = False) -> dict:
        if not chat:
            return {"index": k, "text": text or "", "finish_reason": finish, "logprobs": None}
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        return {"index": k, "delta": delta, "finish_reason": finish, "logprobs": None}

    async def events_source():
        try:
            if chat:
                yield chunk([choice(k, None, None, role=True) for k in range(len(job.prompts))])
            while True:
                kind_, k, delta = await events.get()
                if kind_ == "done":
                    break
                yield chunk([choice(k, delta, None)])
            try:
                results = future.result()
            except Exception as exc:
                error = {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            if parsed:
                replies = [reply_of(r, body) for r in results]
                for k, reply in enumerate(replies):
                    yield chunk([{"index": k, "delta": _delta(reply), "finish_reason": None, "logprobs": None}])
                yield chunk([choice(k, None, finish_reason(r, reply))
                             for k, (r, reply) in enumerate(zip(results, replies))])
            else:
                yield chunk([choice(k, None, r.finish_reason) for k, r in enumerate(results)])
            if usage:
                yield chunk([], usage=usage_counts(results, n))
            yield "data: [DONE]\n\n"
        finally:  # also when the client hangs up (a failed write or a disconnect closes this)
            job.cancel.set()

    return StreamingResponse(events_source(), media_type="text/event-stream")


def _delta(reply) -> dict:
    """A parsed reply as one streaming delta (tool calls carry their ``index``, as OpenAI's do)."""
    message = reply.message()
    del message["role"]
    if "tool_calls" in message:
        message["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    return message


# -- running it ------------------------------------------------------------------------------


@dataclass
class ServerHandle:
    """A server running in a background thread. ``base_url`` ends in ``/v1``."""

    base_url: str
    host: str
    port: int
    app: Any
    _server: Any
    _thread: threading.Thread

    @property
    def batch_sizes(self) -> list[int]:
        return self.app.state.batcher.batch_sizes

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.app.state.batcher.close(cancel=True)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(generator_or_model, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, adapter=None, batch_size: int = 8,
                 batch_window_ms: float = 10.0, default_max_tokens: int = 256,
                 model_name: str | Sequence[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 shutdown_timeout_s: float = 5.0) -> ServerHandle:
    """Serve a ``Generator`` (or a model name/path, loaded by ``sftlab.infer.backends.generator_for``:
    ``HFGenerator.from_name``, or a ``VisionGenerator`` for a vision model directory)
    in a daemon thread; ``port=0`` picks a free port. Returns once the server accepts requests.

    Example (``openai`` is the official client)::

        with start_server("tiny") as server:
            openai.OpenAI(base_url=server.base_url, api_key="x").models.list()
    """
    generator = generator_or_model
    if isinstance(generator_or_model, str):  # a vision model directory gets the vision generator
        generator = generator_for(generator_or_model, adapter=adapter, batch_size=batch_size)
    app = create_app(generator, model_name=model_name, api_key=api_key, batch_window_ms=batch_window_ms,
                     default_max_tokens=default_max_tokens, max_body_bytes=max_body_bytes)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=shutdown_timeout_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="sftlab-server")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    return ServerHandle(f"http://{host}:{port}/v1", host, port, app, server, thread)


def serve(generator, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str | Sequence[str] | None = None, batch_window_ms: float = 10.0,
          default_max_tokens: int = 256, max_body_bytes: int = MAX_BODY_BYTES,
          shutdown_timeout_s: float = 5.0) -> None:
    """Serve in the foreground (``sftlab serve``) until SIGTERM or Ctrl-C.

    Shutdown stops accepting connections, gives requests in flight ``shutdown_timeout_s``
    seconds to finish, then cancels the rest. After SIGTERM it returns normally (the CLI
    exits 0); after Ctrl-C uvicorn re-raises it (KeyboardInterrupt).
    """
    app = create_app(generator, model_name=model_name, api_key=api_key, batch_window_ms=batch_window_ms,
                     default_max_tokens=default_max_tokens, max_body_bytes=max_body_bytes)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=shutdown_timeout_s))
    # uvicorn re-raises the signal it shut down for, with the handler it found: make SIGTERM's
    # a no-op, so that a graceful stop is an ordinary return rather than death by signal
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        app.state.batcher.close(cancel=True)
        signal.signal(signal.SIGTERM, previous)
