"""``objective: kto`` through the one training loop (tiny model, float64): the step's loss
does not depend on how its completions are split into micro-batches (the KL reference point
z0 included), the loss and metrics equal the paper's formula computed by hand from the
model's log-probs, and training raises desirable log-probs relative to undesirable ones."""
from __future__ import annotations

import math
import random

import pytest
import torch

from sftlab.config import build_config
from sftlab.train.objectives.kto import Completion, kto_loss, reference_logps
from sftlab.types import IGNORE_INDEX, Tokenized
from tests.invariants.test_spin_invariants import assert_same_trained_parameters

PAD = 0


def synthetic_completions(n: int, seed: int = 0, vocab: int = 512) -> list[Completion]:
    """Completions of 2-20 tokens after 3-12 token prompts, labels alternating in a seeded
    order; each unit's mismatched row is its prompt with the next unit's response."""
    rng = random.Random(seed)
    prompts = [[1] + [rng.randrange(4, vocab) for _ in range(rng.randint(2, 11))] for _ in range(n)]
    responses = [[rng.randrange(4, vocab) for _ in range(rng.randint(2, 20))] + [2] for _ in range(n)]

    def row(prompt, response):
        return Tokenized(prompt + response, [IGNORE_INDEX] * len(prompt) + response)

    labels = [i % 2 == 0 for i in range(n)]
    rng.shuffle(labels)
    return [Completion(row(prompts[i], responses[i]), row(prompts[i], responses[(i + 1) % n]),
                       labels[i], id=f"c{i}") for i in range(n)]


def with_references(units: list[Completion], shift: float = 3.0, seed: int = 0) -> list[Completion]:
    """Units whose reference log-probs are the initial model's, the completions' moved by
    up to ±2 nats and the mismatched ones lowered by ``shift`` (so z0 is about ``shift``
    from step 1 on, not clamped to 0)."""
    from sftlab.models.tiny import tiny_model

    fresh = [Completion(u.example, u.mismatched, u.desirable, id=u.id) for u in units]
    reference_logps(tiny_model(seed=0).double(), fresh, PAD)
    rng = random.Random(seed)
    for unit in fresh:
        unit.ref += rng.uniform(-2, 2)
        unit.ref_mismatched -= shift
    return fresh


