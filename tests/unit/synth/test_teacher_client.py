import json

import pytest

from sftlab.synth.client import ChatRequest, HTTPTeacher, TeacherConfig, TeacherError
from sftlab.synth.faults import FaultyServer
from sftlab.synth.store import RecordStore
from sftlab.types import Message


def echo(messages):
    return "echo: " + messages[-1]["content"]


def _teacher(server, tmp_path=None, **overrides):
    values = dict(base_url=server.base_url, timeout=0.3, backoff=0.01, max_retries=12, concurrency=4,
                  cache_dir=str(tmp_path / "cache") if tmp_path else None)
    values.update(overrides)
    return HTTPTeacher(TeacherConfig(**values))


def test_every_fault_kind_is_retried_until_success():
    requests = [ChatRequest([Message("user", f"q{i}")]) for i in range(30)]
    with FaultyServer(echo, error_rate=0.5, slow_seconds=0.6, seed=1) as server:
        teacher = _teacher(server)
        answers = teacher.complete(requests)
    assert answers == [f"echo: q{i}" for i in range(30)]
    assert all(server.counts[f] > 0 for f in ("500", "429", "slow", "truncated", "not_json"))
    assert teacher.calls == sum(server.counts.values()) > 30


def test_cache_answers_repeated_requests_without_calls(tmp_path):
    request = ChatRequest([Message("user", "hello")], seed=3)
    with FaultyServer(echo, error_rate=0.0) as server:
        first = _teacher(server, tmp_path)
        assert first.complete([request]) == ["echo: hello"]
        second = _teacher(server, tmp_path)
        assert second.complete([request]) == ["echo: hello"]
        assert second.calls == 0
        # a different seed is a different request
        assert second.complete([ChatRequest([Message("user", "hello")], seed=4)]) == ["echo: hello"]
        assert second.calls == 1


def test_client_error_is_not_retried():
    with FaultyServer(echo, error_rate=0.0) as server:
        teacher = _teacher(server, base_url=server.base_url.replace("/v1", "/nope"))
        with pytest.raises(TeacherError, match="HTTP 501|HTTP 404"):
            teacher.complete([ChatRequest([Message("user", "x")])])
        assert teacher.calls == 1


def test_gives_up_with_a_clear_message():
    with FaultyServer(echo, error_rate=1.0, faults=("500",)) as server:
        teacher = _teacher(server, max_retries=2)
        with pytest.raises(TeacherError, match="gave up after 3 attempts.*HTTP 500"):
            teacher.complete([ChatRequest([Message("user", "x")])])


def test_record_store_cuts_torn_line_and_skips_known_ids(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordStore(path) as store:
        assert store.write({"id": "a", "x": 1})
        assert not store.write({"id": "a", "x": 2})
    with path.open("a") as f:
        f.write('{"id": "b", "x"')  # the process died mid-write
    with RecordStore(path) as store:
        assert [r["id"] for r in store] == ["a"]
        assert store.write({"id": "b", "x": 3})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
