"""`sftlab judge mt-bench` and `judge alpaca-eval` against a loopback fake judge: the judge's
length limit is the config's, a judge that never gives a verdict stops the run early with
the reply quoted, and `judge winrate` on AlpacaEval's instructions uses the shipped table."""
import json

import pytest

from sftlab.cli import main
from tests.fake_openai import Endpoint, serve


class Judge(Endpoint):
    """Chat completions: "Rating: [[7]]" for MT-Bench prompts, "[[B]]" for pairwise ones,
    or (``mute``) a reply without any verdict. Records every request body."""

    bodies = []
    mute = False

    def do_POST(self):
        body = self.body()
        Judge.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        text = "I cannot decide." if Judge.mute else ("B. [[B]]" if "[Response A]" in prompt else "Rating: [[7]]")
        self.chat(text, usage={"prompt_tokens": 5, "completion_tokens": 3})


@pytest.fixture()
def judge_url():
    Judge.bodies, Judge.mute = [], False
    with serve(Judge) as base_url:
        yield base_url


def answers_file(tmp_path, shared_data, count):
    questions = [json.loads(line) for line in
                 (shared_data / "mt_bench" / "question.jsonl").read_text().splitlines()[:count]]
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps({"question_id": q["question_id"],
                                          "choices": [{"index": 0, "turns": ["first", "second"]}]})
                              for q in questions))
    return path


def test_mt_bench_cli_with_a_fake_judge(tmp_path, shared_data, judge_url, capsys):
    args = ["judge", "mt-bench", "--answers", str(answers_file(tmp_path, shared_data, 3)),
            "--data-dir", str(shared_data / "mt_bench"), "--limit", "3", "--judge", "fake",
            "--judge-base-url", judge_url, "--judge-max-tokens", "77", "--cache-dir", "", "-o", str(tmp_path / "out")]
    assert main(args) == 0
    assert "MT-Bench 7.00" in capsys.readouterr().out
    assert len(Judge.bodies) == 6 and {b["max_tokens"] for b in Judge.bodies} == {77}
    summary = json.loads((tmp_path / "out" / "results.json").read_text())["judge"]["mt_bench"]
    assert summary["score"] == 7.0 and summary["n_parse_failures"] == 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["config"]["judge"]["max_tokens"] == 77


def test_mt_bench_stops_when_no_rating_parses(tmp_path, shared_data, judge_url, capsys):
    Judge.mute = True
    args = ["judge", "mt-bench", "--answers", str(answers_file(tmp_path, shared_data, 10)),
            "--data-dir", str(shared_data / "mt_bench"), "--judge", "fake", "--judge-base-url", judge_url,
            "--judge-probe", "4", "--cache-dir", "", "-o", str(tmp_path / "out")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "none of the first 4 replies" in error and "I cannot decide." in error
    assert "or --judge-probe 0 to judge everything anyway" in error  # the CLI's own switch
    assert len(Judge.bodies) == 4  # stopped after the probe, not after all 20 turns
    assert not (tmp_path / "out" / "results.json").exists()


def test_alpaca_eval_stops_when_no_verdict_parses_and_probe_0_goes_on(tmp_path, judge_url, capsys):
    Judge.mute = True
    rows = [{"instruction": f"Task {i}", "output": "text", "generator": "g"} for i in range(6)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    base = ["judge", "alpaca-eval", "--outputs", str(tmp_path / "rows.json"), "--baseline",
            str(tmp_path / "rows.json"), "--judge", "fake", "--judge-base-url", judge_url,
            "--cache-dir", "", "-o", str(tmp_path / "out")]
    assert main(base + ["--judge-probe", "3"]) == 2
    assert "holds a verdict" in capsys.readouterr().err and len(Judge.bodies) == 3
    # probe 0: every pair is judged (12 requests), and only then the win rate finds nothing
    assert main(base + ["--judge-probe", "0", "--judge-max-tokens", "40"]) == 2
    assert "no annotation has a preference" in capsys.readouterr().err
    assert len(Judge.bodies) == 3 + 12 and Judge.bodies[-1]["max_tokens"] == 40


def alpaca_annotations(path, instructions, preference):
    rows = [{"instruction": text, "output_1": "b" * 100, "output_2": "m" * (80 + 3 * (i % 11)),
             "generator_1": "gpt4_1106_preview", "generator_2": path.stem, "preference": preference(i)}
            for i, text in enumerate(instructions)]
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("files", [1, 2])
def test_winrate_on_alpaca_eval_instructions_uses_the_shipped_table(tmp_path, shared_data, capsys, files):
    baseline = json.loads((shared_data / "alpaca_eval" / "gpt4_1106_preview_outputs.json").read_text())
    instructions = [row["instruction"] for row in baseline]
    paths = [str(alpaca_annotations(tmp_path / f"model{k}.json", instructions,
                                    lambda i, k=k: 2.0 if (i + k) % 3 == 0 else 1.0)) for k in range(files)]
    assert main(["judge", "winrate", *paths]) == 0
    assert "LC variant: length_controlled_v1" in capsys.readouterr().out
    assert main(["judge", "winrate", *paths, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summaries = [result] if files == 1 else [result[p] for p in paths]
    assert all(s["lc_variant"].startswith("length_controlled_v1") for s in summaries)
