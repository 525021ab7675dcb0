"""``objective: ppo`` (tiny model, float64): GAE equals its definition on a hand-computed
4-step example; the clipped surrogate and the clipped value loss equal their formulas on
known ratios (both clip sides); zero advantages with returns equal to the values give zero
gradients; the KL penalty is zero while the policy is the reference; one rollout trained
on for two PPO epochs gives the same weights 4x1 = 2x2 = 1x4; zero reward with zero KL
coefficient leaves the policy unchanged; and a short run on a learnable reward raises it.

The reward here is a rule-based stand-in with the reward model's scorer interface
(``score(conversations) -> [float]`` and ``tokenizer``), put in place of
``load_reward_model``: 1 when the completion starts with a vowel. The trained reward model
path (``objective: reward`` then ``objective: ppo``) is tested in tests/unit/train/test_ppo.py.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from sftlab.config import build_config
from sftlab.train.objectives import ppo
from sftlab.train.objectives.ppo import (PPOLoss, attach_value_head, gae, logps_and_values,
                                         ppo_loss, token_rewards, whiten, whiten_stats)

WORDS = ["cats", "dogs", "rain", "tea", "maps", "snow", "jazz", "bread"]


class VowelScorer:
    """1 when the assistant's completion starts with a vowel, else 0 (or ``constant``)."""

    def __init__(self, tokenizer, constant: float | None = None) -> None:
        self.tokenizer, self.constant = tokenizer, constant

    def score(self, items) -> list[float]:
        if self.constant is not None:
            return [self.constant] * len(items)
        return [float(c.messages[-1].content.strip()[:1].lower() in "aeiou") for c in items]


@pytest.fixture()
def vowel_reward(monkeypatch, tiny_tokenizer):
    """``ppo.reward_model`` loads the rule-based scorer; returns a setter for a constant."""
    scorer = VowelScorer(tiny_tokenizer)
    monkeypatch.setattr(ppo, "load_reward_model", lambda *args, **kwargs: scorer)
    return scorer


def write_prompts(path, repeat: int = 1) -> str:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say something about {w}."}]})
                            + "\n" for w in WORDS * repeat))
    return str(path)


