"""``objective: grpo`` (tiny model, float64): a group's advantages sum to zero; with equal
rewards the policy-gradient term is exactly zero; the step's loss is normalised per
completion across micro-batches (the rollouts of a step do not depend on its split); the
clipped surrogate and the k3 KL equal their formulas by hand; and a few steps on a
trivially learnable reward raise the mean reward."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sftlab.config import build_config
from sftlab.train.objectives.grpo import GRPOLoss, group_advantages, grpo_loss

VOWEL = r"\s*[aeiouAEIOU]"  # the completion starts with a vowel: ~1 in 4 for the tiny model


def write_prompts(path, n: int = 8) -> str:
    words = ["cats", "dogs", "rain", "tea", "maps", "snow", "jazz", "bread", "kites", "owls"]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say something about {w}."}],
                                        "answer": w}) + "\n" for w in words[:n]))
    return str(path)


def run_grpo(tmp_path, data, grpo=None, model_dtype="double", **settings):
    """Train the tiny model with the real loop on ``objective: grpo``; returns the trained
    parameters and the result."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": "grpo", "output_dir": str(tmp_path), "save_model": False, "plot": False,
        "progress": False, "seed": 0, "method": {"name": "full"},
        "data": {"paths": [data], "max_length": 256, "shuffle": False},
        "grpo": {"rewards": ["format"], "format_pattern": VOWEL, "num_generations": 4,
                 "max_new_tokens": 4, **(grpo or {})},
        "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.1},
        **settings})
    model = tiny_model(seed=0)
    model = model.double() if model_dtype == "double" else model
    result = train(config, model=model, tokenizer=tiny_tokenizer())
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


def test_the_advantages_of_a_group_sum_to_zero_and_are_normalised():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5,  3.0, 3.0, 3.0, 3.0,  -1.0, 2.0, 0.0, 7.0],
                           dtype=torch.float64)
    advantages = group_advantages(rewards, 4).view(3, 4)
    assert advantages.sum(dim=1).abs().max() < 1e-12
    first = rewards[:4]
    hand = (first - first.mean()) / (first.std() + 1e-4)  # unbiased std, as TRL's
    assert advantages[0].tolist() == pytest.approx(hand.tolist(), rel=1e-12)
    assert advantages[1].abs().max() == 0  # equal rewards: no advantage


def test_equal_rewards_give_a_zero_policy_gradient(tiny_tokenizer):
    from sftlab.data.collate import collate_padded
    from sftlab.models.tiny import tiny_model
    from sftlab.types import Tokenized

    model = tiny_model(seed=0).double()
    rows = [Tokenized([1, 5, 6, 7 + i, 8], [-100, -100, 6, 7 + i, 8]) for i in range(4)]
    batch = collate_padded(rows, 0)
    advantages = group_advantages(torch.full((4,), 0.7, dtype=torch.float64), 4)
    loss_sum, count = GRPOLoss(model)(**batch, advantages=advantages, rewards=torch.full((4,), 0.7),
                                      reward_std=torch.zeros(4))
    loss_sum.backward()
    assert int(count) == 4 and float(loss_sum) == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())
    model.zero_grad()  # and a non-zero advantage does move the policy
    loss_sum, _ = GRPOLoss(model)(**batch, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
                                  rewards=torch.zeros(4), reward_std=torch.zeros(4))
    loss_sum.backward()
    assert max(p.grad.abs().max() for p in model.parameters() if p.grad is not None) > 0


def test_the_clipped_surrogate_and_the_k3_kl_by_hand():
    logps = torch.tensor([[-1.0, -2.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[-1.5, -1.0, 0.0]], dtype=torch.float64)  # ratios e^0.5, e^-1, pad
    ref = torch.tensor([[-0.5, -2.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    for advantage in (2.0, -2.0):
        losses, kl = grpo_loss(logps, old, torch.tensor([advantage]), mask, epsilon=0.2, beta=0.1,
                               ref_logps=ref)
        hand_tokens = []
        for lp, o, r in ((-1.0, -1.5, -0.5), (-2.0, -1.0, -2.5)):
            ratio = math.exp(lp - o)
            clipped = min(max(ratio, 0.8), 1.2)
            surrogate = min(ratio * advantage, clipped * advantage)
            d = r - lp
            hand_tokens.append((-surrogate + 0.1 * (math.exp(d) - d - 1), math.exp(d) - d - 1))
        assert float(losses[0]) == pytest.approx(sum(t[0] for t in hand_tokens) / 2, rel=1e-12)
        assert float(kl[0]) == pytest.approx(sum(t[1] for t in hand_tokens) / 2, rel=1e-12)


@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_completions_4x1_equal_split_micro_batches(tmp_path, batch_size, accumulation):
    data = write_prompts(tmp_path / "prompts.jsonl")
    grpo = {"beta": 0.1}  # the KL term against the frozen copy is in play too
    big, r1 = run_grpo(tmp_path / "a", data, grpo, batch_size=4, grad_accumulation=1, max_steps=2)
    small, r2 = run_grpo(tmp_path / "b", data, grpo, batch_size=batch_size,
                         grad_accumulation=accumulation, max_steps=2)
    assert big.keys() == small.keys()
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-9, atol=1e-12, msg=name)
    assert r1.history[0]["completions"] == 16 and 0 < r1.history[0]["reward"] < 1
    assert r1.history[1]["kl"] > 0  # the policy moved away from the reference after step 1
    for key in ("loss", "reward", "reward_std", "kl", "completion_tokens", "completions"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key


def test_unequal_micro_batches_weigh_every_completion_the_same(tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl", n=3)
    whole, _ = run_grpo(tmp_path / "a", data, batch_size=3, max_steps=1)
    split, result = run_grpo(tmp_path / "b", data, batch_size=2, grad_accumulation=2, max_steps=1)
    assert result.history[0]["reward_std"] > 0 and result.history[0]["grad_norm"] > 0  # it learns
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], rtol=1e-9, atol=1e-12, msg=name)


def test_a_few_steps_raise_the_mean_reward_of_a_learnable_task(tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl")
    _, result = run_grpo(tmp_path, data, {"num_generations": 8, "max_new_tokens": 3},
                         model_dtype="float", batch_size=4, max_steps=20,
                         optim={"lr": 1e-2, "schedule": "constant"})
    rewards = [row["reward"] for row in result.history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.25, rewards  # measured: 0.29 -> 0.87
