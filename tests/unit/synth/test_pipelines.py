"""distill, evol-instruct and self-chat end to end against the fault-injecting server."""
import json

import pytest

from sftlab.synth import distill, evol, self_chat
from sftlab.synth.client import TeacherConfig
from sftlab.synth.faults import FaultyServer


def scripted(messages):
    prompt = messages[-1]["content"]
    if "#Given Prompt#" in prompt:
        original = prompt.split("#Given Prompt#:\n")[1].split("\n\n#")[0]
        if "sorry" in original:
            return original  # no change: eliminated
        return f"{original} Answer in exactly three bullet points."
    if prompt.startswith("Here are two instructions"):
        return "Not Equal"
    if prompt.startswith("The following is a conversation"):
        turns = prompt.count("\n[Human]")
        if turns >= 3:
            return "[AI] Glad to help.\n[Human] Thanks!"
        return "[AI] Here is an answer.\n[Human] Could you say more?\n[AI] Sure, more detail.\n"
    if "refuse" in prompt:
        return "I'm sorry, I cannot do that."
    return "A helpful answer to: " + prompt[:40]


def _teacher(server, tmp_path):
    return TeacherConfig(base_url=server.base_url, timeout=0.3, backoff=0.01, max_retries=12,
                         cache_dir=str(tmp_path / "cache"))


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "instruction": f"Explain topic number {i} briefly."} for i in range(6)]
    rows.append({"id": "bad", "instruction": "Please refuse this, sorry."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_distill_with_orca_system_prompts_and_resume(tmp_path, prompts):
    with FaultyServer(scripted, error_rate=0.3, slow_seconds=0.5, seed=5) as server:
        config = distill.DistillConfig(teacher=_teacher(server, tmp_path), prompts=str(prompts),
                                       output=str(tmp_path / "d.jsonl"), orca_system_prompts=True, batch_size=3)
        first = distill.run(config)
        again = distill.run(config)
    rows = [json.loads(line) for line in open(config.output)]
    assert first.written == 7 and again.written == 0 and len(rows) == 7
    assert all(r["messages"][0]["role"] == "system" for r in rows)
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert rows[0]["meta"]["provenance"]["pipeline"] == "distill"


def test_evol_instruct_rounds_and_elimination(tmp_path, prompts):
    with FaultyServer(scripted, error_rate=0.2, slow_seconds=0.5, seed=6) as server:
        config = evol.EvolConfig(teacher=_teacher(server, tmp_path), prompts=str(prompts),
                                 output=str(tmp_path / "e.jsonl"), rounds=2)
        report = evol.run(config)
    rows = [json.loads(line) for line in open(config.output)]
    assert report.written == len(rows) == 12  # 6 good prompts x 2 rounds
    assert report.rejected["no information gain"] == 2  # the 'sorry' prompt, once per round
    second_round = [r for r in rows if r["meta"]["provenance"]["round"] == 2]
    assert all(r["messages"][0]["content"].count("three bullet points") == 2 for r in second_round)
    assert len({r["id"] for r in rows}) == 12


def test_self_chat_builds_multi_turn_conversations(tmp_path, prompts):
    with FaultyServer(scripted, error_rate=0.2, slow_seconds=0.5, seed=7) as server:
        config = self_chat.SelfChatConfig(teacher=_teacher(server, tmp_path), prompts=str(prompts),
                                          output=str(tmp_path / "c.jsonl"), max_turns=4)
        report = self_chat.run(config)
    rows = [json.loads(line) for line in open(config.output)]
    assert report.written == len(rows) == 7
    roles = [m["role"] for m in rows[0]["messages"]]
    assert roles[:4] == ["user", "assistant", "user", "assistant"] and roles[-1] == "assistant"
    assert all(a != b for a, b in zip(roles, roles[1:]))


def refusing(messages):
    """``scripted``, but a refusal (content: null) for the prompt asking for one."""
    return None if "refuse" in messages[-1]["content"] else scripted(messages)


def test_a_refusal_is_counted_not_a_crash(tmp_path, prompts):
    with FaultyServer(refusing, error_rate=0.0) as server:
        config = distill.DistillConfig(teacher=_teacher(server, tmp_path), prompts=str(prompts),
                                       output=str(tmp_path / "d.jsonl"))
        report = distill.run(config)
        assert server.counts["ok"] == 7  # skip (the default): asked once
    assert report.written == 6 and report.refused == 1
    assert report.rejected["empty or too short response"] == 1
    assert "teacher refusals: 1" in report.summary()
    saved = json.loads(report.save(config.output, config).read_text())
    assert saved["refused"] == 1 and saved["config"]["teacher"]["on_refusal"] == "skip"


def test_refusals_retried_when_configured(tmp_path, prompts):
    asked = []

    def refuses_twice(messages):
        if "refuse" in messages[-1]["content"]:
            asked.append(1)
            if len(asked) <= 2:
                return None
        return scripted(messages)

    with FaultyServer(refuses_twice, error_rate=0.0) as server:
        teacher = _teacher(server, tmp_path)
        teacher.on_refusal, teacher.max_retries = "retry", 3
        config = distill.DistillConfig(teacher=teacher, prompts=str(prompts), output=str(tmp_path / "d.jsonl"))
        report = distill.run(config)
    assert len(asked) == 3 and report.refused == 0 and report.written == 7


def test_a_refusal_on_every_retry_is_given_up_as_refused(tmp_path, prompts):
    with FaultyServer(refusing, error_rate=0.0) as server:
        teacher = _teacher(server, tmp_path)
        teacher.on_refusal, teacher.max_retries = "retry", 2
        config = distill.DistillConfig(teacher=teacher, prompts=str(prompts), output=str(tmp_path / "d.jsonl"))
        report = distill.run(config)
        assert server.counts["ok"] == 6 + 3
    assert report.refused == 1 and report.written == 6