def run_ppo(tmp_path, data, settings=None, model_dtype="double", method="full", **overrides):
    """Train the tiny model with the real loop on ``objective: ppo``; returns the trained
    parameters (value head included) and the result."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": "ppo", "output_dir": str(tmp_path), "save_model": False, "plot": False,
        "progress": False, "seed": 0, "method": {"name": method},
        "data": {"paths": [data], "max_length": 256, "shuffle": False},
        "ppo": {"reward_model": "stand-in", "max_new_tokens": 4, **(settings or {})},
        "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.1},
        **overrides})
    model = tiny_model(seed=0)
    model = model.double() if model_dtype == "double" else model
    result = train(config, model=model, tokenizer=tiny_tokenizer())
    return {n: p.detach().clone() for n, p in result.prepared.model.named_parameters()}, result


def test_gae_on_a_hand_computed_four_step_example():
    rewards = [0.1, -0.2, 0.0, 1.0]
    values = [0.5, 0.4, 0.3, 0.2]
    gamma, lam = 0.9, 0.8
    # by the definition: A_t = sum_k (γλ)^k δ_{t+k}, δ_t = r_t + γ V_{t+1} - V_t, V_4 = 0
    deltas = [rewards[t] + gamma * (values[t + 1] if t < 3 else 0.0) - values[t] for t in range(4)]
    expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(4 - t)) for t in range(4)]
    assert expected[3] == pytest.approx(0.8) and expected[2] == pytest.approx((0.9 * 0.2 - 0.3) + 0.72 * 0.8)
    r = torch.tensor([rewards], dtype=torch.float64)
    v = torch.tensor([values], dtype=torch.float64)
    advantages, returns = gae(r, v, torch.ones(1, 4), gamma, lam)
    assert advantages[0].tolist() == pytest.approx(expected, rel=1e-12)
    assert returns[0].tolist() == pytest.approx([a + b for a, b in zip(expected, values)], rel=1e-12)
    # the same episode after a prompt position and before padding: the mask ends it
    shifted_r = torch.tensor([[9.0, *rewards, 7.0]], dtype=torch.float64)
    shifted_v = torch.tensor([[3.0, *values, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0]])
    advantages, returns = gae(shifted_r, shifted_v, mask, gamma, lam)
    assert advantages[0, 1:5].tolist() == pytest.approx(expected, rel=1e-12)
    assert advantages[0, 0] == 0 and advantages[0, 5] == 0 and returns[0, 5] == 0


def test_the_clipped_surrogate_and_value_loss_by_hand():
    eps, clip, coef = 0.2, 0.2, 0.5
    ratios = [1.5, 0.5, 0.5, 1.5, 1.0]
    advantages = [1.0, -1.0, 1.0, -1.0, 2.0]
    values, old, returns = [1.0, 0.0, 1.0, 0.6, 0.3], [0.5, 0.5, 0.5, 0.5, 0.3], [0.0, 1.0, 2.0, 0.6, 0.3]
    old_logps = torch.zeros(1, 5, dtype=torch.float64)
    logps = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    f64 = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    losses, parts = ppo_loss(logps, old_logps, f64(advantages), f64(values), f64(old), f64(returns),
                             torch.ones(1, 5),
                             epsilon=eps, value_clip=clip, value_coef=coef)
    policy, value = [], []
    for r, a, v, o, ret in zip(ratios, advantages, values, old, returns):
        policy.append(max(-a * r, -a * min(max(r, 1 - eps), 1 + eps)))
        v_clipped = o + min(max(v - o, -clip), clip)
        value.append(0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2))
    # the clip binds on the ratio above 1+ε with A > 0 and below 1-ε with A < 0 only
    assert policy[:4] == pytest.approx([-1.2, 0.8, -0.5, 1.5])
    # value: the clipped one binds where it is further from the return (the third)
    assert value[:3] == pytest.approx([0.5, 0.5, 0.5 * 1.3 ** 2])
    assert losses[0].tolist() == pytest.approx([p + coef * v for p, v in zip(policy, value)], rel=1e-12)
    assert float(parts["policy_loss"]) == pytest.approx(sum(policy), rel=1e-12)
    assert float(parts["value_loss"]) == pytest.approx(sum(value), rel=1e-12)
    assert float(parts["clip_fraction"]) == 4  # |ratio - 1| > ε on the first four tokens
    assert float(parts["value_clip_fraction"]) == 1
    losses.sum().backward()  # a bound clip passes no gradient to the log-prob
    assert logps.grad[0, 0] == 0 and logps.grad[0, 1] == 0
    assert logps.grad[0, 2] == pytest.approx(-0.5) and logps.grad[0, 3] == pytest.approx(1.5)


def test_zero_advantages_and_returns_equal_to_values_give_zero_gradients():
    from sftlab.data.collate import collate_padded
    from sftlab.models.tiny import tiny_model
    from sftlab.train.config import PPOSection
    from sftlab.types import Tokenized

    model = tiny_model(seed=0).double()
    head = attach_value_head(model)
    torch.nn.init.normal_(head.weight, std=0.5)  # non-zero values: the value loss is in play
    rows = [Tokenized([1, 5, 6, 7 + i, 8], [-100, -100, 6, 7 + i, 8]) for i in range(3)]
    batch = collate_padded(rows, 0)
    with torch.no_grad():
        logps, values = logps_and_values(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert values.abs().max() > 0
    settings = PPOSection(value_coef=1.0)
    rollout = {"reward": torch.tensor(0.0), "kl": torch.tensor(0.0), "completion_length": torch.tensor(3.0),
               "kl_coef": torch.tensor(0.05)}
    loss_sum, count = PPOLoss(model, settings)(**batch, old_logps=logps, old_values=values,
                                               advantages=torch.zeros_like(logps), returns=values,
                                               **rollout)
    loss_sum.backward()
    assert int(count) == 9 and float(loss_sum) == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    model.zero_grad()  # and either a non-zero advantage or a value error moves the model
    for advantages, returns in ((torch.ones_like(logps), values), (torch.zeros_like(logps), values + 1)):
        loss_sum, _ = PPOLoss(model, settings)(**batch, old_logps=logps, old_values=values,
                                               advantages=advantages, returns=returns, **rollout)
        loss_sum.backward()
        assert max(p.grad.abs().max() for p in model.parameters() if p.grad is not None) > 0
        model.zero_grad()


def test_the_kl_penalty_is_zero_when_the_policy_is_the_reference():
    logps = torch.tensor([[-1.0, -2.0, -0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0]])
    rewards, kl = token_rewards(torch.tensor([3.0]), logps, logps.clone(), mask, kl_coef=0.7)
    assert rewards.tolist() == [[0.0, 0.0, 3.0, 0.0]] and kl.abs().max() == 0
    rewards, kl = token_rewards(torch.tensor([3.0]), logps, logps - 0.25, mask, kl_coef=0.4)
    assert rewards[0].tolist() == pytest.approx([0.0, -0.1, 2.9, 0.0]) and float(kl.sum()) == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_first_rollout_has_zero_kl_to_the_reference(tmp_path, vowel_reward, method):
    """The reference is the initial model: a copy (full) or the adapter disabled (LoRA)."""
    data = write_prompts(tmp_path / "prompts.jsonl")
    _, result = run_ppo(tmp_path / "run", data, {"epochs": 1, "kl_coef": 0.1}, method=method,
                        batch_size=8, max_steps=2, optim={"lr": 1e-2, "schedule": "constant"})
    first, second = result.history
    assert first["kl"] == 0.0 and first["approx_kl"] == 0.0
    assert second["kl"] != 0.0  # the policy moved after step 1


def test_whitening_over_split_micro_batches_equals_whitening_the_whole():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5) > 0.3
    whole = whiten(x, mask, whiten_stats(x, mask))
    stats = whiten_stats(x[:1], mask[:1]) + whiten_stats(x[1:], mask[1:])
    torch.testing.assert_close(torch.cat([whiten(x[:1], mask[:1], stats), whiten(x[1:], mask[1:], stats)]), whole)
    picked = whole[mask]
    assert float(picked.mean()) == pytest.approx(0, abs=1e-12)
    assert float(picked.var()) == pytest.approx(1, rel=1e-6)


@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_a_rollout_trained_twice_gives_the_same_weights_4x1_and_split(tmp_path, vowel_reward,
                                                                       batch_size, accumulation):
    """One rollout (4 prompts), two PPO epochs on it: step 2 has ratios != 1 (the clip and
    the value clip in play) and the KL penalty against the frozen copy is on."""
    data = write_prompts(tmp_path / "prompts.jsonl")
    settings = {"epochs": 2, "kl_coef": 0.1, "value_coef": 0.5}
    optim = {"lr": 2e-2, "schedule": "constant", "max_grad_norm": 1.0}
    big, r1 = run_ppo(tmp_path / "a", data, settings, batch_size=4, grad_accumulation=1,
                      max_steps=2, optim=optim)
    small, r2 = run_ppo(tmp_path / "b", data, settings, batch_size=batch_size,
                        grad_accumulation=accumulation, max_steps=2, optim=optim)
    assert big.keys() == small.keys() and any("value_head" in name for name in big)
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-9, atol=1e-12, msg=name)
    assert r1.history[1]["approx_kl"] > 0 and r1.history[1]["clip_fraction"] > 0
    for key in ("loss", "reward", "kl", "policy_loss", "value_loss", "clip_fraction",
                "value_clip_fraction", "approx_kl", "completion_length", "completion_tokens", "kl_coef"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key


def test_zero_reward_and_zero_kl_coefficient_leave_the_policy_unchanged(tmp_path, monkeypatch,
                                                                        tiny_tokenizer):
    """Zero scores, no KL term and zero values: every advantage and value error is 0, so
    nothing moves (weight decay off)."""
    from sftlab.models.tiny import tiny_model

    monkeypatch.setattr(ppo, "load_reward_model",
                        lambda *a, **k: VowelScorer(tiny_tokenizer, constant=0.0))
    data = write_prompts(tmp_path / "prompts.jsonl")
    trained, result = run_ppo(tmp_path / "run", data, {"epochs": 2, "kl_coef": 0.0}, batch_size=4,
                              max_steps=3, optim={"lr": 1e-2, "weight_decay": 0.0})
    initial = dict(tiny_model(seed=0).double().named_parameters())
    for name, value in trained.items():
        if "value_head" in name:
            assert value.abs().max() == 0, name
        else:
            torch.testing.assert_close(value, initial[name].detach(), rtol=0, atol=0, msg=name)
    assert all(h["grad_norm"] == 0 and h["loss"] == 0 for h in result.history)


def test_a_short_run_raises_the_mean_reward_of_a_learnable_task(tmp_path, vowel_reward):
    data = write_prompts(tmp_path / "prompts.jsonl", repeat=4)
    _, result = run_ppo(tmp_path / "run", data, {"epochs": 2, "kl_coef": 0.0, "max_new_tokens": 3},
                        model_dtype="float", batch_size=32, max_steps=30,
                        optim={"lr": 1e-2, "schedule": "constant"})
    rewards = [row["reward"] for row in result.history][::2]  # one per rollout
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, rewards
    assert all(math.isfinite(row["loss"]) for row in result.history)
