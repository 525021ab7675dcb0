"""Every teacher pipeline end to end against `sftlab serve` (the tiny model) over loopback.

The tiny model writes gibberish, so these runs check the plumbing a user relies on: the
pipelines talk to a real OpenAI-compatible server, finish within their bounds, write only
well-formed records with provenance, count every rejection, and a rerun adds nothing.
"""
import json

import pytest

from sftlab.synth import distill, evol, self_chat, self_instruct
from sftlab.synth.client import TeacherConfig
from sftlab.infer.server import start_server


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    with start_server("tiny", default_max_tokens=16, model_name="tiny") as server:
        yield TeacherConfig(base_url=server.base_url, model="tiny", timeout=60,
                            cache_dir=str(tmp_path_factory.mktemp("teacher-cache")))


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"Describe the number {i}."}) + "\n"
                            for i in range(3)))
    return str(path)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_distill_and_rerun(tmp_path, teacher, prompts):
    config = distill.DistillConfig(teacher=teacher, prompts=prompts, output=str(tmp_path / "d.jsonl"),
                                   max_tokens=8, temperature=0.0)
    report = distill.run(config)
    assert report.written + sum(report.rejected.values()) == 3
    assert distill.run(config).written == 0
    for row in _rows(config.output):
        assert row["messages"][-1]["role"] == "assistant" and row["meta"]["provenance"]["teacher"] == "tiny"


def test_self_instruct_is_bounded(tmp_path, teacher, shared_data):
    config = self_instruct.SelfInstructConfig(
        teacher=teacher, seed_tasks=str(shared_data / "self_instruct" / "seed_tasks.jsonl"),
        output=str(tmp_path / "si.jsonl"), num_instructions=2, max_requests=4, request_batch_size=2,
        max_tokens=24)
    report = self_instruct.run(config)
    assert report.requests <= 4
    assert report.total == len(_rows(config.output)) <= 2
    assert report.written + sum(report.rejected.values()) > 0  # every parsed instruction is accounted for


def test_evol_and_self_chat(tmp_path, teacher, prompts):
    evol_config = evol.EvolConfig(teacher=teacher, prompts=prompts, output=str(tmp_path / "e.jsonl"),
                                  rounds=1, max_tokens=12)
    report = evol.run(evol_config)
    assert report.written + sum(report.rejected.values()) == 3
    chat_config = self_chat.SelfChatConfig(teacher=teacher, prompts=prompts, output=str(tmp_path / "c.jsonl"),
                                           max_calls=2, max_tokens=12)
    report = self_chat.run(chat_config)
    assert report.written + sum(report.rejected.values()) == 3
    for row in _rows(chat_config.output):
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant"
