"""compare-data in-process on the tiny model: a data file as a source, k examples each, resume."""
import json

from sftlab.cli.study import checkable_benchmark
from sftlab.study import runs
from sftlab.study.compare_data import run_compare_data
from sftlab.study.config import CompareDataConfig


def test_a_file_source_against_random_then_a_resume_that_trains_nothing(tmp_path, monkeypatch):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Repeat the word {w} twice.", "output": f"{w} {w}"}) + "\n"
                            for w in ("cat", "dog", "sun", "sea", "car", "owl")))
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", str(data)], equalise="examples", k=4,
                               seeds=[0], output_dir=str(tmp_path / "c"))
    benchmark = checkable_benchmark(config)
    summary = run_compare_data(config, benchmark)
    assert summary["jobs"]["trained"] == 2 and summary["budget_tokens"] == {}
    assert {row["source"]: row["examples"] for row in summary["sources"]} == {"random": [4], str(data): [4]}
    trained_on = [json.loads(line)["messages"][0]["content"] for row in summary["sources"] if row["source"] == str(data)
                  for line in open(f"{row['runs'][0]['run_dir']}/data.jsonl")]
    assert all(text.startswith("Repeat the word") for text in trained_on)
    assert set(summary["differences_vs_baseline"]) == {str(data)}

    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(runs, "finetune", fail)
    monkeypatch.setattr(runs, "generate_answers", fail)
    again = run_compare_data(config, benchmark)
    assert again["jobs"]["trained"] == 0 and again["sources"] == summary["sources"]


def test_a_pool_file_selects_longest_at_the_budget(tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": " ".join([w] * reps)}) + "\n"
                            for w, reps in (("a", 1), ("b", 6), ("c", 2), ("d", 9), ("e", 1), ("f", 3))))
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", "longest"], pool=str(data), k=3,
                               seeds=[0], output_dir=str(tmp_path / "c"))
    summary = run_compare_data(config, checkable_benchmark(config))
    assert summary["pool_size"] == 6
    rows = {row["source"]: row for row in summary["sources"]}
    budget = summary["budget_tokens"][0]  # seed -> trained tokens (study.json writes the key as "0")
    assert rows["random"]["selected_tokens"][0] <= budget and rows["longest"]["selected_tokens"][0] <= budget
    longest = [json.loads(line)["messages"][1]["content"] for line in open(f"{rows['longest']['runs'][0]['run_dir']}/data.jsonl")]
    assert longest[0] == " ".join(["d"] * 9)  # the longest response first


def test_a_source_smaller_than_k_fails_before_training(tmp_path, monkeypatch):
    import pytest

    from sftlab.errors import ConfigError

    data = tmp_path / "two.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')

    def fail(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(runs, "finetune", fail)
    config = CompareDataConfig(model="tiny", fast=True, sources=["random", str(data)], k=4,
                               output_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"k: 4 examples cannot be taken from \{'.*two.jsonl': 2\}; lower k"):
        run_compare_data(config, checkable_benchmark(config))
