"""The SPIN objective's math: sequence log-probs and the loss against hand computations.
(Training through the main loop: test_spin_objective.py.)"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftlab.data.collate import collate_padded
from sftlab.train.pairwise import Pair, PairLoss, collate_pairs, sequence_logps, spin_loss
from sftlab.types import IGNORE_INDEX, Tokenized


def test_spin_loss_matches_hand_computation():
    pr, pg = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rr, rg = torch.tensor([-11.0, -19.0]), torch.tensor([-11.5, -16.0])
    beta = 0.5
    # pair 0: (−10+11) − (−12+11.5) = 1.5 ; pair 1: (−20+19) − (−15+16) = −2
    expected = (math.log(1 + math.exp(-0.5 * 1.5)) + math.log(1 + math.exp(-0.5 * -2.0))) / 2
    loss, metrics = spin_loss(pr, pg, rr, rg, beta)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert metrics["margin"] == pytest.approx((1.5 - 2.0) / 2)
    assert metrics["accuracy"] == 0.5
    assert metrics["reward_real"] == pytest.approx(0.5 * (1.0 - 1.0) / 2)


def test_spin_loss_is_dpo_sigmoid_loss_and_stable():
    g = torch.Generator().manual_seed(0)
    pr, pg, rr, rg = (torch.randn(16, generator=g) * 50 for _ in range(4))
    loss, _ = spin_loss(pr, pg, rr, rg, beta=0.1)
    dpo = -F.logsigmoid(0.1 * ((pr - rr) - (pg - rg))).mean()
    assert float(loss) == pytest.approx(float(dpo), rel=1e-6)
    huge = torch.tensor([-1e4])  # margin -1e4: naive log(1 + exp(1000)) overflows to inf
    loss, _ = spin_loss(huge, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0)
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(1e4)


def test_gradient_pushes_real_up_and_generated_down():
    pr = torch.tensor([-5.0], requires_grad=True)
    pg = torch.tensor([-5.0], requires_grad=True)
    loss, _ = spin_loss(pr, pg, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    assert float(loss.detach()) == pytest.approx(math.log(2))
    loss.backward()
    # gradient descent moves against the gradient: real log-prob up, generated down
    assert pr.grad.item() == pytest.approx(-0.05) and pg.grad.item() == pytest.approx(0.05)


def test_sequence_logps_sums_labelled_tokens_and_ignores_padding(tiny_model):
    tiny_model.eval()
    a = Tokenized([1, 40, 41, 42, 43], [IGNORE_INDEX, IGNORE_INDEX, 41, 42, 43])
    b = Tokenized([1, 50, 51], [IGNORE_INDEX, 50, 51])
    with torch.no_grad():
        both = sequence_logps(tiny_model, collate_padded([a, b], pad_id=0))
        alone = sequence_logps(tiny_model, collate_padded([b], pad_id=0))
        logits = tiny_model(input_ids=torch.tensor([a.input_ids])).logits[0].log_softmax(-1)
    by_hand = sum(float(logits[t - 1, a.input_ids[t]]) for t in (2, 3, 4))
    assert both.shape == (2,)
    assert float(both[0]) == pytest.approx(by_hand, abs=1e-4)
    assert float(both[1]) == pytest.approx(float(alone[0]), abs=1e-4)  # padding changes nothing


def _pairs(tokenizer, n=8):
    """Same prompt, a fixed 'real' response and a different 'generated' one per pair."""
    from sftlab.data.chat import tokenize_conversations
    from sftlab.types import Conversation, Message

    pairs = []
    for i in range(n):
        prompt = [Message("user", f"Write the number {i} in words.")]
        real, gen = tokenize_conversations(
            [Conversation(prompt + [Message("assistant", f"The answer is number {i}, my friend.")]),
             Conversation(prompt + [Message("assistant", "sun sea tree " * (1 + i % 3))])],
            tokenizer, strategy="last_assistant").examples
        pairs.append(Pair(real, gen, id=str(i)))
    return pairs


def test_pair_loss_module_sums_per_pair_losses(tiny_model, tiny_tokenizer):
    """PairLoss has CausalLMLoss's (sum, count) contract, counted in pairs."""
    pairs = _pairs(tiny_tokenizer, n=3)
    for i, pair in enumerate(pairs):
        pair.ref_real, pair.ref_generated = -40.0 - i, -30.0 + i
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["ref_real"].shape == (3,)
    with torch.no_grad():
        loss_sum, count = PairLoss(tiny_model.eval(), beta=0.2)(**batch)
        logps = sequence_logps(tiny_model, batch)
    expected, _ = spin_loss(logps[:3], logps[3:], batch["ref_real"], batch["ref_generated"], 0.2)
    assert int(count) == 3 and float(loss_sum) == pytest.approx(3 * float(expected), rel=1e-5)
