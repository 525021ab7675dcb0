"""The server under abuse (loopback only): oversized bodies, prompts too long for the context,
unknown models and fields, huge prompts beside tiny ones, clients that hang up, seeded
streams that must share a batch. Each abuse test prints the latency it measured."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sftlab.cli.models import ServeConfig, _api_key
from sftlab.errors import ConfigError
from sftlab.infer.hf import HFGenerator
from sftlab.infer.server import start_server
from sftlab.models.tiny import tiny_model, tiny_tokenizer

KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


DECODE_STEP_S = 0.005


@pytest.fixture(scope="module")
def generator():
    # every forward pass takes at least 5 ms, so that a 900-token request surely runs for
    # seconds however fast the machine is: the hang-up tests then check "still running" and
    # "stopped early" without racing the tiny model's speed
    model = tiny_model()
    model.register_forward_pre_hook(lambda module, args: time.sleep(DECODE_STEP_S))
    return HFGenerator(model, tiny_tokenizer(), batch_size=8, name="tiny")


@pytest.fixture(scope="module")
def server(generator):
    # a wide window so that concurrent test requests surely land in one batch
    with start_server(generator, api_key=KEY, batch_window_ms=200, model_name=["tiny", "alias"],
                      max_body_bytes=1_000_000) as handle:
        yield handle


def _post(server, path: str, body, timeout: float = 30, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=AUTH, timeout=timeout, **kwargs)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _until(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.perf_counter() - start


# -- 1. request size and context --------------------------------------------------------------


def test_oversized_body_is_413_before_it_is_read(server):
    """A 20 MB declared body: the answer comes after only its headers were sent."""
    start = time.perf_counter()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 20000000\r\n\r\n{")
        answer = b""
        while b"}}" not in answer:
            piece = sock.recv(65536)
            assert piece, f"connection closed after {answer!r}"
            answer += piece
    seconds = time.perf_counter() - start
    print(f"413 for a 20 MB declared body after {seconds * 1000:.0f} ms, 1 byte of it sent")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "request_too_large"
    assert seconds < 2


def test_oversized_body_sent_whole_or_chunked_is_413(server):
    start = time.perf_counter()
    whole = httpx.post(f"{server.base_url}/completions", content=b'{"prompt": "' + b"a" * 20_000_000 + b'"}',
                       headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    print(f"413 for a 20 MB body sent whole: {(time.perf_counter() - start) * 1000:.0f} ms")
    assert _error(whole, 413)["code"] == "request_too_large"
    chunked = httpx.post(f"{server.base_url}/completions", content=(b"a" * 65536 for _ in range(100)),
                         headers=AUTH, timeout=10)
    assert _error(chunked, 413)["code"] == "request_too_large"


def test_prompt_longer_than_the_context_is_400_at_once(server):
    start = time.perf_counter()
    response = _post(server, "/completions", {"model": "tiny", "prompt": "count " * 150_000, "max_tokens": 4})
    print(f"context_length_exceeded for a 900 kB prompt: {(time.perf_counter() - start) * 1000:.0f} ms")
    error = _error(response, 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    chat = _post(server, "/chat/completions", {"messages": [{"role": "user", "content": "count " * 1100}]})
    assert _error(chat, 400)["code"] == "context_length_exceeded"


# -- 2. model names ---------------------------------------------------------------------------


def test_served_names_models_and_health(server):
    assert httpx.get(server.base_url.replace("/v1", "/health")).json() == {"status": "ok"}  # no key needed
    listed = httpx.get(f"{server.base_url}/models", headers=AUTH).json()
    assert [m["id"] for m in listed["data"]] == ["tiny", "alias"]
    assert httpx.get(f"{server.base_url}/models/alias", headers=AUTH).json()["id"] == "alias"
    assert _error(httpx.get(f"{server.base_url}/models/gpt-4", headers=AUTH), 404)["code"] == "model_not_found"
    reply = _post(server, "/completions", {"model": "alias", "prompt": "x", "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["model"] == "alias"
    error = _error(_post(server, "/completions", {"model": "gpt-4", "prompt": "x", "max_tokens": 2}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"


# -- 3. fields --------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 3), ("functions", [{"name": "f"}]),
    ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5),
    ("logit_bias", {"1": 5}), ("frobnicate", 1),
])
def test_unsupported_and_unknown_fields_are_400_naming_them(server, field, value):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    error = _error(_post(server, "/chat/completions", body), 400)
    assert error["param"] == field and field in error["message"]
    assert error["code"] == ("unknown_parameter" if field == "frobnicate" else "unsupported_parameter")


@pytest.mark.parametrize("path, field, value", [
    ("/chat/completions", "stop", 5), ("/chat/completions", "stop", ["a", 3]),
    ("/completions", "prompt", 5), ("/completions", "prompt", [1, 2, 3]),
])
def test_a_union_field_of_the_wrong_type_names_the_field(server, path, field, value):
    """Was `param: "stop.str"`, "Input should be a valid string": pydantic's member type leaked."""
    body = {"model": "tiny", "max_tokens": 2, field: value}
    if path == "/chat/completions":
        body["messages"] = [{"role": "user", "content": "hi"}]
    error = _error(_post(server, path, body), 400)
    assert error["param"] == field
    assert error["message"].startswith(f"{field}: expected str or list[str], got ")


