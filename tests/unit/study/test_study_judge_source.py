"""compare-data's `judge` source (AlpaGasus): the rating prompt, the score parser, the
selection it makes, and the errors a missing or unreachable judge gives before training."""
import json
import socket

import pytest

from sftlab.cli.study import checkable_benchmark
from sftlab.errors import ConfigError
from sftlab.eval.judge.client import JudgeError
from sftlab.study import runs, select
from sftlab.study.compare_data import run_compare_data
from sftlab.study.config import CompareDataConfig
from sftlab.types import Conversation, Message
from tests.fake_openai import Endpoint, serve


class Judge(Endpoint):
    """Rates a response by the digit it ends with ("... 3" -> "3\\nexplanation"); `reply`
    overrides every rating (a judge that does not follow the format)."""

    reply = None
    prompts: list = []

    def do_GET(self):
        self.send_json({"object": "list", "data": [{"id": "rater", "object": "model"}]})

    def do_POST(self):
        prompt = self.body()["messages"][-1]["content"]
        Judge.prompts.append(prompt)
        response = prompt.split("Response: ")[1].split("\n\nPlease rate")[0]
        text = Judge.reply or f"{response.strip()[-1]}\nThe response is as accurate as its last digit says."
        self.chat(text)


@pytest.fixture()
def judge_url():
    Judge.reply, Judge.prompts = None, []
    with serve(Judge) as base_url:
        yield base_url


def pool_file(tmp_path):
    rows = [{"instruction": f"Rate me {i}.", "output": f"answer {score}"} for i, score in enumerate([5, 2, 4, 5, 3, 5, 1, 5])]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_request_carries_instruction_and_response_in_alpagasus_prompt():
    request = select.judge_request(Conversation([Message("system", "sys"), Message("user", "Add 2 and 3."),
                                                 Message("assistant", "5")]))
    assert request[0]["role"] == "system" and request[1]["role"] == "user"
    assert "Instruction: Add 2 and 3.\n\nResponse: 5\n\nPlease rate according to the accuracy" in request[1]["content"]
    assert "sys" not in request[1]["content"]


@pytest.mark.parametrize("text, score", [("5", 5.0), ("4.5\nGood.", 4.5), ("\n Score: 3/5 because", 3.0),
                                         ("10\nover the scale", None), ("Great answer.\n5", None), ("", None),
                                         ("\x05b\x07ay 4 whi long why", None), ("I give it a 4.", None)])
def test_the_score_is_the_first_lines_number_on_the_scale(text, score):
    assert select.parse_judge_score(text) == score


def test_judge_order_keeps_the_threshold_and_ranks_by_score():
    pool = [Conversation([], id=str(i)) for i in range(5)]
    ordered = select.judge_order(pool, [4.5, None, 5.0, 4.0, 4.5], 4.5)
    assert [c.id for c in ordered] == ["2", "0", "4"]


def test_the_judge_source_trains_on_the_top_rated_examples(tmp_path, judge_url):
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", "judge"], pool=str(pool_file(tmp_path)),
                               k=4, equalise="examples", seeds=[0], judge="rater", judge_base_url=judge_url,
                               output_dir=str(tmp_path / "c"))
    summary = run_compare_data(config, checkable_benchmark(config))
    assert len(Judge.prompts) == 8
    assert summary["judge"]["kept"] == 4 and summary["judge"]["unparsed"] == 0
    assert summary["judge"]["histogram"]["5"] == 4 and summary["judge"]["histogram"]["1"] == 1
    run_dir = next(row["runs"][0]["run_dir"] for row in summary["sources"] if row["source"] == "judge")
    trained = [json.loads(line)["messages"][-1]["content"] for line in open(f"{run_dir}/data.jsonl")]
    assert sorted(trained) == ["answer 5"] * 4
    again = run_compare_data(config, checkable_benchmark(config))  # ratings cached: the judge is not asked again
    assert len(Judge.prompts) == 8 and again["jobs"]["trained"] == 0


def test_a_threshold_that_leaves_too_few_says_to_lower_it(tmp_path, judge_url, monkeypatch):
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: pytest.fail("trained"))
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", "judge"], pool=str(pool_file(tmp_path)),
                               k=5, seeds=[0], judge="rater", judge_base_url=judge_url, output_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="lower k or lower judge_min_score"):
        run_compare_data(config, checkable_benchmark(config))


def test_a_judge_that_never_gives_a_score_fails_on_its_first_replies(tmp_path, judge_url, monkeypatch):
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: pytest.fail("trained"))
    Judge.reply = "I cannot rate this."
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", "judge"], pool=str(pool_file(tmp_path)),
                               k=2, seeds=[0], judge="rater", judge_base_url=judge_url, output_dir=str(tmp_path / "c"))
    with pytest.raises(JudgeError, match="I cannot rate this") as error:
        run_compare_data(config, checkable_benchmark(config))
    assert "stronger judge)" in str(error.value) and "--judge-probe" not in str(error.value)  # no such key here
    assert len(Judge.prompts) == 8  # the probe, not the whole pool (8 here too) ... and nothing trained


def test_no_judge_or_an_unreachable_one_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: pytest.fail("trained"))
    base = dict(model="tiny", fast=True, sources=["random", "judge"], k=2, seeds=[0], output_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="^judge: the `judge` source needs a rater"):
        run_compare_data(CompareDataConfig(**base), None)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = CompareDataConfig(**base, judge="rater", judge_base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ConfigError, match=r"^judge_base_url: http://127.0.0.1:\d+/v1/models does not answer"):
        run_compare_data(config, None)
