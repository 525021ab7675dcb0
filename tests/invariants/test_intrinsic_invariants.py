"""Invariants of intrinsic-subspace delta-tuning (method ``intrinsic``), on the tiny Llama.

- with theta = 0 the model computes EXACTLY the base model's logits (SAID and DID, tied
  embeddings, a subset of targets, float64, gradient checkpointing);
- an optimiser step moves theta (and the SAID scales) and not one bit of the base weights;
- through the real loop (float64): batch 4 x 1 == 2 x 2 == 1 x 4 for theta and the scales;
  the run's saved ``adapter/`` (theta + scales + seed) loads as a merged plain model with
  the trained model's logits bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from sftlab.config import build_config
from sftlab.models import load_model
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.train.config import MethodConfig, TrainConfig
from sftlab.train.methods import prepare_model
from sftlab.train.sft import train

from tests.invariants.test_train_invariants import synthetic_examples


def method(*overrides: str) -> MethodConfig:
    return build_config(MethodConfig, {"name": "intrinsic"}, ["intrinsic.dimension=96", *overrides])


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# -- identity at initialisation --------------------------------------------------------------

@pytest.mark.parametrize("overrides,model_kwargs", [
    ((), {}),
    (("intrinsic.said=false",), {}),
    (("intrinsic.targets=[model.layers.0.*, lm_head.weight]",), {}),
    ((), {"tie_word_embeddings": True}),
])
def test_zero_theta_equals_the_base_model_exactly(overrides, model_kwargs):
    ids = batch()
    prepared = prepare_model(tiny_model(**model_kwargs), method(*overrides))
    assert torch.equal(logits(prepared.model, ids), logits(tiny_model(**model_kwargs), ids))


def test_zero_theta_is_exact_in_float64_and_with_gradient_checkpointing():
    ids = batch()
    model = tiny_model().double()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    prepared = prepare_model(model, method())
    assert prepared.model.sftlab_intrinsic.theta.dtype == torch.float64
    assert torch.equal(logits(prepared.model, ids), logits(tiny_model().double(), ids))


# -- only theta and the scales move ------------------------------------------------------------

def test_a_step_moves_theta_and_the_scales_and_no_base_weight():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepared = prepare_model(model, method())
    optimizer = torch.optim.AdamW(prepared.parameters, lr=0.1, weight_decay=0.0)
    for _ in range(2):  # the scales' gradient is zero while theta is
        ids = batch()
        prepared.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    originals = {n.replace(".parametrizations.weight.original", ".weight"): p
                 for n, p in model.named_parameters() if "sftlab_intrinsic" not in n}
    assert originals.keys() == before.keys()
    assert all(torch.equal(p, before[n]) for n, p in originals.items())
    delta = model.sftlab_intrinsic
    assert delta.theta.abs().sum() > 0 and not torch.equal(delta.scales, torch.ones_like(delta.scales))


def test_gradient_checkpointing_gives_the_same_step():
    ids, results = batch(), []
    for checkpointing in (False, True):
        model = tiny_model()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        prepared = prepare_model(model, method())
        model.train()
        prepared.model(input_ids=ids, labels=ids).loss.backward()
        results.append(prepared.model.sftlab_intrinsic.theta.grad.clone())
    assert results[0].abs().sum() > 0
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-7)


# -- through the one training loop ------------------------------------------------------------

def run(tmp_path, batch_size: int, accumulation: int, save: bool = False, double: bool = True):
    config = build_config(TrainConfig, {
        "output_dir": str(tmp_path), "save_model": save, "plot": False, "progress": False,
        "seed": 0, "batch_size": batch_size, "grad_accumulation": accumulation, "max_steps": 2,
        "data": {"shuffle": False}, "method": {"name": "intrinsic", "intrinsic": {"dimension": 96}},
        "optim": {"lr": 0.05, "schedule": "constant", "max_grad_norm": 1.0}})
    model = tiny_model(seed=0).double() if double else tiny_model(seed=0)
    result = train(config, model=model, tokenizer=tiny_tokenizer(),
                   train_examples=synthetic_examples(8))
    return model, result


def test_batch_4x1_equals_2x2_equals_1x4(tmp_path):
    runs = [run(tmp_path / f"{b}x{a}", b, a) for b, a in ((4, 1), (2, 2), (1, 4))]
    first = runs[0][0].sftlab_intrinsic
    assert first.theta.abs().sum() > 0
    for model, result in runs[1:]:
        torch.testing.assert_close(model.sftlab_intrinsic.theta, first.theta, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(model.sftlab_intrinsic.scales, first.scales, rtol=1e-9, atol=1e-12)
        assert [h["loss"] for h in result.history] == \
            pytest.approx([h["loss"] for h in runs[0][1].history], rel=1e-9)


def test_the_saved_run_loads_as_a_merged_model_with_identical_logits(tmp_path):
    model, result = run(tmp_path / "run", 4, 1, save=True, double=False)
    assert result.saved_to == tmp_path / "run" / "adapter"
    loaded = load_model(str(tmp_path / "run"))  # the adapter names its base: tiny
    assert not hasattr(loaded, "sftlab_intrinsic")
    ids = batch(3)
    model.eval()
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    assert not torch.equal(logits(loaded, ids), logits(tiny_model(), ids))
