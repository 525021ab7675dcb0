"""The loss: LM head only at labelled positions, equal to the plain full-logits loss."""
from __future__ import annotations

import pytest
import torch

from sftlab.train.loss import (CausalLMLoss, count_labelled, linear_cross_entropy,
                               next_token_targets, normaliser, reference_loss_sum, split_model)


def _batch(seed=0, vocab=512):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 24), generator=g)
    labels = ids.clone()
    labels[:, :9] = -100          # prompt
    labels[2, 17:] = -100         # right padding
    attention = torch.ones_like(ids)
    attention[2, 17:] = 0
    return ids, labels, attention


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_loss_and_grads_equal_full_logits(tied, chunk_size):
    from sftlab.models.tiny import tiny_model

    model = tiny_model(tie_word_embeddings=tied).double()
    ids, labels, attention = _batch()
    reference = reference_loss_sum(model, ids, labels, attention)
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    loss_sum, count = CausalLMLoss(model, chunk_size=chunk_size)(ids, labels, attention)
    loss_sum.backward()
    # rows 0-1: labels at 9..23 -> 15 targets each; row 2: labels at 9..16 -> 8 targets
    assert int(count) == count_labelled(labels) == 15 + 15 + 8
    torch.testing.assert_close(loss_sum, reference, rtol=1e-12, atol=0)
    got = _grads(model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)


def test_linear_cross_entropy_with_bias_matches_torch():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (10,), generator=g)
    ours = linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=3)
    (ours * 0.37).backward()
    mine = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    theirs = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    (theirs * 0.37).backward()
    torch.testing.assert_close(ours, theirs)
    for a, t in zip(mine, (hidden, weight, bias)):
        torch.testing.assert_close(a, t.grad)


def test_no_labelled_token_gives_zero_loss_with_a_graph():
    weight = torch.randn(5, 4, requires_grad=True)
    hidden = torch.randn(0, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    loss.backward()  # every process must be able to run backward, even on nothing
    assert float(loss.detach()) == 0.0 and float(weight.grad.abs().sum()) == 0.0


def test_targets_are_the_next_label_and_packed_starts_are_not_trained():
    labels = torch.tensor([[-100, 5, 6, -100, 8, 9]])
    assert next_token_targets(labels).tolist() == [[5, 6, -100, 8, 9, -100]]
    # two packed examples: positions restart at index 3; its label 8... is predicted
    # across the boundary only if not masked
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    labels = torch.tensor([[-100, 5, 6, 7, 8, 9]])
    assert next_token_targets(labels, positions).tolist() == [[5, 6, -100, 8, 9, -100]]
    assert count_labelled(labels, positions) == 4


def test_normaliser_is_world_size_over_step_tokens():
    assert normaliser(100) == pytest.approx(0.01)
    assert normaliser(100, world_size=4) == pytest.approx(0.04)


def test_lora_model_is_split_through_peft_and_matches_its_forward():
    from peft import LoraConfig, get_peft_model

    from sftlab.models.tiny import tiny_model

    model = get_peft_model(tiny_model().double(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    body, head = split_model(model)
    assert body is not None and head is model.get_output_embeddings()
    ids, labels, attention = _batch(2)
    reference = reference_loss_sum(model, ids, labels, attention)
    reference.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    loss_sum, _ = CausalLMLoss(model)(ids, labels, attention)
    loss_sum.backward()
    torch.testing.assert_close(loss_sum, reference)
    got = _grads(model)
    assert got.keys() == expected.keys() and all("lora_" in name for name in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_no_full_logits_tensor_is_kept_for_backward():
    """The autograd graph holds [n_labelled, hidden]-sized gradients, never [tokens, vocab]."""
    from sftlab.models.tiny import tiny_model

    model = tiny_model(vocab_size=512)
    ids, labels, attention = _batch()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        CausalLMLoss(model, chunk_size=8)(ids, labels, attention)
    vocab_sized = [s for s in saved if len(s) >= 1 and s[-1] == 512 and s.numel() > 512 * 64]
    assert vocab_sized == [], vocab_sized
