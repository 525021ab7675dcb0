"""The teacher: one client for every synthesis pipeline.

Talks to any OpenAI-compatible endpoint (a hosted API, vLLM, or ``sftlab serve``) with a
concurrency limit, timeouts, retries with exponential backoff on 429/5xx/timeouts/broken
bodies, and an on-disk response cache keyed by (model, messages, sampling parameters,
seed), so a rerun of a pipeline costs no new calls. A reply without content (``content:
null``, what OpenAI sends for a refusal) is asked again or given up as ``""`` (``on_refusal``),
never cached, and counted in ``HTTPTeacher.refusals`` for the pipeline's report.
``GeneratorTeacher`` puts an in-process ``Generator`` behind the same interface.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import httpx

from sftlab.errors import SftlabError
from sftlab.infer.base import Generator, SamplingConfig
from sftlab.types import Message

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class TeacherError(SftlabError):
    """The endpoint refused a request for good (a 4xx other than 408/409/429) or kept failing."""


@dataclass
class TeacherConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL, ending in /v1; ``local`` runs ``model`` in-process instead."""
    model: str = "default"
    """Model name sent to the endpoint; with ``base_url: local``, the model to load (``tiny``,
    ``default``, a Hub name or a directory)."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """With ``base_url: local``, the engine that generates: ``auto`` (llama.cpp for GGUF
    models, ``default`` and .gguf files, when llama-cpp-python is installed, else hf), ``hf``
    (transformers), ``llamacpp`` (llama.cpp's CPU kernels on the same float32 weights;
    ``pip install 'sftlab[llamacpp]'``). Resolved before the run, so the saved config names
    the one that ran."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (never the key itself)."""
    concurrency: int = 4
    """Requests in flight at once."""
    timeout: float = 120.0
    """Seconds to wait for one response before retrying."""
    max_retries: int = 6
    """Retries of a request that timed out or got 408/409/429/5xx, before giving up."""
    backoff: float = 0.5
    """First retry waits this long (seconds); each later one twice as long, with jitter."""
    cache_dir: str | None = None
    """Directory of cached responses; None disables the cache."""
    on_refusal: Literal["skip", "retry"] = "skip"
    """A reply with no content (`content: null` or a `refusal`, as OpenAI sends for a refusal):
    `skip` counts it as a refusal in the report and the pipeline drops that item as empty;
    `retry` asks again (up to max_retries times) and skips only if every attempt refuses."""


@dataclass
class ChatRequest:
    messages: list[Message]
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    stop: list[str] = field(default_factory=list)

    def key(self, model: str) -> str:
        payload = {"model": model, "messages": [m.to_dict() for m in self.messages],
                   **{k: v for k, v in asdict(self).items() if k != "messages"}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Teacher(Protocol):
    model: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[str]:
        """Answer each request, in order."""
        ...


class ResponseCache:
    """One JSON file per response under ``root/ab/abcdef....json``; writes are atomic."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None

    def get(self, key: str) -> str | None:
        if self.root is None:
            return None
        path = self._path(key)
        return json.loads(path.read_text())["text"] if path.exists() else None

    def put(self, key: str, text: str) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps({"text": text}))
        os.replace(tmp, path)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"


class HTTPTeacher:
    """Chat completions over HTTP with retries and a cache.

    Example (needs a server, e.g. ``sftlab serve default --port 8000``)::

        teacher = HTTPTeacher(TeacherConfig(base_url="http://127.0.0.1:8000/v1"))
        teacher.complete([ChatRequest([Message("user", "Name a colour.")])])   # ['Blue.']
    """

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config
        self.model = config.model
        self.cache = ResponseCache(config.cache_dir)
        self.calls = 0  # HTTP attempts, for tests and reports
        self.refusals = 0  # requests given up as refused (content: null), for the report
        self._count_lock = threading.Lock()
        headers = {}
        if os.environ.get(config.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[config.api_key_env]}"
        self._http = httpx.Client(base_url=config.base_url.rstrip("/"), headers=headers,
                                  timeout=config.timeout)

    def complete(self, requests: Sequence[ChatRequest]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            return list(pool.map(self._complete_one, requests))

    def _complete_one(self, request: ChatRequest) -> str:
        key = request.key(self.model)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        text = self._post_with_retries(request)
        if text is None:  # refused: not cached, so a rerun asks again
            with self._count_lock:
                self.refusals += 1
            return ""
        self.cache.put(key, text)
        return text

    def _post_with_retries(self, request: ChatRequest) -> str | None:
        """The reply's text; None when the teacher refused (every attempt, with ``retry``)."""
        body = {"model": self.model, "messages": [m.to_dict() for m in request.messages],
                "temperature": request.temperature, "top_p": request.top_p,
                "max_tokens": request.max_tokens, "seed": request.seed}
        if request.stop:
            body["stop"] = request.stop
        last_problem = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = self.config.backoff * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))
            self.calls += 1
            try:
                response = self._http.post("/chat/completions", json=body)
            except httpx.HTTPError as exc:  # timeouts, refused and dropped connections
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last_problem = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise TeacherError(f"{self.config.base_url}: HTTP {response.status_code}: "
                                   f"{response.text[:300]}")
            try:
                message = response.json()["choices"][0]["message"]
                content, refusal = message["content"], message.get("refusal")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                last_problem = f"unreadable body: {response.text[:80]!r}"
                continue
            if isinstance(content, str) and not refusal:
                return content
            if self.config.on_refusal == "skip":
                return None
            last_problem = "refused (content: null)"
        if last_problem.startswith("refused"):
            return None
        raise TeacherError(f"{self.config.base_url}: gave up after {self.config.max_retries + 1} "
                           f"attempts (last: {last_problem}); check the endpoint or raise max_retries")


class GeneratorTeacher:
    """An in-process ``Generator`` (e.g. ``HFGenerator``) as a teacher, with the same cache."""

    def __init__(self, generator: Generator, model: str, cache_dir: str | None = None) -> None:
        self.generator, self.model = generator, model
        self.cache = ResponseCache(cache_dir)

    def complete(self, requests: Sequence[ChatRequest]) -> list[str]:
        out: list[str | None] = [self.cache.get(r.key(self.model)) for r in requests]
        todo = [i for i, text in enumerate(out) if text is None]
        # one generate call per distinct sampling setting keeps batching effective
        by_setting: dict[tuple, list[int]] = {}
        for i in todo:
            r = requests[i]
            by_setting.setdefault((r.temperature, r.top_p, r.max_tokens, r.seed, tuple(r.stop)), []).append(i)
        for (temperature, top_p, max_tokens, seed, stop), indices in by_setting.items():
            sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=temperature,
                                      top_p=top_p, seed=seed, stop=list(stop))
            results = self.generator.generate([requests[i].messages for i in indices], sampling)
            for i, result in zip(indices, results):
                out[i] = result.text
                self.cache.put(requests[i].key(self.model), result.text)
        return out  # type: ignore[return-value]
