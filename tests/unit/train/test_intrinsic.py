"""Intrinsic-subspace delta-tuning (``sftlab.models.intrinsic``, method ``intrinsic``).

The projection is checked against explicit matrices built from its own drawn diagonals
(small sizes only: the point of Fastfood is never to build them); the method against the
tiny Llama: what trains, that the loss falls, that saving and loading keep the logits.
"""
from __future__ import annotations

import json

import pytest
import torch

from sftlab.config import build_config
from sftlab.errors import ConfigError
from sftlab.models import apply_adapter
from sftlab.models.adapters import load_adapter
from sftlab.models.intrinsic import Fastfood, add_intrinsic, fwht, merge_intrinsic
from sftlab.models.tiny import tiny_model
from sftlab.train.config import MethodConfig
from sftlab.train.methods import prepare_model


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's construction, H_2n = [[H, H], [H, -H]], written out (float64)."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def explicit_projection(block: Fastfood) -> torch.Tensor:
    """The block's ``rows x dimension`` matrix, materialised from its diagonals."""
    size = block.gauss.shape[0]
    h = hadamard(size)
    permute = torch.zeros(size, size, dtype=torch.float64)
    permute[torch.arange(size), block.permutation.long()] = 1.0  # (Pi x)_i = x[perm[i]]
    full = h @ torch.diag(block.gauss.double()) @ permute @ h @ torch.diag(block.signs.double())
    return full[:block.rows, :block.dimension] * block.scale


def method(*overrides: str) -> MethodConfig:
    return build_config(MethodConfig, {"name": "intrinsic"}, ["intrinsic.dimension=128", *overrides])


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 500, (4, 16), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def train(prepared, ids: torch.Tensor, steps: int, lr: float = 0.5) -> list[float]:
    optimizer = torch.optim.AdamW(prepared.parameters, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = prepared.model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


# -- the fast Walsh-Hadamard transform and the Fastfood projection --------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 128])
def test_fwht_equals_the_explicit_hadamard_matrix(n):
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(fwht(x), x @ hadamard(n), rtol=0, atol=1e-12)
    torch.testing.assert_close(fwht(fwht(x)), n * x, rtol=0, atol=1e-10)  # H H = n I


def test_fwht_gradient_is_the_transform_of_the_gradient():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


def test_fwht_refuses_a_length_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.ones(6))


