"""The imitation study (Gudibande et al. 2023) end to end on the tiny model: what the students
train on, the win rate a (fake) judge gives, the no-judge path, a served teacher, and the
bad keys that fail before anything trains."""
import json
import socket

import pytest

from sftlab.cli.study import checkable_benchmark
from sftlab.errors import ConfigError
from sftlab.eval.judge.client import JudgeError
from sftlab.eval.judge.pairwise import judge_messages
from sftlab.study import runs
from sftlab.study.config import ImitationConfig
from sftlab.study.imitation import run_imitation
from tests.fake_openai import Endpoint, serve

SUPPORTED = ["uppercase", "add", "sort_numbers"]
TEACHER_ANSWER = "The teacher says 42."


class Server(Endpoint):
    """An OpenAI-compatible endpoint. As a judge (a pairwise prompt) it prefers the longer
    response, ``[[C]]`` on equal lengths; ``judge_reply`` overrides every verdict. As a teacher
    (any other prompt) it answers ``TEACHER_ANSWER``."""

    judge_reply = None
    judged: list = []
    asked: list = []

    def do_GET(self):
        self.send_json({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self):
        prompt = self.body()["messages"][-1]["content"]
        if "[Response A]" in prompt:
            Server.judged.append(prompt)
            a = prompt.split("[Response A]\n")[1].split("\n[End of Response A]")[0]
            b = prompt.split("[Response B]\n")[1].split("\n[End of Response B]")[0]
            text = Server.judge_reply or f"Compared. [[{'A' if len(a) > len(b) else 'B' if len(b) > len(a) else 'C'}]]"
        else:
            Server.asked.append(prompt)
            text = TEACHER_ANSWER
        self.chat(text)


@pytest.fixture()
def url():
    Server.judge_reply, Server.judged, Server.asked = None, [], []
    with serve(Server) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One runs folder for the module: the teacher and the students train once."""
    return tmp_path_factory.mktemp("imitation-runs")


def config(tmp_path, runs_dir, **keys):
    return ImitationConfig(**{"model": "tiny", "fast": True, "seeds": [0], "eval_per_task": 1,
                              "supported_tasks": SUPPORTED, "output_dir": str(tmp_path / "study"),
                              "runs_dir": str(runs_dir), **keys})


def rows(path):
    return [json.loads(line) for line in open(path)]


def closed_port():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_end_to_end_with_a_judge(tmp_path, runs_dir, url):
    c = config(tmp_path, runs_dir, judge="fake", judge_base_url=url)
    summary = run_imitation(c, checkable_benchmark(c))
    out = tmp_path / "study"
    assert json.loads((out / "study.json").read_text())["students"][1]["n"] == 8
    for name in ("accuracy_vs_size.png", "win_rate_vs_size.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "Style vs capability" in (out / "report.html").read_text()
    items = 16  # one held-out item per task (judge_per_task 1 under --fast)
    assert summary["judge"]["items"] == items
    sent = [judge_messages(a["instruction"], *outputs)[1]["content"] for name in ("n4-seed0", "n8-seed0", "untuned")
            for a in rows(out / "judgements" / f"{name}.jsonl")
            for outputs in ((a["output_1"], a["output_2"]), (a["output_2"], a["output_1"]))]
    assert len(sent) == 3 * items * 2  # two students and the untuned model, both orders
    assert set(Server.judged) == set(sent)  # (the same pair twice is asked once: the judge cache)
    asked = len(Server.judged)
    assert summary["eval_items"] == {"supported": 3, "unsupported": 13}
    for student in summary["students"]:
        win = student["win_rate"]
        assert win["all"]["n"] == items and win["supported"]["n"] == 3 and win["unsupported"]["n"] == 13
        judged = rows(out / "judgements" / f"n{student['n']}-seed0.jsonl")
        # the fake judge prefers the longer answer, in both orders: the win rate follows the lengths
        expected = [1.0 if len(a["output_2"]) > len(a["output_1"]) else 0.0 if len(a["output_2"]) < len(a["output_1"])
                    else 0.5 for a in judged]
        assert win["all"]["mean"] == pytest.approx(sum(expected) / items)
        assert win["all"]["low"] <= win["all"]["mean"] <= win["all"]["high"]
        assert {a["generator_1"] for a in judged} == {"teacher"}
        for group in ("supported", "unsupported"):
            block = student["accuracy"][group]
            assert block["n"] == summary["eval_items"][group] and 0 <= block["low"] <= block["mean"] <= block["high"]
            assert "mean" in student["minus_teacher"][group] and "mean" in student["minus_base"][group]
    assert summary["headline"]["n"] == 8
    again = run_imitation(c, checkable_benchmark(c))  # runs, answers and verdicts all kept
    assert again["jobs"]["trained"] == 0 and len(Server.judged) == asked
    assert again["students"][1]["win_rate"]["all"] == summary["students"][1]["win_rate"]["all"]


def test_students_imitate_the_teacher_on_the_supported_tasks_only(tmp_path, runs_dir):
    c = config(tmp_path, runs_dir)
    benchmark = checkable_benchmark(c)
    summary = run_imitation(c, benchmark)
    assert summary["judge"]["unavailable"].startswith("no judge configured (judge='')")
    assert all(s["win_rate"] == summary["judge"] for s in summary["students"])
    assert not (tmp_path / "study" / "win_rate_vs_size.png").exists()
    assert (tmp_path / "study" / "accuracy_vs_size.png").exists()

    teacher_data = rows(f"{summary['teacher']['run']['run_dir']}/data.jsonl")
    assert len(teacher_data) == len(benchmark.pool)  # the teacher: every seen task, gold answers
    distilled = {row["id"]: row for row in rows(summary["distilled"]["path"])}
    supported_pool = {c.id: c for c in benchmark.pool if c.meta["task"] in SUPPORTED}
    assert set(distilled) == set(supported_pool) and summary["distilled"]["answers"] == 12
    trained = {}
    for student in summary["students"]:
        data = rows(f"{student['runs'][0]['run_dir']}/data.jsonl")
        assert len(data) == student["n"]
        for row in data:
            prompt, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
            assert row["id"] in supported_pool and prompt == supported_pool[row["id"]].messages[0].content
            assert answer == distilled[row["id"]]["answer"]  # the teacher's answer, not the gold one
            assert answer != supported_pool[row["id"]].messages[-1].content
        trained[student["n"]] = {row["id"] for row in data}
    assert trained[4] < trained[8]  # nested


def test_a_served_teacher_is_distilled_and_asked_the_items(tmp_path, runs_dir, url):
    c = config(tmp_path, runs_dir, teacher="served", teacher_base_url=url, imitation_sizes=[4])
    summary = run_imitation(c, checkable_benchmark(c))
    assert summary["teacher"]["kind"] == "remote" and summary["teacher"]["run"] is None
    assert len(Server.asked) == 12 + 16  # the supported pool's prompts, then the held-out items
    data = rows(f"{summary['students'][0]['runs'][0]['run_dir']}/data.jsonl")
    assert {row["messages"][-1]["content"] for row in data} == {TEACHER_ANSWER}
    assert summary["teacher_accuracy"]["supported"]["mean"] == 0.0  # "42" is no task's answer here


def test_a_judge_without_verdicts_stops_the_study(tmp_path, runs_dir, url):
    Server.judge_reply = "Both are fine."
    c = config(tmp_path, runs_dir, judge="mute", judge_base_url=url)
    with pytest.raises(JudgeError, match="Both are fine"):
        run_imitation(c, checkable_benchmark(c))


@pytest.mark.parametrize("keys, message", [
    ({"supported_tasks": ["uppercase", "nope"]}, r"^supported_tasks: \['nope'\] have no training prompts"),
    ({"supported_tasks": ["lowercase"]}, r"^supported_tasks: \['lowercase'\] have no training prompts"),
    ({"imitation_sizes": [4, 13]}, r"^imitation_sizes: the largest size 13 exceeds the 12 training prompts"),
    ({"imitation_sizes": [8, 4]}, r"^imitation_sizes: must be positive and strictly increasing"),
    ({"judge_per_task": 0}, r"^judge_per_task: must be positive"),
    ({"teacher_base_url": "http://127.0.0.1:1/v1"}, r"^teacher_base_url: given without a teacher"),
    ({"teacher": "/no/such/model"}, r"^teacher: model directory /no/such/model does not exist"),
    ({"teacher": "t", "teacher_base_url": "CLOSED"},
     r"^teacher_base_url: http://127.0.0.1:\d+/v1/models does not answer"),
    ({"judge": "j", "judge_base_url": "CLOSED"}, r"^judge_base_url: http://127.0.0.1:\d+/v1/models does not answer"),
])
def test_bad_keys_fail_before_anything_trains(tmp_path, monkeypatch, keys, message):
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: pytest.fail("trained"))
    keys = {k: v.replace("CLOSED", f"http://127.0.0.1:{closed_port()}/v1") for k, v in keys.items()
            if isinstance(v, str)} | {k: v for k, v in keys.items() if not isinstance(v, str)}
    c = config(tmp_path, tmp_path / "runs", **keys)
    with pytest.raises(ConfigError, match=message):
        run_imitation(c, checkable_benchmark(c))
    assert not (tmp_path / "study").exists()  # nothing was even set up
