"""``objective: spin`` is normalised per pair over the whole optimizer step, through the
same path as the token loss: how the step's pairs are split into micro-batches must not
change what is learned (float64, rel 1e-9, mirroring test_train_invariants.py)."""
from __future__ import annotations

import random

import pytest
import torch

from sftlab.config import build_config
from sftlab.train.pairwise import Pair
from sftlab.types import IGNORE_INDEX, Tokenized


def synthetic_pairs(n: int, seed: int = 0, vocab: int = 512) -> list[Pair]:
    """Pairs sharing a 3-12 token prompt; real and generated responses of 2-20 tokens
    (different lengths, so per-micro-batch padding differs between splits)."""
    rng = random.Random(seed)

    def side(prompt: list[int]) -> Tokenized:
        response = [rng.randrange(4, vocab) for _ in range(rng.randint(2, 20))] + [2]
        return Tokenized(prompt + response, [IGNORE_INDEX] * len(prompt) + response)

    pairs = []
    for i in range(n):
        prompt = [1] + [rng.randrange(4, vocab) for _ in range(rng.randint(2, 11))]
        pairs.append(Pair(side(prompt), side(prompt), id=f"pair{i}"))
    return pairs


def run_spin(tmp_path, pairs, **settings):
    """Train the float64 tiny model with the real loop on ``objective: spin``."""
    return run_pair_objective(tmp_path, pairs, "spin", {"beta": 0.5}, **settings)


def run_pair_objective(tmp_path, pairs, objective: str, section: dict, **settings):
    """Train the float64 tiny model with the real loop on a pair ``objective`` (spin, dpo)
    whose config section is ``section``; returns the trained parameters and the result."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    config = build_config(TrainConfig, {
        "objective": objective, objective: section, "output_dir": str(tmp_path),
        "save_model": False, "plot": False, "progress": False, "seed": 0,
        "data": {"shuffle": False},
        "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.1},
        **settings})
    model = tiny_model(seed=0).double()
    pairs = [Pair(p.real, p.generated, id=p.id) for p in pairs]  # fresh: references unset
    result = train(config, model=model, tokenizer=tiny_tokenizer(), train_examples=pairs)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


def assert_same_trained_parameters(a: dict, b: dict) -> None:
    from sftlab.models.tiny import tiny_model

    start = dict(tiny_model(seed=0).double().named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-12, msg=name)
        assert not torch.equal(start[name].detach(), a[name]), f"{name} did not train"


@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_pairs_4x1_equal_split_micro_batches(tmp_path, batch_size, accumulation):
    pairs = synthetic_pairs(8)
    big, r1 = run_spin(tmp_path / "a", pairs, batch_size=4, grad_accumulation=1, max_steps=2)
    small, r2 = run_spin(tmp_path / "b", pairs, batch_size=batch_size,
                         grad_accumulation=accumulation, max_steps=2)
    assert_same_trained_parameters(big, small)
    for key in ("loss", "margin", "accuracy", "reward_real", "reward_generated", "pairs"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key
    assert r1.history[0]["pairs"] == 4


def test_unequal_micro_batches_weigh_every_pair_the_same(tmp_path):
    """3 pairs as one micro-batch == as 2 + 1: a mean of per-micro-batch means would give
    the lone pair the weight of two, so this fails unless the count is the step's."""
    pairs = synthetic_pairs(3, seed=1)
    whole, _ = run_spin(tmp_path / "a", pairs, batch_size=3, max_steps=1)
    split, _ = run_spin(tmp_path / "b", pairs, batch_size=2, grad_accumulation=2, max_steps=1)
    assert_same_trained_parameters(whole, split)
