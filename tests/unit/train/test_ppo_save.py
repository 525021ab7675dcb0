"""``objective: ppo`` with the full method: the saved ``model.safetensors`` (result and
checkpoints) is a plain causal LM, the value head lives only in ``value_head.safetensors``,
and a resumed run restores both (ending where an uninterrupted run does)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftlab.config import build_config
from sftlab.models.tiny import tiny_model
from sftlab.train.config import TrainConfig
from sftlab.train.objectives import ppo
from sftlab.train.objectives.ppo import VALUE_HEAD_FILE
from sftlab.train.sft import train


@pytest.fixture()
def stand_in_scorer(monkeypatch, tiny_tokenizer):
    """A reward model that scores the completion's length (so the values have something to learn)."""

    class Length:
        tokenizer = tiny_tokenizer

        def score(self, items):
            return [len(item.messages[-1].content) % 5 / 2 for item in items]

    monkeypatch.setattr(ppo, "load_reward_model", lambda *a, **k: Length())


def config(tmp_path, out: str, **settings) -> TrainConfig:
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(8)))
    base = {"objective": "ppo", "output_dir": str(tmp_path / out), "progress": False, "plot": False,
            "seed": 0, "model": {"name": "tiny"}, "method": {"name": "full"}, "batch_size": 4,
            "data": {"paths": [str(data)], "max_length": 128},
            "ppo": {"reward_model": "stand-in", "max_new_tokens": 6, "epochs": 1},
            "optim": {"lr": 1e-3, "schedule": "constant"}, **settings}
    return build_config(TrainConfig, base)


def _keys(file) -> set[str]:
    with safe_open(str(file), "pt") as handle:
        return set(handle.keys())


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_ppo_saves_a_plain_causal_lm_and_the_value_head_apart(tmp_path, tiny_tokenizer, stand_in_scorer):
    result = train(config(tmp_path, "run", max_steps=2, save_every=1),
                   model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    saved = result.saved_to
    assert saved.name == "model"
    for directory in (saved, tmp_path / "run" / "checkpoints" / "step-000002" / "model"):
        keys = _keys(directory / "model.safetensors")
        assert keys and not any("value_head" in key for key in keys), directory
        assert set(load_file(str(directory / VALUE_HEAD_FILE))) == {"weight", "bias"}
    loaded, info = AutoModelForCausalLM.from_pretrained(str(saved), output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    assert not hasattr(loaded, "value_head")
    head = result.prepared.model.value_head  # still on the policy after the save
    assert head.weight.abs().max() > 0  # it trained
    assert torch.equal(load_file(str(saved / VALUE_HEAD_FILE))["weight"], head.weight.detach().float())
    ids = torch.tensor([tiny_tokenizer("What is 2 + 2?")["input_ids"]])
    assert torch.allclose(_logits(loaded.eval(), ids), _logits(result.prepared.model.eval(), ids), atol=1e-6)
    assert not torch.allclose(_logits(loaded, ids), _logits(tiny_model(seed=0).eval(), ids), atol=1e-4)


def test_full_ppo_resumes_the_model_and_the_value_head(tmp_path, tiny_tokenizer, stand_in_scorer):
    whole = train(config(tmp_path, "a", max_steps=3, save_model=False),
                  model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    train(config(tmp_path, "b", max_steps=2, save_every=2, save_model=False),
          model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    resumed = train(config(tmp_path, "b", max_steps=3, resume=True, save_model=False),
                    model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert resumed.history[-1]["value_loss"] == whole.history[-1]["value_loss"]
    assert torch.equal(resumed.prepared.model.value_head.weight, whole.prepared.model.value_head.weight)
