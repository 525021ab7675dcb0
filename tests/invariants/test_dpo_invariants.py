"""``objective: dpo`` through the one training loop (tiny model, float64): the first step's
loss is the margin-0 value of each variant, the label-smoothed loss is the hand formula,
the loss is normalised per pair across micro-batches, only completion tokens count, and
multi-turn pairs keep their whole context."""
from __future__ import annotations

import math

import pytest
import torch

from sftlab.train.pairwise import collate_pairs, preference_loss, sequence_logps, tokenize_pair
from sftlab.types import IGNORE_INDEX, Message
from tests.invariants.test_spin_invariants import (assert_same_trained_parameters, run_pair_objective,
                                                   synthetic_pairs)


def run_dpo(tmp_path, pairs, dpo=None, **settings):
    """Train the float64 tiny model with the real loop on ``objective: dpo``."""
    return run_pair_objective(tmp_path, pairs, "dpo", {"beta": 0.5, **(dpo or {})}, **settings)


@pytest.mark.parametrize("dpo, first_loss", [
    ({"loss_type": "sigmoid"}, math.log(2)),
    ({"loss_type": "sigmoid", "label_smoothing": 0.2}, math.log(2)),  # both terms are log 2
    ({"loss_type": "ipo"}, (0 - 1 / (2 * 0.5)) ** 2),
])
def test_first_step_loss_is_the_margin_zero_value(tmp_path, dpo, first_loss):
    _, result = run_dpo(tmp_path, synthetic_pairs(4), dpo, batch_size=4, max_steps=1)
    row = result.history[0]
    assert row["loss"] == pytest.approx(first_loss, abs=1e-5)
    assert row["margin"] == pytest.approx(0.0, abs=1e-5)
    assert row["reward_chosen"] == pytest.approx(0.0, abs=1e-5) and row["pairs"] == 4


def test_label_smoothing_matches_the_hand_formula():
    pc, pr, rc, rr = torch.tensor([[-3.0, -10.0, -4.0], [-5.0, -2.0, -4.0],
                                   [-4.0, -9.0, -4.0], [-4.0, -4.0, -6.0]], dtype=torch.float64)
    beta, eps = 0.3, 0.15
    loss, metrics = preference_loss(pc, pr, rc, rr, beta, "sigmoid", eps)
    margins = [(-3 + 4) - (-5 + 4), (-10 + 9) - (-2 + 4), (-4 + 4) - (-4 + 6)]  # 2, -3, -2
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    hand = [(1 - eps) * -log_sigmoid(beta * m) + eps * -log_sigmoid(-beta * m) for m in margins]
    assert float(loss) == pytest.approx(sum(hand) / 3, rel=1e-12)
    assert metrics["margin"] == pytest.approx(sum(margins) / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["reward_chosen"] == pytest.approx(beta * (1 - 1 + 0) / 3)
    assert metrics["reward_rejected"] == pytest.approx(beta * (-1 + 2 + 2) / 3)
    ipo, _ = preference_loss(pc, pr, rc, rr, beta, "ipo")
    assert float(ipo) == pytest.approx(sum((m - 1 / (2 * beta)) ** 2 for m in margins) / 3, rel=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("batch_size, accumulation", [(2, 2), (1, 4)])
def test_pairs_4x1_equal_split_micro_batches(tmp_path, loss_type, batch_size, accumulation):
    pairs = synthetic_pairs(8)
    dpo = {"loss_type": loss_type, "label_smoothing": 0.1 if loss_type == "sigmoid" else 0.0}
    big, r1 = run_dpo(tmp_path / "a", pairs, dpo, batch_size=4, grad_accumulation=1, max_steps=2)
    small, r2 = run_dpo(tmp_path / "b", pairs, dpo, batch_size=batch_size,
                        grad_accumulation=accumulation, max_steps=2)
    assert_same_trained_parameters(big, small)
    for key in ("loss", "margin", "accuracy", "reward_chosen", "reward_rejected", "pairs"):
        assert [h[key] for h in r1.history] == pytest.approx([h[key] for h in r2.history],
                                                             rel=1e-9, abs=1e-12), key


def test_only_completion_tokens_count_in_the_sequence_log_probs(tiny_tokenizer):
    from sftlab.models.tiny import tiny_model

    prompt = [Message("system", "Be brief."), Message("user", "Name a colour.")]
    pair, _ = tokenize_pair(prompt, "Blue.", "I cannot say.", tiny_tokenizer, 256)
    model = tiny_model(seed=0).double().eval()
    batch = collate_pairs([pair], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logps = sequence_logps(model, batch)
        for row, side in enumerate((pair.real, pair.generated)):
            ids = torch.tensor([side.input_ids])
            token_logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            labelled = [t for t, label in enumerate(side.labels) if label != IGNORE_INDEX]
            hand = sum(float(token_logps[t - 1, side.input_ids[t]]) for t in labelled)
            assert float(logps[row]) == pytest.approx(hand, rel=1e-10)
            # the labelled tokens are exactly the final response (and its end-of-turn mark)
            text = tiny_tokenizer.decode([side.input_ids[t] for t in labelled])
            assert text.strip().startswith("Blue." if row == 0 else "I cannot say.")
            assert "colour" not in text and "brief" not in text


def test_multi_turn_pairs_keep_their_whole_context(tiny_tokenizer):
    prompt = [Message("user", "Name a colour."), Message("assistant", "Red."),
              Message("user", "Another one?")]
    pair, _ = tokenize_pair(prompt, "Green.", "Red again.", tiny_tokenizer, 256)
    for side, answer in ((pair.real, "Green."), (pair.generated, "Red again.")):
        first = next(t for t, label in enumerate(side.labels) if label != IGNORE_INDEX)
        context = tiny_tokenizer.decode(side.input_ids[:first])
        assert all(turn.content in context for turn in prompt)
        assert answer in tiny_tokenizer.decode(side.input_ids[first:])
    cut = next(t for t, label in enumerate(pair.real.labels) if label != IGNORE_INDEX)
    assert pair.real.input_ids[:cut] == pair.generated.input_ids[:cut]  # the same context
