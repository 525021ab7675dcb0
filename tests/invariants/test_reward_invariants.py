"""``objective: reward`` through the one training loop (tiny model, float64): the zero head
makes step 1's loss log 2, the loss is normalised per pair across micro-batches (the head
and the body train the same however a step is split), the loss is the Bradley-Terry formula
on the head's scores, and a trained reward model ranks held-out pairs better than chance."""
from __future__ import annotations

import math
import random

import pytest
import torch

from sftlab.config import build_config
from sftlab.train.objectives.reward import bradley_terry_loss, sequence_rewards
from sftlab.train.pairwise import Pair, collate_pairs, tokenize_pair
from sftlab.types import Message
from tests.invariants.test_spin_invariants import synthetic_pairs


def run_reward(tmp_path, pairs, eval_pairs=None, reward=None, **settings):
    """Train the float64 tiny model with the real loop on ``objective: reward``; returns the
    trained parameters (the head's included) and the result."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": "reward", "reward": reward or {}, "output_dir": str(tmp_path),
        "save_model": False, "plot": False, "progress": False, "seed": 0,
        "data": {"shuffle": False},
        "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.1},
        **settings})
    model = tiny_model(seed=0).double()
    result = train(config, model=model, tokenizer=tiny_tokenizer(), train_examples=list(pairs),
                   eval_examples=list(eval_pairs or []))
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_pairs_4x1_equal_split_micro_batches(tmp_path, batch_size, accumulation):
    from sftlab.models.tiny import tiny_model

    pairs = synthetic_pairs(8)
    settings = {"max_steps": 3, "reward": {"center_rewards": 0.01}}
    big, r1 = run_reward(tmp_path / "a", pairs, batch_size=4, grad_accumulation=1, **settings)
    small, r2 = run_reward(tmp_path / "b", pairs, batch_size=batch_size,
                           grad_accumulation=accumulation, **settings)
    start = dict(tiny_model(seed=0).double().named_parameters())
    assert big.keys() == small.keys() and "reward_head.weight" in big
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-9, atol=1e-12, msg=name)
    assert big["reward_head.weight"].abs().sum() > 0  # the head trained from zero
    assert not torch.equal(start["model.layers.0.mlp.up_proj.weight"], big["model.layers.0.mlp.up_proj.weight"])
    assert r1.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: r = 0 (rounded log)
    for key in ("loss", "margin", "accuracy", "pairs"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key


def test_the_loss_is_bradley_terry_on_the_heads_scores(tmp_path):
    """After two steps (a non-zero head), the held-out loss and accuracy the loop reports
    equal the formula on rewards scored by ``sequence_rewards`` directly."""
    from sftlab.models.tiny import tiny_model

    pairs, held = synthetic_pairs(8), synthetic_pairs(3, seed=5)
    trained, result = run_reward(tmp_path, pairs, held, batch_size=4, max_steps=2,
                                 reward={"center_rewards": 0.05})
    model = tiny_model(seed=0).double()
    from sftlab.train.objectives.reward import attach_head

    attach_head(model)
    model.load_state_dict(trained)
    batch = collate_pairs(held, pad_id=0)
    with torch.no_grad():
        rewards = sequence_rewards(model.eval(), batch["input_ids"], batch["attention_mask"])
    chosen, rejected = rewards[:3].tolist(), rewards[3:].tolist()
    hand = [math.log1p(math.exp(-(c - r))) + 0.05 * (c + r) ** 2 for c, r in zip(chosen, rejected)]
    losses, metrics = bradley_terry_loss(rewards[:3], rewards[3:], 0.05)
    assert losses.tolist() == pytest.approx(hand, rel=1e-10)
    final = result.history[-1]
    assert final["eval_loss"] == pytest.approx(sum(hand) / 3, abs=1e-6)
    assert final["eval_accuracy"] == pytest.approx(sum(c > r for c, r in zip(chosen, rejected)) / 3, abs=1e-6)


def arithmetic_pairs(tokenizer, n: int, seed: int) -> list[Pair]:
    """"What is a + b?": chosen states the correct sum as a sentence, rejected hedges with a
    wrong one; separable by form, so held-out pairs (other numbers) can be ranked."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.randrange(10, 50), rng.randrange(10, 50)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        pair, _ = tokenize_pair([Message("user", f"What is {a} + {b}?")], f"The answer is {a + b}.",
                                f"maybe {wrong}??", tokenizer, 64)
        pairs.append(pair)
    return pairs


def test_a_trained_reward_model_beats_chance_on_held_out_pairs(tmp_path, tiny_tokenizer):
    train_pairs, held = arithmetic_pairs(tiny_tokenizer, 16, 0), arithmetic_pairs(tiny_tokenizer, 16, 1)
    _, result = run_reward(tmp_path, train_pairs, held, batch_size=8, max_steps=12,
                           optim={"lr": 3e-3, "schedule": "constant"})
    evals = [row for row in result.history if "eval_accuracy" in row]
    assert len(evals) == 1 and evals[0]["eval_accuracy"] > 0.9  # chance: 0.5
    assert evals[0]["eval_margin"] > 0
