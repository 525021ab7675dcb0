"""An OpenAI-compatible HTTP server over any ``Generator``, batching concurrent requests.

    sftlab serve default --port 8000                      # CLI
    handle = start_server("tiny", port=0)                 # Python: background thread, free port
    client = openai.OpenAI(base_url=handle.base_url, api_key="unused")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
    handle.stop()

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with
``stream: true`` server-sent events), ``GET /v1/models``, and ``GET /sftlab/stats`` (the
size of every batch run, to see batching at work).

Batching: request handlers do not call the model. They put work on a queue; one worker
thread waits ``batch_window_ms`` after the first request to collect others, groups them
by identical sampling settings and runs ONE ``generator.generate`` per group. Streaming
requests are batched the same way: the generator's ``on_text`` callback routes each
row's new text to its request's event stream.

Errors: malformed requests get HTTP 400 (401 for a missing or wrong key when the server
has one) with the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``;
a failing generation answers 500 in the same shape and the server keeps running.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import json
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from fastapi import Request  # module level: FastAPI resolves handler annotations by name
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.errors import SftlabError
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.types import Message

MAX_NEW_TOKENS_LIMIT = 4096


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
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingConfig(
            max_new_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            # no seed: fresh randomness per call, as OpenAI does (-1, see HFGenerator)
            top_k=self.top_k or 0, seed=-1 if self.seed is None else self.seed, stop=stop)


class ChatRequest(_Sampling):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


# -- batching worker --------------------------------------------------------------------------


@dataclass
class _Job:
    """One request: its prompts (n copies), settings, optional stream callback, result future."""

    prompts: list[Prompt]
    sampling: SamplingConfig
    on_text: Callable[[int, str], None] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """Collects jobs for ``window_ms`` and runs each group of equal settings as one generate call.

    ``batch_sizes`` records the number of prompts of every generate call.
    """

    def __init__(self, generator, window_ms: float = 10.0, max_prompts: int = 64) -> None:
        self.generator, self.window, self.max_prompts = generator, window_ms / 1000.0, max_prompts
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._streams = "on_text" in inspect.signature(generator.generate).parameters
        self._thread = threading.Thread(target=self._run, name="sftlab-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> concurrent.futures.Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.window
            while sum(len(j.prompts) for j in jobs) < self.max_prompts:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
            for group in _group_by_settings(jobs):
                self._run_group(group)

    def _run_group(self, jobs: list[_Job]) -> None:
        prompts, owners = [], []  # owners[i] = (job, index of the prompt within its job)
        for job in jobs:
            for k, prompt in enumerate(job.prompts):
                prompts.append(prompt)
                owners.append((job, k))

        def route(i: int, delta: str) -> None:
            job, k = owners[i]
            if job.on_text is not None:
                job.on_text(k, delta)

        self.batch_sizes.append(len(prompts))
        try:
            kwargs = {"on_text": route} if self._streams else {}
            results = self.generator.generate(prompts, jobs[0].sampling, **kwargs)
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: run each alone
                for job in jobs:
                    self._run_group([job])
            else:  # answer the waiting request, keep serving
                jobs[0].future.set_exception(exc)
            return
        position = 0
        for job in jobs:
            mine = results[position:position + len(job.prompts)]
            position += len(job.prompts)
            if not self._streams and job.on_text is not None:
                for k, gen in enumerate(mine):
                    job.on_text(k, gen.text)
            job.future.set_result(mine)


def _group_by_settings(jobs: list[_Job]) -> list[list[_Job]]:
    groups: dict[str, list[_Job]] = {}
    for job in jobs:
        key = dataclasses.asdict(job.sampling)
        if job.sampling.temperature == 0:
            key["seed"] = None  # greedy ignores the seed: do not split batches over it
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(job)
    return list(groups.values())


# -- the app ----------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


def create_app(generator, *, model_name: str | None = None, api_key: str | None = None,
               batch_window_ms: float = 10.0, default_max_tokens: int = 256):
    """A FastAPI app serving ``generator``; ``app.state.batcher`` holds the batching worker."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

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
        body = await _parse(request, ChatRequest)
        sampling = body.sampling(default_max_tokens)
        if body.max_completion_tokens:
            sampling.max_new_tokens = body.max_completion_tokens
        prompt = [m.to_message() for m in body.messages]
        job = _Job([prompt] * body.n, sampling)
        if body.stream:
            return _stream(batcher, job, name, chat=True, usage=_wants_usage(body), n=body.n)
        results = await _wait(batcher.submit(job))
        return _chat_body(name, results, body.n)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        body = await _parse(request, CompletionRequest)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        job = _Job([t for t in texts for _ in range(body.n)], body.sampling(default_max_tokens))
        if body.stream:
            return _stream(batcher, job, name, chat=False, usage=_wants_usage(body), n=body.n)
        results = await _wait(batcher.submit(job))
        return _completion_body(name, results, body.n)

    return app


async def _parse(request, model: type[BaseModel]):
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


async def _wait(future: concurrent.futures.Future) -> list[Generation]:
    try:
        return await asyncio.wrap_future(future)
    except SftlabError as exc:  # e.g. the prompt does not fit the context
        raise ApiError(400, str(exc), code="context_length_exceeded" if "context" in str(exc) else None) from None
    except Exception as exc:
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None


def _wants_usage(body: _Sampling) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


def _usage(results: list[Generation], n: int = 1) -> dict[str, int]:
    # the n copies of a prompt count its tokens once, as OpenAI does
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_body(name: str, results: list[Generation], n: int = 1) -> dict[str, Any]:
    return {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "finish_reason": r.finish_reason, "logprobs": None}
                        for i, r in enumerate(results)],
            "usage": _usage(results, n)}


def _completion_body(name: str, results: list[Generation], n: int = 1) -> dict[str, Any]:
    return {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                        for i, r in enumerate(results)],
            "usage": _usage(results, n)}


def _stream(batcher: Batcher, job: _Job, name: str, *, chat: bool, usage: bool, n: int):
    """Server-sent events: one chunk per text delta, a final chunk per choice, ``[DONE]``."""
    from fastapi.responses import StreamingResponse

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
            yield chunk([], usage=_usage(results, n))
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

    >>> with start_server("tiny") as server:
    ...     openai.OpenAI(base_url=server.base_url, api_key="x").models.list()
    """
    import uvicorn

    generator = generator_or_model
    if isinstance(generator_or_model, str):
        from sftlab.infer.hf import HFGenerator

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
    import uvicorn

    app = create_app(generator, api_key=api_key, batch_window_ms=batch_window_ms,
                     default_max_tokens=default_max_tokens)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.batcher.close()
