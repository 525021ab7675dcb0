"""``objective: ppo`` end to end: examples/reward.yaml then examples/ppo.yaml train through
``sftlab train`` (the reward model trained first, in the test); LoRA runs against the trained
reward model with the adapter-disabled reference; the value head is saved beside the
result and a resumed run ends where an uninterrupted one does; wrong reward models and
settings fail with one clear line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftlab.config import build_config
from sftlab.errors import ConfigError, SftlabError
from sftlab.train.config import TrainConfig
from sftlab.train.objectives import ppo
from sftlab.train.objectives.ppo import VALUE_HEAD_FILE

REPO = Path(__file__).resolve().parents[3]
METRICS = ("loss", "reward", "kl", "policy_loss", "value_loss", "clip_fraction",
           "value_clip_fraction", "approx_kl", "completion_length", "kl_coef")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?"} for i in range(n)]


def ppo_config(tmp_path, data, reward_model, **settings) -> TrainConfig:
    base = {"objective": "ppo", "output_dir": str(tmp_path), "progress": False, "plot": False,
            "seed": 0, "model": {"name": "tiny"}, "data": {"paths": [data], "max_length": 128},
            "ppo": {"reward_model": str(reward_model), "max_new_tokens": 4},
            "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    """A tiny reward model trained by ``objective: reward`` (LoRA, a few steps)."""
    from sftlab.train.sft import train

    root = tmp_path_factory.mktemp("reward")
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"The answer is {2 * i}.",
             "rejected": f"maybe {2 * i + 1}??"} for i in range(8)]
    data = write_jsonl(root / "pairs.jsonl", rows)
    config = build_config(TrainConfig, {
        "objective": "reward", "output_dir": str(root / "run"), "progress": False, "plot": False,
        "model": {"name": "tiny"}, "method": {"name": "lora"}, "data": {"paths": [data], "max_length": 128},
        "batch_size": 4, "max_steps": 3, "optim": {"lr": 1e-2, "schedule": "constant"}})
    train(config)
    return root / "run"


def test_the_example_config_trains_against_the_example_reward_model(tmp_path, monkeypatch, capsys):
    from sftlab.cli import main
    from sftlab.models import load_model

    monkeypatch.chdir(REPO)  # the examples name ../shared/data relative to the repository
    reward_dir, out = tmp_path / "reward", tmp_path / "ppo"
    assert main(["train", "examples/reward.yaml", "max_steps=2", f"output_dir={reward_dir}",
                 "progress=false", "plot=false"]) == 0
    capsys.readouterr()
    code = main(["train", "examples/ppo.yaml", "max_steps=2", "ppo.max_new_tokens=8",
                 f"ppo.reward_model={reward_dir}", f"output_dir={out}", "progress=false", "plot=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "data: 32 train prompts; one completion each per rollout, 4 PPO epochs per rollout" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[key]) for r in rows for key in METRICS)
    assert rows[0]["kl"] == 0 and rows[0]["reward"] == rows[1]["reward"]  # one rollout, 2 epochs
    assert 0 < rows[0]["completion_length"] <= 9 and rows[0]["completion_tokens"] > 0
    head = load_file(str(out / "model" / VALUE_HEAD_FILE))
    assert head["weight"].shape == (1, 64) and head["weight"].abs().max() > 0  # it trained
    assert type(load_model(str(out / "model"))).__name__ == "LlamaForCausalLM"


def test_lora_trains_against_the_trained_reward_model_and_scores_as_it_does(tmp_path, tiny_tokenizer,
                                                                             reward_model_dir):
    from sftlab.train.objectives.reward import load_reward_model
    from sftlab.train.sft import train

    scored: list = []
    real = load_reward_model(reward_model_dir)

    class Recording:  # the real scorer, recording what it was asked
        tokenizer, model = real.tokenizer, real.model

        def score(self, items):
            scores = real.score(items)
            scored.extend(scores)
            return scores

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(4))
    config = ppo_config(tmp_path / "run", data, reward_model_dir, batch_size=4, max_steps=3,
                        **{"method.name": "lora", "optim.lr": 1e-2, "ppo.epochs": 1, "ppo.kl_coef": 0.1})
    objective_scorer = ppo.PPOObjective.load_scorer

    def load_recording(self, tokenizer):
        objective_scorer(self, tokenizer)
        self.scorer = Recording()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppo.PPOObjective, "load_scorer", load_recording)
        result = train(config)
    rows = result.history
    assert len(rows) == 3 and rows[0]["kl"] == 0.0  # the adapter disabled is the initial policy
    assert all(math.isfinite(r[key]) for r in rows for key in METRICS)
    assert len(scored) == 12  # one completion per prompt per step
    assert [r["reward"] for r in rows] == pytest.approx([sum(scored[i:i + 4]) / 4 for i in (0, 4, 8)])
    assert (result.saved_to / VALUE_HEAD_FILE).is_file() and result.saved_to.name == "adapter"


def test_resume_restores_the_value_head_and_ends_where_an_uninterrupted_run_does(tmp_path,
                                                                                 reward_model_dir):
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
    settings = {"method.name": "lora", "optim.lr": 1e-2, "batch_size": 4, "save_model": False,
                "ppo.epochs": 2}
    whole = train(ppo_config(tmp_path / "a", data, reward_model_dir, max_steps=4, **settings))
    train(ppo_config(tmp_path / "b", data, reward_model_dir, max_steps=2, save_every=2, **settings))
    resumed = train(ppo_config(tmp_path / "b", data, reward_model_dir, max_steps=4, resume=True,
                               **settings))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert resumed.history[-1]["value_loss"] == whole.history[-1]["value_loss"]
    head = lambda r: dict(r.prepared.model.named_parameters())  # noqa: E731
    names = [n for n in head(whole) if "value_head" in n]
    assert names and all(torch.equal(head(whole)[n], head(resumed)[n]) for n in names)


def test_the_adaptive_kl_coefficient_follows_the_controller_and_survives_a_resume(tmp_path, reward_model_dir):
    """Ziegler et al.'s controller: each rollout's coefficient is the previous one times
    1 + clip(KL/target - 1, +-0.2) * n/horizon; a fixed coefficient never moves; a resumed
    run continues from the coefficient in its checkpoint."""
    from sftlab.train.objectives.ppo import kl_coef_after
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
    settings = {"method.name": "lora", "optim.lr": 5e-2, "batch_size": 4, "save_model": False, "ppo.epochs": 1,
                "ppo.kl_coef": 0.2, "ppo.kl_target": 1e-4, "ppo.kl_horizon": 8, "ppo.max_new_tokens": 6}
    whole = train(ppo_config(tmp_path / "a", data, reward_model_dir, max_steps=4, **settings))
    coefs, kls = [r["kl_coef"] for r in whole.history], [r["kl"] for r in whole.history]
    assert coefs[0] == pytest.approx(0.2)
    for step in range(1, 4):  # 4 completions per rollout, horizon 8: at most a factor 1 +- 0.1 per step
        assert coefs[step] == pytest.approx(kl_coef_after(coefs[step - 1], kls[step - 1], 1e-4, 4, 8))
    assert coefs[-1] != coefs[0]
    train(ppo_config(tmp_path / "b", data, reward_model_dir, max_steps=2, save_every=2, **settings))
    resumed = train(ppo_config(tmp_path / "b", data, reward_model_dir, max_steps=4, resume=True, **settings))
    assert [r["kl_coef"] for r in resumed.history] == pytest.approx(coefs)
    fixed = train(ppo_config(tmp_path / "c", data, reward_model_dir, max_steps=3,
                             **{**settings, "ppo.kl_target": 0.0}))
    assert [r["kl_coef"] for r in fixed.history] == pytest.approx([0.2] * 3)


def test_a_completion_that_never_stops_is_penalised(tmp_path, monkeypatch, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    class Zero:
        tokenizer = tiny_tokenizer

        def score(self, items):
            return [0.0] * len(items)

    monkeypatch.setattr(ppo, "load_reward_model", lambda *a, **k: Zero())
    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(4))
    config = ppo_config(tmp_path / "run", data, "stand-in", batch_size=4, max_steps=1, save_model=False,
                        **{"ppo.max_new_tokens": 1, "ppo.missing_eos_penalty": 2.0})
    rows = train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer).history
    assert rows[0]["reward"] == pytest.approx(-2.0)  # one token: none of the 4 stopped


def test_a_directory_without_a_head_is_not_a_reward_model(tmp_path, tiny_model_dir):
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(2))
    with pytest.raises(SftlabError, match="no reward_head.safetensors here or in model/ or adapter/"):
        train(ppo_config(tmp_path / "run", data, tiny_model_dir))


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, reward_model_dir):
    import shutil

    from sftlab.models import load_tokenizer
    from sftlab.train.sft import train

    other = tmp_path / "other-reward"
    shutil.copytree(reward_model_dir / "adapter", other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(str(other))
    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(2))
    with pytest.raises(ConfigError, match=f"ppo.reward_model={other}: its tokenizer is not the policy's"):
        train(ppo_config(tmp_path / "run", data, other))


@pytest.mark.parametrize("setting, message", [
    ({"ppo.epochs": 0}, "ppo.epochs must be >= 1"),
    ({"ppo.gae_lambda": 1.5}, r"ppo.gae_lambda must be in \[0, 1\]"),
    ({"ppo.temperature": 0}, "ppo.temperature must be above 0"),
    ({"ppo.kl_coef": -0.1}, "ppo.kl_coef must be a finite number >= 0"),
    ({"ppo.kl_target": 6.0, "ppo.kl_coef": 0.0}, "ppo.kl_coef must be above 0 with ppo.kl_target"),
    ({"ppo.kl_horizon": 0}, "ppo.kl_horizon must be >= 1"),
    ({"data.packing": True}, "objective=ppo trains completions as padded rows"),
])
def test_bad_ppo_settings_are_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        ppo_config(tmp_path, "p.jsonl", "rm", **setting)


@pytest.mark.parametrize("setting, message", [
    ({"ppo.reward_model": ""}, "objective=ppo needs ppo.reward_model"),
    ({"data.eval_split": 0.2}, "objective=ppo has no held-out loss"),
    ({"method.name": "lomo"}, "objective=ppo needs an optimizer method"),
])
def test_settings_the_objective_refuses(tmp_path, tiny_tokenizer, setting, message):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "p.jsonl", prompt_rows(4))
    with pytest.raises(ConfigError, match=message):
        train(ppo_config(tmp_path / "run", data, "rm", **setting), model=tiny_model(seed=0),
              tokenizer=tiny_tokenizer)


def test_ppo_raises_the_score_of_a_reward_model_trained_in_the_test(tmp_path):
    """The pipeline of InstructGPT at tiny scale: a reward model learns that answers made of
    vowel-initial words are preferred (held-out accuracy 1), then PPO against it raises its
    mean score (measured: 1.99 -> 2.52 over the first and last three rollouts)."""
    import random

    from sftlab.models.tiny import _WORDS
    from sftlab.train.sft import train

    rng = random.Random(0)
    vowel = [w for w in _WORDS if w[0] in "aeiou"]
    other = [w for w in _WORDS if w[0] not in "aeiou"]
    topics = ["cats", "dogs", "rain", "tea", "maps", "snow", "jazz", "bread"]
    pairs = [{"prompt": f"Say something about {t}.", "chosen": " ".join(rng.choice(vowel) for _ in range(2)),
              "rejected": " ".join(rng.choice(other) for _ in range(2))} for t in topics for _ in range(8)]
    reward = train(build_config(TrainConfig, {
        "objective": "reward", "output_dir": str(tmp_path / "reward"), "progress": False, "plot": False,
        "model": {"name": "tiny"}, "method": {"name": "full"}, "batch_size": 8, "epochs": 4,
        "data": {"paths": [write_jsonl(tmp_path / "pairs.jsonl", pairs)], "max_length": 128,
                 "eval_split": 0.25},
        "optim": {"lr": 3e-3, "schedule": "constant"}}))
    assert reward.history[-1]["eval_accuracy"] == 1.0
    prompts = [{"messages": [{"role": "user", "content": f"Say something about {t}."}]} for t in topics * 4]
    config = ppo_config(tmp_path / "ppo", write_jsonl(tmp_path / "p.jsonl", prompts), tmp_path / "reward",
                        batch_size=32, max_steps=30, save_model=False,
                        **{"ppo.max_new_tokens": 3, "ppo.epochs": 2, "ppo.kl_coef": 0.0, "optim.lr": 1e-2})
    rewards = [row["reward"] for row in train(config).history][::2]  # one per rollout
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.25, rewards
