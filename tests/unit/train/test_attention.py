"""Block-by-block attention for packed rows equals the block-diagonal mask, forward and backward."""
from __future__ import annotations

import torch

from sftlab.data.collate import collate_packed, segment_bounds
from sftlab.data.packing import pack
from sftlab.models.tiny import tiny_model
from sftlab.train import attention
from sftlab.types import Tokenized


def rows():
    examples = [Tokenized(list(range(5, 5 + n)), [-100, -100] + list(range(7, 5 + n))) for n in (6, 3, 8, 5, 4)]
    return pack(examples, 12)   # several rows, some ending in padding


def hidden_and_grads(model, batch, segments=None):
    model.zero_grad()
    extra = {} if segments is None else {"segments": segments}
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], **extra).last_hidden_state
    (hidden ** 2).sum().backward()
    return hidden.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_blocks_equal_the_mask_forward_and_backward():
    model = tiny_model().double()
    packed = rows()
    batch = collate_packed(packed, pad_id=0)
    segments = segment_bounds(packed, batch["input_ids"].shape[1])
    assert len(packed) > 1 and (segments[:, -1] == batch["input_ids"].shape[1]).all()
    expected, expected_grads = hidden_and_grads(model, batch)
    assert attention.enable(model)
    got, grads = hidden_and_grads(model, batch, segments)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)
    attention.disable(model)
    assert model.config._attn_implementation == "sdpa"


def test_segments_mark_blocks_and_padding():
    packed = pack([Tokenized([1, 2, 3], [-100, 2, 3]), Tokenized([4, 5], [-100, 5]),
                   Tokenized([6, 7, 8, 9], [-100, 7, 8, 9])], 5)
    assert [r.seq_lengths for r in packed] == [[4], [3, 2]]
    assert segment_bounds(packed, 6).tolist() == [[0, 4, 6, 6], [0, 3, 5, 6]]


def test_calls_without_segments_are_plain_sdpa():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    expected = model(input_ids=ids, attention_mask=mask).logits
    attention.enable(model)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)


def test_other_implementations_are_left_alone():
    model = tiny_model()
    model.config._attn_implementation = "eager"
    assert not attention.enable(model)
    assert model.config._attn_implementation == "eager"
