"""``objective: reward`` end to end: examples/reward.yaml trains through ``sftlab train`` and
reports held-out pair accuracy; the saved reward model (LoRA adapter or full model, with
``reward_head.safetensors``) reloads with ``load_reward_model`` and scores exactly as the
trained one; wrong paths and settings fail with one clear line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sftlab.config import build_config
from sftlab.errors import ConfigError, SftlabError
from sftlab.train.config import TrainConfig
from sftlab.train.objectives.reward import HEAD_FILE, load_reward_model, sequence_rewards

REPO = Path(__file__).resolve().parents[3]


def preference_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?", "chosen": f"The answer is {2 * i}.",
             "rejected": f"maybe {2 * i + 1}??"} for i in range(n)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def reward_config(tmp_path, data, **settings) -> TrainConfig:
    base = {"objective": "reward", "output_dir": str(tmp_path), "progress": False, "plot": False,
            "seed": 0, "data": {"paths": [data], "max_length": 128},
            "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


def test_the_example_config_trains_and_reports_held_out_accuracy(tmp_path, monkeypatch, capsys):
    from sftlab.cli import main

    monkeypatch.chdir(REPO)  # the example names ../shared/data relative to the repository
    out = tmp_path / "run"
    code = main(["train", "examples/reward.yaml", "max_steps=2", f"output_dir={out}",
                 "progress=false", "plot=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    final = [r for r in rows if "eval_accuracy" in r][-1]
    assert 0 <= final["eval_accuracy"] <= 1 and math.isfinite(final["eval_margin"])
    assert (out / "adapter" / HEAD_FILE).is_file()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_saved_reward_model_reloads_and_scores_as_trained(tmp_path, tiny_tokenizer, method):
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    config = reward_config(tmp_path / "run", data, batch_size=4, max_steps=3,
                           **{"model.name": "tiny", "method.name": method, "optim.lr": 1e-2})
    result = train(config)  # loaded by name: the adapter records its base model
    assert (result.saved_to / HEAD_FILE).is_file()
    reward_model = load_reward_model(tmp_path / "run")
    conversations = [[{"role": "user", "content": "What is 3 + 3?"},
                      {"role": "assistant", "content": answer}] for answer in ("The answer is 6.", "maybe 7??")]
    scores = reward_model.score(conversations)
    trained = result.prepared.model.eval()
    rows = [reward_model.tokenize(c) for c in conversations]
    from sftlab.data.collate import collate_padded

    batch = collate_padded(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = sequence_rewards(trained, batch["input_ids"], batch["attention_mask"]).tolist()
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert scores[0] != scores[1] and all(math.isfinite(s) for s in scores)
    assert len(reward_model.score(["plain text is scored as it is"])) == 1


def test_a_directory_without_a_head_is_not_a_reward_model(tmp_path, tiny_model_dir):
    with pytest.raises(SftlabError, match=f"no {HEAD_FILE} here or in model/ or adapter/"):
        load_reward_model(tiny_model_dir)


@pytest.mark.parametrize("setting, error, message", [
    ({"data.packing": True}, ConfigError, "objective=reward trains pairs as padded rows"),
    ({"reward.center_rewards": -0.1}, ConfigError, "reward.center_rewards must be >= 0"),
])
def test_bad_reward_settings_are_config_errors(tmp_path, setting, error, message):
    with pytest.raises(error, match=message):
        reward_config(tmp_path, "pairs.jsonl", **setting)


def test_prompt_tuning_is_refused(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(2))
    with pytest.raises(ConfigError, match="objective=reward reads the last token's hidden state"):
        train(reward_config(tmp_path / "run", data, **{"method.name": "prompt"}),
              model=tiny_model(seed=0), tokenizer=tiny_tokenizer)


def test_resume_restores_the_head_from_the_checkpoint(tmp_path):
    """The head is a module of the model, so a LoRA checkpoint keeps it: a run resumed at
    step 2 ends exactly where an uninterrupted run does."""
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    settings = {"model.name": "tiny", "method.name": "lora", "optim.lr": 1e-2, "batch_size": 2,
                "save_model": False}
    whole = train(reward_config(tmp_path / "a", data, max_steps=4, **settings)).history
    train(reward_config(tmp_path / "b", data, max_steps=2, save_every=2, **settings))
    resumed = train(reward_config(tmp_path / "b", data, max_steps=4, resume=True, **settings)).history
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert resumed[-1]["grad_norm"] == whole[-1]["grad_norm"] and whole[-1]["loss"] != whole[0]["loss"]
