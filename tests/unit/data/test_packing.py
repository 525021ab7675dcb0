"""Bin packing (sftlab.data.packing) and collators (sftlab.data.collate)."""
from __future__ import annotations

import random

import pytest
import torch

from sftlab.data.collate import collate_packed, collate_padded
from sftlab.data.packing import pack, packing_stats
from sftlab.errors import DataError
from sftlab.types import IGNORE_INDEX, Tokenized


def example(length: int, id: str | None = None, start: int = 10) -> Tokenized:
    """Ids ``start, start+1, ...``; every label after the first trained."""
    ids = list(range(start, start + length))
    return Tokenized(ids, [IGNORE_INDEX] + ids[1:], id)


def test_best_fit_decreasing_known_answer():
    # 6 -> A (4 left); 5 -> B (5 left); 4 -> A exactly; 3 -> B (2 left); 2 -> B exactly
    examples = [example(n, id=str(n)) for n in (3, 6, 2, 5, 4)]
    rows = pack(examples, max_length=10)
    assert [row.ids for row in rows] == [["6", "4"], ["5", "3", "2"]]
    assert [row.seq_lengths for row in rows] == [[6, 4], [5, 3, 2]]


def test_best_fit_picks_the_fullest_row_that_fits():
    # after 7, 6, 5: rows with 3, 4, 5 free; a 3 goes to the row with 3 free (the 7)
    rows = pack([example(n, id=str(n)) for n in (7, 6, 5, 3)], max_length=10)
    assert [row.ids for row in rows] == [["7", "3"], ["6"], ["5"]]


def test_every_example_lands_once_and_rows_fit():
    rng = random.Random(0)
    examples = [example(rng.randint(1, 50), id=str(i), start=rng.randint(4, 400)) for i in range(200)]
    rows = pack(examples, max_length=64)
    assert sorted(i for row in rows for i in row.ids) == sorted(e.id for e in examples)
    by_id = {e.id: e for e in examples}
    for row in rows:
        assert len(row) <= 64 and len(row) == sum(row.seq_lengths)
        assert len(row.labels) == len(row.position_ids) == len(row)
        offset = 0
        for length, id in zip(row.seq_lengths, row.ids):
            assert row.input_ids[offset:offset + length] == by_id[id].input_ids
            assert row.position_ids[offset:offset + length] == list(range(length))
            assert row.labels[offset:offset + length] == [IGNORE_INDEX] + by_id[id].labels[1:]
            offset += length
    stats = packing_stats(rows, 64)
    assert stats.tokens == sum(len(e) for e in examples) and stats.examples == 200
    # a lower bound on rows is total / capacity; best fit gets close on this mix
    assert stats.rows >= -(-stats.tokens // 64)
    assert stats.padding_fraction < 0.05, stats.summary()


def test_first_label_of_each_packed_example_is_ignored():
    # strategy "everything" trains position 0 labels too; packed they must not be
    everything = [Tokenized([5, 6, 7], [5, 6, 7], "a"), Tokenized([8, 9], [8, 9], "b")]
    row = pack(everything, max_length=8)[0]
    starts = [sum(row.seq_lengths[:k]) for k in range(len(row.seq_lengths))]
    assert starts == [0, 3]
    assert all(row.labels[s] == IGNORE_INDEX for s in starts)
    assert row.labels == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]


def test_too_long_example_is_a_data_error():
    with pytest.raises(DataError, match="truncate") as error:
        pack([example(5), example(11)], max_length=10)
    assert error.value.index == 1


def test_packing_stats_padding_fraction():
    rows = pack([example(6), example(4), example(5)], max_length=10)
    stats = packing_stats(rows, 10)
    assert (stats.rows, stats.tokens) == (2, 15)
    assert stats.padding_fraction == pytest.approx(0.25)
    assert "75.0% filled" in stats.summary()


# --- collate_padded ----------------------------------------------------------------------
def test_collate_padded_right_pads():
    batch = collate_padded([example(3, start=20), example(5, start=30)], pad_id=3, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == [20, 21, 22, 3, 3, 3, 3, 3]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 21, 22] + [IGNORE_INDEX] * 5
    assert batch["attention_mask"].tolist() == [[1] * 3 + [0] * 5, [1] * 5 + [0] * 3]


def test_collate_padded_keeps_eos_label_when_pad_equals_eos():
    eos = 2
    batch = collate_padded([Tokenized([1, 5, eos], [IGNORE_INDEX, 5, eos]), example(5)], pad_id=eos)
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 5, eos, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["input_ids"][0].tolist() == [1, 5, eos, eos, eos]


def test_collators_refuse_examples_without_trained_tokens():
    untrained = Tokenized([1, 2, 3], [IGNORE_INDEX] * 3)
    with pytest.raises(ValueError, match="no trained token"):
        collate_padded([example(3), untrained], pad_id=0)
    with pytest.raises(ValueError, match="no trained token"):
        collate_packed(pack([untrained], 8), pad_id=0)


# --- collate_packed ----------------------------------------------------------------------
def test_collate_packed_mask_is_block_diagonal_causal():
    rows = pack([example(3, "a"), example(2, "b"), example(4, "c")], max_length=7)
    assert [row.seq_lengths for row in rows] == [[4, 3], [2]]
    batch = collate_packed(rows, pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 11] + [IGNORE_INDEX] * 5
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 7, 7) and mask.dtype == torch.bool
    segment = [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]  # row 1: example, then padding block
    for b in range(2):
        for i in range(7):
            for j in range(7):
                expected = segment[b][i] == segment[b][j] and j <= i
                assert mask[b, 0, i, j].item() == expected, (b, i, j)


def test_collate_packed_position_ids_route_has_no_mask():
    batch = collate_packed(pack([example(3), example(2)], 8), pad_id=0, pad_to_multiple_of=8,
                           attention="position_ids")
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    with pytest.raises(ValueError, match="attention"):
        collate_packed(pack([example(3)], 8), pad_id=0, attention="flash")
