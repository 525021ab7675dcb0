"""The OpenAI-compatible server, driven over real HTTP on loopback by the official client."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.infer.server import start_server
from sftlab.types import Message

KEY = "test-key-123"


@pytest.fixture(scope="module")
def generator():
    from sftlab.models.tiny import tiny_model, tiny_tokenizer

    return HFGenerator(tiny_model(), tiny_tokenizer(), batch_size=8, name="tiny")


@pytest.fixture(scope="module")
def server(generator):
    # a wide window so that concurrent test requests surely land in one batch
    with start_server(generator, api_key=KEY, batch_window_ms=200) as handle:
        yield handle


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def test_binds_loopback_and_lists_models(server, client):
    assert server.host == "127.0.0.1" and server.base_url.startswith("http://127.0.0.1:")
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_matches_generator(generator, client):
    messages = [{"role": "user", "content": "Sort these numbers"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    expected = generator.generate([[Message("user", "Sort these numbers")]], SamplingConfig(max_new_tokens=12))[0]
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == 12


def test_chat_streaming_joins_to_the_same_text(client):
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=15, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=15,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 1  # really streamed in pieces
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "length" and usage.completion_tokens == 15


def test_completions_with_stop_and_streaming(client):
    whole = client.completions.create(model="tiny", prompt="The a of", max_tokens=20, temperature=0)
    text = whole.choices[0].text
    stop = text[4:6]
    cut = client.completions.create(model="tiny", prompt="The a of", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The a of", max_tokens=20, temperature=0, stream=True) if c.choices)
    assert streamed == text


def test_concurrent_requests_are_batched(server, client):
    before = len(server.batch_sizes)
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"count {i}"}], max_tokens=8, temperature=0)
        results[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = server.batch_sizes[before:]
    assert len(results) == 6 and sum(sizes) == 6
    assert max(sizes) > 1, f"requests were not batched: {sizes}"
    stats = httpx.get(server.base_url.replace("/v1", "/sftlab/stats"),
                      headers={"Authorization": f"Bearer {KEY}"}).json()
    assert stats["batch_sizes"][-len(sizes):] == sizes


def test_n_choices_and_sampling_seed(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                  temperature=1.0, seed=5, n=3)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert len(texts) == 3 and len(set(texts)) > 1
    assert texts == [c.message.content for c in again.choices]
    # without a seed every request draws fresh randomness, as with OpenAI
    del kwargs["seed"]
    unseeded = [[c.message.content for c in client.chat.completions.create(**kwargs).choices] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": "hello"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"model": "tiny", "messages": []}, "messages"),
])
def test_malformed_chat_bodies_get_400(server, body, param):
    response = httpx.post(f"{server.base_url}/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param)


def test_bad_json_and_non_object_bodies(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = httpx.post(f"{server.base_url}/completions", content=content, headers=headers)
        assert response.status_code == 400, content
        assert "message" in response.json()["error"]
    missing = httpx.post(f"{server.base_url}/completions", json={"model": "tiny"}, headers=headers)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"


def test_client_sees_malformed_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=0)
    assert info.value.status_code == 400


def test_api_key_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(f"{server.base_url}/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_unknown_route_is_json_404(server):
    response = httpx.get(server.base_url.replace("/v1", "/nope"))
    assert response.status_code == 404 and "error" in response.json()


def test_server_survives_and_still_answers(client):
    reply = client.completions.create(model="tiny", prompt="x", max_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_server_without_key_and_model_name(generator):
    with start_server(generator, model_name="my-model") as handle:
        client = openai.OpenAI(base_url=handle.base_url, api_key="anything", max_retries=0)
        assert client.models.list().data[0].id == "my-model"
        raw = httpx.post(f"{handle.base_url}/completions", json={"prompt": "x", "max_tokens": 2})
        assert raw.status_code == 200 and json.loads(raw.text)["model"] == "my-model"


def test_too_long_prompt_fails_alone(server, client):
    """A request that cannot run answers 400; requests batched with it still succeed."""
    results: dict[str, object] = {}

    def ask(name: str, text: str) -> None:
        try:
            results[name] = client.completions.create(model="tiny", prompt=text, max_tokens=4, temperature=0)
        except openai.APIStatusError as exc:
            results[name] = exc

    threads = [threading.Thread(target=ask, args=("long", "count " * 1100)),
               threading.Thread(target=ask, args=("ok", "count"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["long"], openai.BadRequestError)
    assert results["long"].body["code"] == "context_length_exceeded"
    assert results["ok"].choices[0].finish_reason == "length"


def test_cli_serve_key_file_and_sigterm(tmp_path):
    """`sftlab serve` with --api-key-file: 401 without the key; SIGTERM during a stream
    shuts down gracefully and exits 0 within seconds."""
    (tmp_path / "key").write_text("file-key-456\n")
    env = {k: v for k, v in os.environ.items() if k != "SFTLAB_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sftlab", "serve", "tiny", "--port", "0", "--api-key-file", str(tmp_path / "key"),
         "--served-model-name", "my-tiny", "--shutdown-timeout-s", "1"],
        stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        base_url = _started_url(lines, process)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            error = httpx.get(f"{base_url}/models", headers=headers, timeout=10).json()["error"]
            assert error["code"] == "invalid_api_key" and set(error) == {"message", "type", "param", "code"}
        auth = {"Authorization": "Bearer file-key-456"}
        assert httpx.get(f"{base_url}/models", headers=auth, timeout=10).json()["data"][0]["id"] == "my-tiny"
        streaming = threading.Event()

        def stream() -> None:
            body = {"model": "my-tiny", "prompt": "count", "max_tokens": 900, "temperature": 0, "stream": True}
            try:
                with httpx.stream("POST", f"{base_url}/completions", json=body, headers=auth, timeout=30) as r:
                    for _ in r.iter_lines():
                        streaming.set()
            except httpx.HTTPError:
                pass  # the server went away mid-stream

        threading.Thread(target=stream, daemon=True).start()
        assert streaming.wait(timeout=30)
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        rc = process.wait(timeout=20)
        seconds = time.perf_counter() - start
        print(f"SIGTERM during a stream: exited with {rc} after {seconds:.2f} s (shutdown_timeout_s=1)")
        assert rc == 0 and seconds < 8
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _started_url(lines: queue.Queue, process: subprocess.Popen) -> str:
    """The server's /v1 URL from uvicorn's start-up line (the port was chosen by the OS)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, "sftlab serve exited before it started"
            continue
        found = re.search(r"running on (http://\S+)", line)
        if found:
            return found.group(1) + "/v1"
    raise AssertionError("sftlab serve did not start within 120 s")
