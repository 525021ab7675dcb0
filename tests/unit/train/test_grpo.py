"""``objective: grpo`` end to end: examples/grpo.yaml trains through ``sftlab train`` on
GSM8K prompts, LoRA with the KL penalty runs, the built-in rewards score as documented, and
bad rewards, rows and settings fail with one clear line naming the reward, file or field."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftlab.config import build_config
from sftlab.errors import ConfigError, DataError, SftlabError
from sftlab.train.config import TrainConfig
from sftlab.train.objectives.grpo import REWARDS, RewardFunction, read_prompts, score

REPO = Path(__file__).resolve().parents[3]
METRICS = ("loss", "reward", "reward_std", "kl", "completion_tokens")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]


def grpo_config(tmp_path, data, **settings) -> TrainConfig:
    base = {"objective": "grpo", "output_dir": str(tmp_path), "progress": False, "plot": False,
            "save_model": False, "seed": 0, "data": {"paths": [data], "max_length": 128},
            "grpo": {"max_new_tokens": 4}, "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


@pytest.fixture()
def custom_reward():
    """Register reward functions for one test and remove them after."""
    added = []

    def add(name, fn):
        REWARDS.register(name)(RewardFunction(fn, needs_answer=False))
        added.append(name)

    yield add
    for name in added:
        del REWARDS._items[name]


def test_the_example_config_trains_on_gsm8k_prompts(tmp_path, monkeypatch, capsys):
    from sftlab.cli import main

    monkeypatch.chdir(REPO)  # the example names ../shared/data relative to the repository
    out = tmp_path / "run"
    code = main(["train", "examples/grpo.yaml", "max_steps=2", "grpo.max_new_tokens=8",
                 f"output_dir={out}", "progress=false", "plot=false", "save_model=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "data: 16 train prompts; 4 completions each per step" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[key]) for r in rows for key in METRICS)
    assert rows[0]["completions"] == 16 and 0 < rows[0]["completion_tokens"] <= 9


def test_lora_with_the_kl_penalty_trains(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(4))
    config = grpo_config(tmp_path / "run", data, batch_size=2, max_steps=3,
                         **{"method.name": "lora", "optim.lr": 1e-2, "grpo.beta": 0.1,
                            "grpo.rewards": ["format"], "grpo.format_pattern": r"\s*[a-m]"})
    result = train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    rows = result.history
    assert len(rows) == 3 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(r[key]) for r in rows for key in METRICS)


@pytest.mark.parametrize("name, completion, answer, expected", [
    ("exact_match", " Paris. ", "paris", 1.0),
    ("exact_match", "Paris is the capital", "Paris", 0.0),
    ("gsm8k", "So she makes 9 * 2 = $18.", "She sells 9 eggs.\n#### 18", 1.0),
    ("gsm8k", "The total is 1,200 dollars", "#### 1200", 1.0),
    ("gsm8k", "I think 17.", "#### 18", 0.0),
    ("gsm8k", "no number here", "#### 18", 0.0),
])
def test_builtin_rewards(name, completion, answer, expected):
    settings = TrainConfig().grpo
    settings.rewards = [name]
    assert score(completion, answer, settings, "prompt #0") == expected


def test_weighted_rewards_sum_and_format_matches_at_the_start():
    settings = TrainConfig().grpo
    settings.rewards, settings.reward_weights = ["exact_match", "format"], [1.0, 0.25]
    settings.format_pattern = r"\d+$"
    assert score("42", "42", settings, "p") == 1.25
    assert score("x 42", "42", settings, "p") == 0.0


@pytest.mark.parametrize("fn, message", [
    (lambda completion, answer, settings: 1 / 0, r"grpo reward 'broken' failed on prompt #0 of the step \(ZeroDivisionError"),
    (lambda completion, answer, settings: float("nan"), "grpo reward 'broken' returned nan on prompt #0"),
])
def test_a_reward_that_raises_or_returns_nan_stops_the_run(tmp_path, tiny_tokenizer, custom_reward, fn, message):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    custom_reward("broken", fn)
    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(2))
    config = grpo_config(tmp_path / "run", data, batch_size=2, max_steps=1, **{"grpo.rewards": ["broken"]})
    with pytest.raises(SftlabError, match=message):
        train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)


def test_a_row_without_an_answer_names_file_line_and_field(tmp_path, tiny_tokenizer):
    rows = prompt_rows(3)
    del rows[1]["answer"]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'answer': missing"):
        read_prompts(data, tiny_tokenizer, 100)
    prompts, dropped = read_prompts(data, tiny_tokenizer, 100, require_answer=False)
    assert len(prompts) == 3 and prompts[1].answer is None and not dropped
    rows[1] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
               "answer": "x"}
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'messages': the prompt's last turn is the assistant's"):
        read_prompts(write_jsonl(tmp_path / "p.jsonl", rows), tiny_tokenizer, 100)


@pytest.mark.parametrize("setting, message", [
    ({"grpo.num_generations": 1}, "grpo.num_generations must be at least 2"),
    ({"grpo.temperature": 0}, "grpo.temperature must be above 0"),
    ({"grpo.rewards": ["exact_match", "format"], "grpo.reward_weights": [1.0]}, "one per reward"),
    ({"data.packing": True}, "objective=grpo trains completions as padded rows"),
])
def test_bad_grpo_settings_are_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        grpo_config(tmp_path, "p.jsonl", **setting)


@pytest.mark.parametrize("setting, message", [
    ({"grpo.rewards": ["exact_matsh"]}, "unknown reward function 'exact_matsh'; did you mean 'exact_match'"),
    ({"grpo.rewards": ["format"]}, "grpo.format_pattern is empty"),
    ({"data.eval_split": 0.2}, "objective=grpo has no held-out loss"),
])
def test_settings_the_objective_refuses(tmp_path, tiny_tokenizer, setting, message):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(4))
    with pytest.raises(ConfigError, match=message):
        train(grpo_config(tmp_path / "run", data, **setting), model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
