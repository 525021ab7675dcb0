"""Packing changes nothing but speed: packed logits, loss and gradients equal unpacked ones,
and padding never changes the logits of real tokens (tiny Llama, sdpa, float32)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sftlab.data.chat import tokenize_conversations
from sftlab.data.collate import collate_packed, collate_padded
from sftlab.data.io import read_conversations
from sftlab.data.packing import pack
from sftlab.types import IGNORE_INDEX, Tokenized

MAX_LENGTH = 96
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def examples(shared_data, tiny_tokenizer) -> list[Tokenized]:
    """Twelve real multi-turn ShareGPT conversations, rendered and truncated to 96 tokens."""
    conversations = read_conversations(shared_data / "formats" / "sharegpt_dummy_conversation.json").conversations
    result = tokenize_conversations(conversations[:12], tiny_tokenizer, max_length=MAX_LENGTH)
    assert len(result.examples) >= 10 and len({len(e) for e in result.examples}) > 3
    return result.examples


def everything(examples: list[Tokenized]) -> list[Tokenized]:
    """The same ids with every label trained (position 0 included): the hard case for packing."""
    return [Tokenized(e.input_ids, list(e.input_ids), e.id) for e in examples]


def logits_alone(model, example: Tokenized) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([example.input_ids])).logits[0]


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies (labels unshifted: position t-1 predicts labels[t])."""
    targets = labels[..., 1:].reshape(-1)
    loss = F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]), targets,
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def unpacked_loss(model, examples: list[Tokenized]) -> torch.Tensor:
    """Token-weighted mean over examples run one at a time."""
    total, count = 0.0, 0
    for example in examples:
        logits = model(input_ids=torch.tensor([example.input_ids])).logits
        loss, n = summed_loss(logits, torch.tensor([example.labels]))
        total, count = total + loss, count + n
    return total / count


def packed_logits(model, rows, batch) -> list[torch.Tensor]:
    """Per-example slices of the packed logits, in packing order."""
    slices = []
    for row_index, row in enumerate(rows):
        offset = 0
        for length in row.seq_lengths:
            slices.append(batch[row_index, offset:offset + length])
            offset += length
    return slices


@pytest.mark.parametrize("attention", ["mask", "position_ids"])
def test_packed_logits_equal_unpacked(tiny_model, examples, attention):
    model = tiny_model.eval()
    rows = pack(examples, MAX_LENGTH * 2)
    assert any(len(row.seq_lengths) > 1 for row in rows)
    batch = collate_packed(rows, pad_id=3, attention=attention)
    batch.pop("labels")
    with torch.no_grad():
        # the position_ids route needs use_cache=False (see sftlab.data.collate)
        logits = model(**batch, use_cache=False).logits
    by_id = {e.id: e for e in examples}
    ids = [i for row in rows for i in row.ids]
    for example_id, got in zip(ids, packed_logits(model, rows, logits)):
        torch.testing.assert_close(got, logits_alone(model, by_id[example_id]), **TOLERANCE)


def test_position_ids_route_without_use_cache_false_leaks(tiny_model, examples):
    """Canary for the documented transformers behaviour: with a cache (the default), the
    packed-sequence detection is off and examples attend to each other. If this starts
    failing, transformers changed and the collate docstring must be updated."""
    model = tiny_model.train()
    rows = [row for row in pack(examples, MAX_LENGTH * 2) if len(row.seq_lengths) > 1]
    batch = collate_packed(rows[:1], pad_id=3, attention="position_ids")
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    second = rows[0].ids[1]
    start, length = rows[0].seq_lengths[0], rows[0].seq_lengths[1]
    alone = logits_alone(model, next(e for e in examples if e.id == second))
    assert (logits[0, start:start + length] - alone).abs().max() > 1e-3


@pytest.mark.parametrize("strategy", ["assistant", "everything"])
def test_packed_loss_and_gradients_equal_unpacked(examples, strategy):
    from sftlab.models.tiny import tiny_model

    data = everything(examples) if strategy == "everything" else examples
    rows = pack(data, MAX_LENGTH * 2)
    packed_model, plain_model = tiny_model(seed=0).train(), tiny_model(seed=0).train()

    batch = collate_packed(rows, pad_id=3)
    labels = batch.pop("labels")
    loss, count = summed_loss(packed_model(**batch).logits, labels)
    packed = loss / count
    packed.backward()
    reference = unpacked_loss(plain_model, data)
    reference.backward()

    assert abs(packed.item() - reference.item()) / reference.item() < 1e-5
    # the model's own loss (labels shifted inside) agrees too
    with torch.no_grad():
        builtin = packed_model(**batch, labels=labels).loss
    assert abs(builtin.item() - reference.item()) / reference.item() < 1e-5
    for (name, got), want in zip(packed_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_everything_strategy_would_leak_without_ignored_starts(examples):
    """Why pack() ignores each example's first label: kept, the loss would include
    predicting example k's first token from example k-1's last token."""
    from sftlab.models.tiny import tiny_model

    data = everything(examples)
    rows = pack(data, MAX_LENGTH * 2)
    batch = collate_packed(rows, pad_id=3)
    leaky = batch["input_ids"].clone()  # every real token trained, example starts included
    for row_index, row in enumerate(rows):
        leaky[row_index, len(row):] = IGNORE_INDEX
    model = tiny_model(seed=0).eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        reference = unpacked_loss(model, data)
    packed_loss, packed_count = summed_loss(logits, batch["labels"])
    leaky_loss, leaky_count = summed_loss(logits, leaky)
    boundaries = sum(len(row.seq_lengths) - 1 for row in rows)
    assert leaky_count == packed_count + boundaries and boundaries > 0
    assert abs((packed_loss / packed_count).item() - reference.item()) / reference.item() < 1e-5
    assert abs((leaky_loss / leaky_count).item() - reference.item()) / reference.item() > 1e-5


def test_padding_does_not_change_real_token_logits(tiny_model, examples):
    model = tiny_model.eval()
    batch = collate_padded(examples, pad_id=3, pad_to_multiple_of=64)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row, example in enumerate(examples):
        torch.testing.assert_close(logits[row, :len(example)], logits_alone(model, example), **TOLERANCE)


def test_row_padding_does_not_change_packed_logits(tiny_model, examples):
    model = tiny_model.eval()
    rows = pack(examples, MAX_LENGTH * 2)
    tight = collate_packed(rows, pad_id=3)
    loose = collate_packed(rows, pad_id=3, pad_to_multiple_of=256)
    assert loose["input_ids"].shape[1] == 256 > tight["input_ids"].shape[1]
    with torch.no_grad():
        a = model(**{k: v for k, v in tight.items() if k != "labels"}).logits
        b = model(**{k: v for k, v in loose.items() if k != "labels"}).logits
    for row_index, row in enumerate(rows):
        torch.testing.assert_close(b[row_index, :len(row)], a[row_index, :len(row)], **TOLERANCE)