def run_kto(tmp_path, units, kto=None, **settings):
    """Train the float64 tiny model with the real loop on ``objective: kto``; returns the
    trained parameters and the result."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": "kto", "kto": {"beta": 0.5, **(kto or {})}, "output_dir": str(tmp_path),
        "save_model": False, "plot": False, "progress": False, "seed": 0,
        "data": {"shuffle": False},
        "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.1},
        **settings})
    model = tiny_model(seed=0).double()
    units = [Completion(u.example, u.mismatched, u.desirable, u.ref, u.ref_mismatched, u.id)
             for u in units]  # fresh: setup fills the references it lacks in place
    result = train(config, model=model, tokenizer=tiny_tokenizer(), train_examples=units)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


def hand_logps(model, row: Tokenized) -> float:
    """Sum of log p(label | prefix) over the labelled tokens, by log_softmax."""
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([row.input_ids])).logits[0].double(), -1)
    return sum(float(logps[t - 1, row.input_ids[t]]) for t, label in enumerate(row.labels)
               if t > 0 and label != IGNORE_INDEX)


@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_completions_4x1_equal_split_micro_batches(tmp_path, batch_size, accumulation):
    units = with_references(synthetic_completions(8))
    kto = {"desirable_weight": 1.3, "undesirable_weight": 0.7}
    big, r1 = run_kto(tmp_path / "a", units, kto, batch_size=4, grad_accumulation=1, max_steps=2)
    small, r2 = run_kto(tmp_path / "b", units, kto, batch_size=batch_size,
                        grad_accumulation=accumulation, max_steps=2)
    assert_same_trained_parameters(big, small)
    assert all(row["kl"] > 1 for row in r1.history)  # z0 is in play, not clamped away
    for key in ("loss", "kl", "reward_chosen", "reward_rejected", "completions"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key
    assert r1.history[0]["completions"] == 4


def test_unequal_micro_batches_weigh_every_completion_the_same(tmp_path):
    units = with_references(synthetic_completions(3, seed=1))
    whole, _ = run_kto(tmp_path / "a", units, batch_size=3, max_steps=1)
    split, _ = run_kto(tmp_path / "b", units, batch_size=2, grad_accumulation=2, max_steps=1)
    assert_same_trained_parameters(whole, split)


def test_first_step_loss_and_metrics_equal_the_hand_formula(tmp_path):
    from sftlab.models.tiny import tiny_model

    units = with_references(synthetic_completions(6, seed=2), shift=1.5)
    beta, wd, wu = 0.5, 1.3, 0.7
    _, result = run_kto(tmp_path, units, {"desirable_weight": wd, "undesirable_weight": wu},
                        batch_size=3, grad_accumulation=2, max_steps=1)
    model = tiny_model(seed=0).double().eval()
    z0 = max(0.0, sum(hand_logps(model, u.mismatched) - u.ref_mismatched for u in units) / 6)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses, chosen, rejected = [], [], []
    for unit in units:
        r = hand_logps(model, unit.example) - unit.ref
        if unit.desirable:
            losses.append(wd * (1 - sigmoid(beta * (r - z0))))
            chosen.append(beta * r)
        else:
            losses.append(wu * (1 - sigmoid(beta * (z0 - r))))
            rejected.append(beta * r)
    # the log row rounds to 6 decimals; the batch carries the references in float32 (~4e-6 here)
    row = result.history[0]
    assert row["kl"] == pytest.approx(z0, abs=2e-5) and z0 > 1
    assert row["loss"] == pytest.approx(sum(losses) / 6, abs=2e-6)
    assert row["reward_chosen"] == pytest.approx(sum(chosen) / len(chosen), abs=2e-6)
    assert row["reward_rejected"] == pytest.approx(sum(rejected) / len(rejected), abs=2e-6)


def test_kto_loss_is_the_papers_formula_on_known_log_probs():
    policy = torch.tensor([-3.0, -10.0, -4.0, -6.0], dtype=torch.float64)
    reference = torch.tensor([-4.0, -9.0, -4.0, -5.0], dtype=torch.float64)
    desirable = torch.tensor([True, True, False, False])
    beta, z0 = 0.3, torch.tensor(0.4, dtype=torch.float64)
    losses, rewards = kto_loss(policy, reference, desirable, z0, beta, 2.0, 0.5)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ratios = [1.0, -1.0, 0.0, -1.0]
    hand = [2.0 * (1 - sigmoid(beta * (1.0 - 0.4))), 2.0 * (1 - sigmoid(beta * (-1.0 - 0.4))),
            0.5 * (1 - sigmoid(beta * (0.4 - 0.0))), 0.5 * (1 - sigmoid(beta * (0.4 + 1.0)))]
    assert losses.tolist() == pytest.approx(hand, rel=1e-12)
    assert rewards.tolist() == pytest.approx([beta * r for r in ratios], rel=1e-12)


def test_training_raises_desirable_log_probs_relative_to_undesirable(tmp_path):
    from sftlab.models.tiny import tiny_model

    units = synthetic_completions(8, seed=3)
    trained, result = run_kto(tmp_path, units, {"beta": 0.5}, batch_size=8, max_steps=8,
                              optim={"lr": 3e-3, "schedule": "constant"})
    before, after = tiny_model(seed=0).double().eval(), tiny_model(seed=0).double().eval()
    after.load_state_dict(trained)

    def gap(model):
        logps = [hand_logps(model, u.example) for u in units]
        good = [lp for lp, u in zip(logps, units) if u.desirable]
        bad = [lp for lp, u in zip(logps, units) if not u.desirable]
        return sum(good) / len(good) - sum(bad) / len(bad)

    assert gap(after) > gap(before) + 1.0
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # policy == reference at step 1
