"""Chat completions for judges and remote generation: an OpenAI-compatible HTTP client
(httpx), a local model behind a ``Generator``, and a disk cache in front of either.

A judge call is ``client.complete(messages, temperature=0.0, max_tokens=1024) -> str``.
``CachedChat`` stores every completion under ``sha256(model + messages + params)``, so a
re-run of an evaluation costs nothing and gives the same verdicts; failed HTTP calls are
retried with exponential backoff.

    client = CachedChat(OpenAIChat("http://localhost:8000/v1", "gpt-4o-mini"), "~/.cache/sftlab/judge")
    text = client.complete([{"role": "user", "content": "Say hi"}])
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Sequence

import httpx

from sftlab.data.formats import parse_messages
from sftlab.errors import ConfigError, SftlabError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.backends import generator_for

ChatMessages = Sequence[dict[str, str]]


class ChatClient(Protocol):
    model: str

    def complete(self, messages: ChatMessages, *, temperature: float = 0.0,
                 max_tokens: int = 1024) -> str:
        ...


class RemoteError(SftlabError):
    """The endpoint kept failing after all retries."""


class JudgeError(SftlabError):
    """The judge's replies hold no verdict the parser can read."""


def complete_checked(judge, requests: Sequence[ChatMessages], parse, *, max_tokens: int,
                     probe: int = 8, off_switch: str | None = "--judge-probe 0") -> list[str]:
    """Every request's completion (temperature 0). The first ``probe`` requests go first:
    when none of their replies parses (``parse`` returns None), the run stops there with a
    ``JudgeError`` quoting the first reply, instead of judging everything for nothing.
    ``off_switch``: how the caller's user turns the probe off (the error says it), or None
    where it cannot be turned off."""
    head = judge.complete_many(requests[:probe], temperature=0.0, max_tokens=max_tokens) if probe else []
    if head and all(parse(text) is None for text in head):
        anyway = f", or {off_switch} to judge everything anyway" if off_switch else ""
        raise JudgeError(f"none of the first {len(head)} replies of judge '{judge.model}' holds a verdict; "
                         f"the first reads: {head[0][:300]!r} (use a stronger judge{anyway})")
    return head + judge.complete_many(requests[len(head):], temperature=0.0, max_tokens=max_tokens)


class OpenAIChat:
    """``POST {base_url}/chat/completions`` of any OpenAI-compatible server (OpenAI, vLLM,
    ``sftlab serve``, llama.cpp ...). The key is read from ``api_key`` or the environment
    variable ``api_key_env`` (default ``OPENAI_API_KEY``); a local server needs none."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0, retries: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        key = api_key or os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.retries = retries

    def complete(self, messages: ChatMessages, *, temperature: float = 0.0, max_tokens: int = 1024,
                 **extra: Any) -> str:
        return self.complete_full(messages, temperature=temperature, max_tokens=max_tokens,
                                  **extra)["choices"][0]["message"]["content"] or ""

    def complete_full(self, messages: ChatMessages, **params: Any) -> dict[str, Any]:
        """The whole response JSON (choices, usage) of one chat completion."""
        body = {"model": self.model, "messages": list(messages), **params}
        return self.post("/chat/completions", body)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on connection errors, 429 and 5xx (backoff 1, 2, 4, ... s)."""
        last = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                response = self.http.post(self.base_url + path, json=body)
                if response.status_code == 200:
                    return response.json()
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in (408, 409, 429) and response.status_code < 500:
                    break  # a client error will not fix itself
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(min(2 ** attempt, 30))
        raise RemoteError(f"{self.base_url}{path} failed: {last}")


class GeneratorChat:
    """A local model as a judge: messages go through the model's chat template."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.model = getattr(generator, "name", "local")

    def complete(self, messages: ChatMessages, *, temperature: float = 0.0,
                 max_tokens: int = 1024) -> str:
        return self.complete_many([messages], temperature=temperature, max_tokens=max_tokens)[0]

    def complete_many(self, batch: Sequence[ChatMessages], *, temperature: float = 0.0,
                      max_tokens: int = 1024) -> list[str]:
        prompts = [parse_messages(list(messages)) for messages in batch]
        sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=temperature)
        return [g.text for g in self.generator.generate(prompts, sampling)]


def cache_key(model: str, messages: ChatMessages, params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what produced a completion."""
    payload = json.dumps({"model": model, "messages": list(messages), "params": params},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CachedChat:
    """A ``ChatClient`` that answers from ``cache_dir/<key[:2]>/<key>.json`` when it can.

    ``hits`` and ``misses`` count lookups (reported in results). Batches of misses go to the
    wrapped client's ``complete_many`` when it has one (a local model batches them)."""

    def __init__(self, client: ChatClient, cache_dir: str | Path | None) -> None:
        self.client = client
        self.model = client.model
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.hits = self.misses = 0

    def complete(self, messages: ChatMessages, *, temperature: float = 0.0,
                 max_tokens: int = 1024) -> str:
        return self.complete_many([messages], temperature=temperature, max_tokens=max_tokens)[0]

    def complete_many(self, batch: Sequence[ChatMessages], *, temperature: float = 0.0,
                      max_tokens: int = 1024, workers: int = 8) -> list[str]:
        params = {"temperature": temperature, "max_tokens": max_tokens}
        keys = [cache_key(self.model, messages, params) for messages in batch]
        answers: list[str | None] = [self._read(key) for key in keys]
        todo = [i for i, answer in enumerate(answers) if answer is None]
        self.hits += len(batch) - len(todo)
        self.misses += len(todo)
        for i, text in zip(todo, self._complete_uncached([batch[i] for i in todo], params, workers)):
            answers[i] = text
            self._write(keys[i], batch[i], params, text)
        return [a or "" for a in answers]

    def _complete_uncached(self, batch, params, workers) -> list[str]:
        if not batch:
            return []
        if hasattr(self.client, "complete_many"):
            return self.client.complete_many(batch, **params)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda m: self.client.complete(m, **params), batch))

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _read(self, key: str) -> str | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["completion"]

    def _write(self, key: str, messages, params, text: str) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": self.model, "messages": list(messages), "params": params, "completion": text}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        temporary.replace(path)  # atomic: a killed run never leaves half a cache entry


def make_judge(judge: str, *, base_url: str | None = None, cache_dir: str | Path | None = None,
               api_key_env: str = "OPENAI_API_KEY", batch_size: int = 8) -> CachedChat:
    """A cached judge: ``base_url`` given -> the remote model named ``judge``; otherwise
    ``judge`` is a model sftlab loads locally (``tiny``, ``default``, a directory, a .gguf
    file), on the backend ``auto`` picks for it (``sftlab.infer.backends``: llama.cpp for
    GGUF models when installed, the same greedy tokens as hf)."""
    if base_url:
        client: Any = OpenAIChat(base_url, judge, api_key_env=api_key_env)
    else:
        if not judge:
            raise ConfigError("no judge given; pass --judge MODEL (and --judge-base-url URL for an API)")
        client = GeneratorChat(generator_for(judge, backend="auto", batch_size=batch_size))
    return CachedChat(client, cache_dir)