@pytest.mark.parametrize("path, field, value", [
    ("/chat/completions", "max_tokens", "5"), ("/chat/completions", "stream", "yes"),
    ("/completions", "temperature", "1"), ("/completions", "n", True), ("/completions", "seed", 1.5),
])
def test_a_field_of_the_wrong_type_is_400_not_converted(server, path, field, value):
    """Was 200: pydantic's lax mode read `"max_tokens": "5"` as 5, `"stream": "yes"` as true."""
    body = {"model": "tiny", "max_tokens": 2, field: value}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == "/chat/completions" else {"prompt": "hi"})
    error = _error(_post(server, path, body), 400)
    assert error["param"] == field and error["message"].startswith(f"{field}: ")
    # the right types pass, and an int is still a float, as with OpenAI
    del body[field]
    body.update({"max_tokens": 2, "temperature": 1, "top_p": 1})
    assert _post(server, path, body).status_code == 200, field


def test_fields_that_ask_for_nothing_are_accepted(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0, "tools": [],
            "response_format": {"type": "text"}, "user": "someone"}
    assert _post(server, "/chat/completions", body).status_code == 200
    bad_message = {"messages": [{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f"}}]}]}
    assert _error(_post(server, "/chat/completions", bad_message), 400)["param"].startswith("messages[0]")
    # tool_choice values this server cannot honour ("required", a named function) are 400 too
    forced = {"messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": "required"}
    assert _error(_post(server, "/chat/completions", forced), 400)["param"] == "tool_choice"


# -- 4. tokenising off the batching path ------------------------------------------------------


def test_a_huge_prompt_being_tokenised_does_not_stall_a_tiny_request():
    # a context of 200k tokens: a 1.8 MB prompt is really tokenised (seconds) before it is refused
    big = HFGenerator(tiny_model(max_position_embeddings=200_000), tiny_tokenizer(), batch_size=8, name="tiny")
    with start_server(big, batch_window_ms=5) as server:
        done: dict[str, float] = {}

        def huge() -> None:
            start = time.perf_counter()
            response = _post(server, "/completions", {"prompt": "count " * 300_000, "max_tokens": 4}, timeout=120)
            done["huge"] = time.perf_counter() - start
            done["huge_code"] = response.json()["error"]["code"]

        thread = threading.Thread(target=huge)
        thread.start()
        time.sleep(0.3)
        start = time.perf_counter()
        tiny = _post(server, "/completions", {"prompt": "hi", "max_tokens": 4, "temperature": 0})
        tiny_seconds = time.perf_counter() - start
        thread.join(timeout=120)
    print(f"tiny request: {tiny_seconds * 1000:.0f} ms while a 1.8 MB prompt tokenised "
          f"(that request took {done['huge']:.1f} s)")
    assert tiny.status_code == 200 and done["huge_code"] == "context_length_exceeded"
    assert tiny_seconds < 1.5 and tiny_seconds < done["huge"] - 0.3


# -- 5. clients that hang up ------------------------------------------------------------------


def test_hung_up_streams_free_their_batch_slots(server, generator):
    steps = generator.decode_steps
    body = {"model": "tiny", "prompt": "count", "max_tokens": 900, "temperature": 0, "stream": True}
    clients = [httpx.Client(headers=AUTH, timeout=30) for _ in range(4)]
    streams = [client.stream("POST", f"{server.base_url}/completions", json=body) for client in clients]
    # the four requests at once (they share one batch), then one line of each; the line
    # iterators stay referenced: a dropped one is garbage-collected, which closes its stream
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda stream: stream.__enter__(), streams))
    lines = [response.iter_lines() for response in responses]
    assert all(next(line).startswith("data: {") for line in lines)  # every stream is running
    assert server.app.state.batcher.in_flight == 4
    for stream, client in zip(streams, clients):
        stream.__exit__(None, None, None)
        client.close()
    freed = _until(lambda: server.app.state.batcher.in_flight == 0, timeout=5)
    start = time.perf_counter()
    reply = _post(server, "/completions", {"model": "tiny", "prompt": "x", "max_tokens": 3, "temperature": 0})
    served = time.perf_counter() - start
    print(f"4 streams hung up: slots free after {freed * 1000:.0f} ms; next request served in {served * 1000:.0f} ms")
    assert reply.status_code == 200 and served < 2
    assert generator.decode_steps - steps < 900  # the 900-token streams stopped early


def test_a_non_streaming_client_that_hangs_up_is_cancelled(server, generator):
    steps = generator.decode_steps
    with pytest.raises(httpx.ReadTimeout):
        _post(server, "/completions", {"model": "tiny", "prompt": "count", "max_tokens": 900, "temperature": 0},
              timeout=0.8)
    freed = _until(lambda: server.app.state.batcher.in_flight == 0, timeout=5)
    print(f"non-streaming client hung up: slots free {freed * 1000:.0f} ms after its timeout")
    assert generator.decode_steps - steps < 900


# -- 7. seeded requests batch together --------------------------------------------------------


def _seeded_text(server, seed: int, results: dict | None = None) -> str:
    body = {"model": "tiny", "prompt": "The a of", "max_tokens": 12, "temperature": 1.0, "seed": seed,
            "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, headers=AUTH, timeout=30) as response:
        text = "".join(json.loads(line[6:])["choices"][0]["text"]
                       for line in response.iter_lines() if line.startswith("data: {") and '"choices": [{' in line)
    if results is not None:
        results[seed] = text
    return text


def test_seeded_streams_share_a_batch_and_keep_their_text(server):
    alone = {seed: _seeded_text(server, seed) for seed in (1, 2)}
    before = len(server.batch_sizes)
    batched: dict[int, str] = {}
    threads = [threading.Thread(target=_seeded_text, args=(server, seed, batched)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert server.batch_sizes[before:] == [2], "two seeded streams were not batched together"
    assert batched == alone and alone[1] != alone[2]


# -- 8. API keys off the command line ---------------------------------------------------------


def test_api_key_from_option_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_API_KEY", "env-key")
    (tmp_path / "key").write_text("  file-key \nsecond line\n")
    assert _api_key(ServeConfig()) == "env-key"
    assert _api_key(ServeConfig(api_key_file=str(tmp_path / "key"))) == "file-key"
    assert _api_key(ServeConfig(api_key="flag-key", api_key_file=str(tmp_path / "key"))) == "flag-key"
    monkeypatch.delenv("SFTLAB_API_KEY")
    assert _api_key(ServeConfig()) is None
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ConfigError, match="api_key_file"):
            _api_key(ServeConfig(api_key_file=str(path)))


def test_wrong_or_missing_key_is_401_in_the_openai_shape(server):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = httpx.post(f"{server.base_url}/chat/completions", headers=headers,
                              json={"messages": [{"role": "user", "content": "hi"}]})
        assert _error(response, 401)["code"] == "invalid_api_key"
