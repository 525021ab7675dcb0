"""An OpenAI-compatible HTTP server over any ``Generator``, batching concurrent requests.

    sftlab serve default --port 8000                      # CLI
    handle = start_server("tiny", port=0)                 # Python: background thread, free port
    client = openai.OpenAI(base_url=handle.base_url, api_key="unused")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    handle.stop()

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with
``stream: true`` server-sent events), ``GET /v1/models``, and ``GET /sftlab/stats`` (the
size of every batch run, to see batching at work).

Batching: request handlers do not call the model. They put a job on the queue of a
``sftlab.infer.batcher.Batcher``, whose one worker thread waits ``batch_window_ms`` after
the first request to collect others, groups them by identical sampling settings and runs
ONE ``generator.generate`` per group. Streaming requests are batched the same way: the
generator's ``on_text`` callback routes each row's new text to its request's event stream.
Request and response shapes (and the error body) live in ``sftlab.infer.openai_schema``.

Errors: malformed requests get HTTP 400 (401 for a missing or wrong key when the server
has one) with the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``;
a failing generation answers 500 in the same shape and the server keeps running.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request  # Request at module level: FastAPI resolves handler annotations by name
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from sftlab.errors import SftlabError
from sftlab.infer.base import Generation
from sftlab.infer.batcher import Batcher, Job
from sftlab.infer.hf import HFGenerator
from sftlab.infer.openai_schema import (ApiError, ChatRequest, CompletionRequest, chat_completion_body,
                                        completion_body, parse_request, usage_counts, wants_usage)


# -- the app ----------------------------------------------------------------------------------


def create_app(generator, *, model_name: str | None = None, api_key: str | None = None,
               batch_window_ms: float = 10.0, default_max_tokens: int = 256):
    """A FastAPI app serving ``generator``; ``app.state.batcher`` holds the batching worker."""
    name = model_name or getattr(generator, "name", "sftlab")
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

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "sftlab"}]}

    @app.get("/sftlab/stats")
    async def stats(request: Request):
        check_key(request)
        return {"batch_sizes": list(batcher.batch_sizes)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        body = await parse_request(request, ChatRequest)
        sampling = body.sampling(default_max_tokens)
        if body.max_completion_tokens:
            sampling.max_new_tokens = body.max_completion_tokens
        prompt = [m.to_message() for m in body.messages]
        job = Job([prompt] * body.n, sampling)
        if body.stream:
            return _stream(batcher, job, name, chat=True, usage=wants_usage(body), n=body.n)
        results = await _wait(batcher.submit(job))
        return chat_completion_body(name, results, body.n)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        body = await parse_request(request, CompletionRequest)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        job = Job([t for t in texts for _ in range(body.n)], body.sampling(default_max_tokens))
        if body.stream:
            return _stream(batcher, job, name, chat=False, usage=wants_usage(body), n=body.n)
        results = await _wait(batcher.submit(job))
        return completion_body(name, results, body.n)

    return app


async def _wait(future: concurrent.futures.Future) -> list[Generation]:
    """The job's generations; a failure becomes an ``ApiError`` (400 for a bad prompt, else 500)."""
    try:
        return await asyncio.wrap_future(future)
    except SftlabError as exc:  # e.g. the prompt does not fit the context
        raise ApiError(400, str(exc), code="context_length_exceeded" if "context" in str(exc) else None) from None
    except Exception as exc:
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None


def _stream(batcher: Batcher, job: Job, name: str, *, chat: bool, usage: bool, n: int):
    """Server-sent events: one chunk per text delta, a final chunk per choice, ``[DONE]``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.on_text = lambda k, delta: loop.call_soon_threadsafe(events.put_nowait, ("text", k, delta))
    future = batcher.submit(job)
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", None, None)))
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
        yield chunk([choice(k, None, r.finish_reason) for k, r in enumerate(results)])
        if usage:
            yield chunk([], usage=usage_counts(results, n))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events_source(), media_type="text/event-stream")


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
        self.app.state.batcher.close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(generator_or_model, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, adapter=None, batch_size: int = 8,
                 batch_window_ms: float = 10.0, default_max_tokens: int = 256,
                 model_name: str | None = None) -> ServerHandle:
    """Serve a ``Generator`` (or a model name/path, loaded with ``HFGenerator.from_name``)
    in a daemon thread; ``port=0`` picks a free port. Returns once the server accepts requests.

    Example (``openai`` is the official client)::

        with start_server("tiny") as server:
            openai.OpenAI(base_url=server.base_url, api_key="x").models.list()
    """
    generator = generator_or_model
    if isinstance(generator_or_model, str):
        generator = HFGenerator.from_name(generator_or_model, adapter=adapter, batch_size=batch_size)
    app = create_app(generator, model_name=model_name, api_key=api_key,
                     batch_window_ms=batch_window_ms, default_max_tokens=default_max_tokens)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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
          batch_window_ms: float = 10.0, default_max_tokens: int = 256) -> None:
    """Serve in the foreground until Ctrl-C (``sftlab serve``)."""
    app = create_app(generator, api_key=api_key, batch_window_ms=batch_window_ms,
                     default_max_tokens=default_max_tokens)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.batcher.close()