@pytest.mark.parametrize("rows,dimension", [(64, 16), (100, 24), (20, 50)])
def test_fastfood_equals_its_materialised_matrix_and_is_linear(rows, dimension):
    block = Fastfood(rows, dimension, total=rows, generator=torch.Generator().manual_seed(1))
    explicit = explicit_projection(block)
    x, y = torch.randn(2, dimension, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(block(x), explicit @ x, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(block(2.5 * x - y), 2.5 * block(x) - block(y), rtol=1e-6, atol=1e-9)
    basis = torch.eye(dimension, dtype=torch.float64)  # a batch of theta: the columns of P
    torch.testing.assert_close(block(basis).T, explicit, rtol=1e-6, atol=1e-9)


def test_untruncated_columns_have_norm_one_and_truncated_ones_keep_their_share():
    """A full n x n block scaled by 1/(||G|| sqrt(D)) has unit columns exactly (D = n); keeping
    rows of D rows keeps about rows/D of each column's squared norm."""
    full = explicit_projection(Fastfood(256, 32, total=256, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(full.norm(dim=0), torch.ones(32, dtype=torch.float64), rtol=1e-6, atol=0)
    for seed in range(3):
        part = explicit_projection(Fastfood(300, 64, total=1200, generator=torch.Generator().manual_seed(seed)))
        share = part.pow(2).sum(0).mean().item()  # expected 300 / 1200
        assert share == pytest.approx(0.25, rel=0.1), share
        assert abs(part.mean().item()) < 0.1 * part.std().item()  # centred entries


def test_the_whole_projection_has_columns_of_norm_about_one():
    """Over all 21 tensors of the tiny model (D = 139,584): block i holds the share D_i / D
    of every column's squared norm, so the stacked D x d projection has unit columns. Every
    tiny tensor has a power-of-two size >= d, so no block is truncated and this is exact."""
    delta = add_intrinsic(tiny_model(), {"dimension": 64, "said": False, "seed": 0, "targets": ["*"]})
    total = sum(b.rows for b in delta.blocks)
    assert total == 139_584 and len(delta.blocks) == 21
    with torch.no_grad():  # the basis vectors as a batch of theta: P's columns, block by block
        squared = torch.stack([b(torch.eye(64)).double().pow(2).sum(1) for b in delta.blocks])
    shares = torch.tensor([b.rows / total for b in delta.blocks], dtype=torch.float64)
    torch.testing.assert_close(squared, shares[:, None].expand(-1, 64), rtol=1e-5, atol=0)
    torch.testing.assert_close(squared.sum(0), torch.ones(64, dtype=torch.float64), rtol=1e-5, atol=0)


def test_the_projection_is_drawn_from_the_seed():
    def draw(seed):
        delta = add_intrinsic(tiny_model(), {"dimension": 32, "said": True, "seed": seed,
                                             "targets": ["model.layers.0.*"]})
        return [b.permutation for b in delta.blocks], [b.gauss for b in delta.blocks]

    (perm_a, gauss_a), (perm_b, gauss_b), (perm_c, _) = draw(7), draw(7), draw(8)
    assert all(torch.equal(a, b) for a, b in zip(perm_a + gauss_a, perm_b + gauss_b, strict=True))
    assert not all(torch.equal(a, c) for a, c in zip(perm_a, perm_c, strict=True))


# -- the method on the tiny model ----------------------------------------------------------

def test_only_theta_and_the_said_scales_are_trained_and_get_gradients():
    model = tiny_model()
    prepared = prepare_model(model, method())
    delta = model.sftlab_intrinsic
    assert prepared.parameters == [delta.theta, delta.scales]
    assert prepared.summary[0] == 128 + len(delta.blocks)
    assert len(delta.blocks) == len(list(tiny_model().parameters()))  # targets "*": all of them
    ids = batch()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads.pop("sftlab_intrinsic.theta").abs().sum() > 0
    assert torch.equal(grads.pop("sftlab_intrinsic.scales"), torch.zeros(len(delta.blocks)))  # theta = 0
    assert grads and all(g is None for g in grads.values())
    train(prepared, ids, steps=2)
    model(input_ids=ids, labels=ids).loss.backward()
    assert delta.scales.grad.abs().sum() > 0  # once theta moved, the scales learn too


def test_did_has_no_scales():
    prepared = prepare_model(tiny_model(), method("intrinsic.said=false"))
    assert prepared.model.sftlab_intrinsic.scales is None
    assert [p.shape for p in prepared.parameters] == [torch.Size([128])]


@pytest.mark.parametrize("said", [True, False])
def test_a_few_steps_lower_the_loss(said):
    prepared = prepare_model(tiny_model(), method(f"intrinsic.said={str(said).lower()}"))
    losses = train(prepared, batch(), steps=6)
    assert losses[-1] < losses[0] - 0.3, losses


def test_targets_restrict_the_delta_and_bad_ones_are_errors():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepared = prepare_model(model, method("intrinsic.targets=[model.layers.1.mlp.*]"))
    assert len(model.sftlab_intrinsic.blocks) == 3
    train(prepared, batch(), steps=2)
    merge_intrinsic(model)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    with pytest.raises(ConfigError, match="'decoder.*' matches no parameter"):
        prepare_model(tiny_model(), method("intrinsic.targets=[decoder.*]"))
    with pytest.raises(ConfigError, match="intrinsic.dimension must be an integer >= 1"):
        method("intrinsic.dimension=0")


def test_save_and_load_give_identical_logits(tmp_path):
    model = tiny_model()
    prepared = prepare_model(model, method())
    train(prepared, batch(), steps=3)
    ids = batch(1)
    trained = logits(model, ids)
    assert not torch.equal(trained, logits(tiny_model(), ids))
    saved = prepared.save(tmp_path / "adapter")
    config = json.loads((saved / "sftlab_adapter.json").read_text())
    assert (config["format"], config["seed"], config["dimension"], config["base_model"]) == \
        ("sftlab_intrinsic", 0, 128, "tiny")
    assert (saved / "sftlab_adapter.safetensors").stat().st_size < 4096  # theta + scales only
    loaded = load_adapter(tiny_model(), saved)  # merged: a plain Llama again
    assert not hasattr(loaded, "sftlab_intrinsic") and not any(
        "parametrizations" in n for n, _ in loaded.named_parameters())
    assert torch.equal(logits(loaded, ids), trained)
    via_models = apply_adapter(tiny_model(), tmp_path)  # a run dir: finds adapter/
    assert torch.equal(logits(via_models, ids), trained)


def test_merge_keeps_tied_embeddings_tied_and_the_logits_identical():
    model = tiny_model(tie_word_embeddings=True)
    prepared = prepare_model(model, method())
    train(prepared, batch(), steps=3)
    ids = batch(2)
    trained = logits(model, ids)
    merge_intrinsic(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(logits(model, ids), trained)


def test_loading_onto_another_base_is_an_error_naming_the_directory(tmp_path):
    prepared = prepare_model(tiny_model(), method())
    saved = prepared.save(tmp_path / "adapter")
    with pytest.raises(ConfigError, match=f"{saved}.*do not match this model"):
        load_adapter(tiny_model(intermediate_size=96), saved)
