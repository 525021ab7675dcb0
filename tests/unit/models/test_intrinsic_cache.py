"""The intrinsic delta's no-grad forward reuses the effective weights W0 + delta (no Fastfood
projection per forward) and gives the same logits bit for bit; an optimizer step, a copy into
theta or a dtype change invalidates the cache, and a training forward drops it."""
from __future__ import annotations

import pytest
import torch

from sftlab.config import build_config
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.models.intrinsic import Fastfood
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.train.config import MethodConfig
from sftlab.train.methods import prepare_model

IDS = torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def projections(monkeypatch) -> list:
    """Counts Fastfood projections (one per target tensor each time the delta is computed)."""
    calls: list = []
    real = Fastfood.forward

    def counted(self, theta):
        calls.append(1)
        return real(self, theta)

    monkeypatch.setattr(Fastfood, "forward", counted)
    return calls


def prepared(said: bool = True, **model_settings):
    model = tiny_model(**model_settings)
    settings = ["intrinsic.dimension=64", f"intrinsic.said={str(said).lower()}"]
    result = prepare_model(model, build_config(MethodConfig, {"name": "intrinsic"}, settings))
    with torch.no_grad():
        model.sftlab_intrinsic.theta.normal_(std=1.0)
    return result


def uncached(model) -> torch.Tensor:
    """Logits computed with gradients on: the delta is projected afresh."""
    with torch.enable_grad():
        return model(input_ids=IDS).logits.detach()


def cached(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("said", [True, False])
def test_cached_and_uncached_forwards_give_identical_logits(projections, said):
    model = prepared(said).model.eval()
    targets = len(model.sftlab_intrinsic.blocks)
    projections.clear()  # registering a parametrization evaluates it once
    first = cached(model)
    assert len(projections) == targets  # each target projected once
    assert torch.equal(cached(model), first) and len(projections) == targets  # reused: none projected
    assert torch.equal(uncached(model), first)
    assert len(projections) == 2 * targets and not model.sftlab_intrinsic.weights  # training drops it


def test_an_optimizer_step_invalidates_the_cache():
    result = prepared()
    model = result.model.eval()
    before = cached(model)
    optimizer = torch.optim.AdamW(result.parameters, lr=0.1)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()
    model.eval()
    after = cached(model)
    assert not torch.equal(after, before)  # the step's new theta, not the stale weights
    assert torch.equal(after, uncached(model))


def test_copying_into_theta_or_the_scales_and_changing_dtype_invalidate_the_cache():
    model = prepared().model.eval()
    delta = model.sftlab_intrinsic
    before = cached(model)
    with torch.no_grad():
        delta.theta.copy_(torch.randn_like(delta.theta))
    moved = cached(model)
    assert not torch.equal(moved, before) and torch.equal(moved, uncached(model))
    with torch.no_grad():
        delta.scales.mul_(2.0)
    scaled = cached(model)
    assert not torch.equal(scaled, moved) and torch.equal(scaled, uncached(model))
    model.double()
    assert cached(model).dtype == torch.float64
    assert torch.equal(cached(model), uncached(model))


def test_tied_embeddings_share_one_cached_weight_and_generation_reuses_it(projections):
    model = prepared(tie_word_embeddings=True).model.eval()
    targets = len(model.sftlab_intrinsic.blocks)
    projections.clear()
    first = cached(model)
    with torch.no_grad():  # one cached tensor for both names
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(projections) == targets
    generator = HFGenerator(model, tiny_tokenizer(), batch_size=2)
    generator.generate([[1, 5, 9], [1, 7]], SamplingConfig(max_new_tokens=8))
    assert len(projections) == targets  # inference mode too: no projection per decoding step
    assert torch.equal(cached(model), first)
