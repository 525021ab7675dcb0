"""HumanEval pass@k end to end: several samples per problem, generated or read from a file."""
import json
from math import comb

import pytest

from sftlab.errors import ConfigError, DataError
from sftlab.eval.humaneval import read_problems
from sftlab.eval.runner import EvalConfig, _generate_in_chunks, evaluate
from sftlab.infer.base import Generation, SamplingConfig


@pytest.fixture(scope="module")
def problems(shared_data):
    return read_problems(shared_data / "humaneval" / "HumanEval.jsonl.gz")[:2]


def chen_pass_at_k(n, c, k):
    """Chen et al. (2021), eq. 1, with exact integers."""
    return 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)


def test_responses_file_with_several_samples_per_task_id(tmp_path, shared_data, problems):
    # problem 0: 3 of 12 samples correct; problem 1: 11 of 12 (rows interleaved, some ids "ID#k")
    passing = {problems[0]["task_id"]: 3, problems[1]["task_id"]: 11}
    rows = []
    for k in range(12):
        for problem in problems:
            good = k < passing[problem["task_id"]]
            rows.append({"task_id" if k % 2 else "id": problem["task_id"] + ("#%d" % k if k == 5 else ""),
                         "completion": problem["canonical_solution"] if good else "    return None\n"})
    responses = tmp_path / "responses.jsonl"
    responses.write_text("\n".join(json.dumps(r) for r in rows))
    config = EvalConfig(tasks=["humaneval"], data_dir=str(shared_data), limit=2, responses=str(responses),
                        output_dir=str(tmp_path / "out"), bootstrap_resamples=200)
    metrics = evaluate(config, progress=False)["tasks"]["humaneval"]["metrics"]
    assert set(metrics) == {"pass@1", "pass@10"}  # 100 > 12 samples
    for k in (1, 10):
        expected = (chen_pass_at_k(12, 3, k) + chen_pass_at_k(12, 11, k)) / 2
        assert metrics[f"pass@{k}"]["mean"] == pytest.approx(expected)
        assert metrics[f"pass@{k}"]["n"] == 2  # problems, not samples
        assert metrics[f"pass@{k}"]["low"] <= expected <= metrics[f"pass@{k}"]["high"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24
    assert samples[0]["id"] == problems[0]["task_id"] + "#0"


def test_several_responses_need_every_item(tmp_path, shared_data, problems):
    responses = tmp_path / "responses.jsonl"
    row = {"id": problems[0]["task_id"], "completion": problems[0]["canonical_solution"]}
    responses.write_text(json.dumps(row) + "\n" + json.dumps(row))
    config = EvalConfig(tasks=["humaneval"], data_dir=str(shared_data), limit=2, responses=str(responses))
    with pytest.raises(DataError, match=problems[1]["task_id"]):
        evaluate(config, progress=False)


class CountingGenerator:
    """Returns the canonical solution for every other row of a call: pass@1 = 1/2."""

    def __init__(self, problems):
        self.solutions = {p["prompt"]: p["canonical_solution"] for p in problems}
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append((list(prompts), sampling))
        return [Generation(self.solutions[p] if i % 2 == 0 else "    return None\n", 5, 5, "stop")
                for i, p in enumerate(prompts)]


def test_num_samples_generates_n_per_problem_with_the_temperature(tmp_path, shared_data, problems):
    generator = CountingGenerator(problems)
    config = EvalConfig(model="fake", tasks=["humaneval"], data_dir=str(shared_data), limit=2,
                        num_samples=4, temperature=0.8, batch_size=1, bootstrap_resamples=100)
    result = evaluate(config, generator=generator, progress=False)
    prompts = [p for call, _ in generator.calls for p in call]
    assert prompts == [problems[0]["prompt"]] * 4 + [problems[1]["prompt"]] * 4
    assert all(sampling.temperature == 0.8 for _, sampling in generator.calls)
    metrics = result["tasks"]["humaneval"]["metrics"]
    assert metrics["pass@1"]["mean"] == pytest.approx(0.5) and "pass@10" not in metrics
    assert result["settings"]["tasks"]["humaneval"]["generation"]["temperature"] == 0.8


def test_num_samples_needs_a_temperature(shared_data):
    config = EvalConfig(model="fake", tasks=["humaneval"], data_dir=str(shared_data), num_samples=5)
    with pytest.raises(ConfigError, match="--temperature"):
        evaluate(config, generator=object(), progress=False)


def test_chunks_never_split_the_samples_of_one_item():
    class Recorder:
        sizes = []

        def generate(self, prompts, sampling):
            self.sizes.append(len(prompts))
            return [Generation("", 0, 0, "stop") for _ in prompts]

    recorder = Recorder()
    _generate_in_chunks(recorder, ["p"] * 30, SamplingConfig(), batch_size=1, progress=False, label="x", group=6)
    assert recorder.sizes == [6] * 5  # 4 rounded up to whole groups of 6
