"""Packing: several tokenized examples per row, with per-example positions.

``pack`` puts examples into rows of at most ``max_length`` tokens by best-fit decreasing
bin packing (each example, longest first, goes into the fullest row it still fits). Inside
a row every example keeps its own identity:

* ``position_ids`` restart at 0 for each example, so rotary positions are the ones the
  example would have alone;
* ``seq_lengths`` lists the example lengths, from which ``sftlab.data.collate`` isolates
  attention (no token attends to another example);
* the label at each example's first token is ``IGNORE_INDEX``: labels are unshifted, so
  the loss predicts ``labels[t]`` from position ``t - 1``, and at an example start that
  position belongs to the *previous* example. (Position 0 of an example is never trained
  under the assistant masks anyway; this matters for ``strategy="everything"``.)

With these three, the loss and the logits of a packed row equal those of the examples run
one by one (``tests/invariants/test_packing_invariants.py``).

>>> rows = pack([Tokenized([1, 5, 6], [-100, 6, 2]), Tokenized([1, 7], [-100, 7])], max_length=8)
>>> rows[0].position_ids, rows[0].seq_lengths
([0, 1, 2, 0, 1], [3, 2])
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from sftlab.errors import DataError
from sftlab.types import IGNORE_INDEX, Tokenized


@dataclass
class PackedRow:
    """Examples concatenated in one row (unpadded; ``collate_packed`` pads).

    All lists have length ``sum(seq_lengths)`` except ``seq_lengths`` and ``ids`` (one
    entry per example).
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_lengths: list[int] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, example: Tokenized) -> None:
        self.input_ids += example.input_ids
        # the first label would be predicted from the previous example's last token
        self.labels += [IGNORE_INDEX] + list(example.labels[1:])
        self.position_ids += list(range(len(example)))
        self.seq_lengths.append(len(example))
        self.ids.append(example.id)


def pack(examples: list[Tokenized], max_length: int) -> list[PackedRow]:
    """Best-fit-decreasing packing of ``examples`` into rows of at most ``max_length``.

    Deterministic (ties keep input order). An example longer than ``max_length`` is a
    ``DataError``: truncate it first (``tokenize_conversations(max_length=...)``).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    for index, example in enumerate(examples):
        if len(example) > max_length:
            raise DataError(
                f"example of {len(example)} tokens does not fit a packed row of {max_length}",
                index=index, reason="too_long",
                hint="tokenize with the same max_length so long examples are truncated")
        if len(example) == 0:
            raise DataError("empty example cannot be packed", index=index, reason="empty")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    rows: list[PackedRow] = []
    # (free space, row index), sorted: the best fit is the first entry with enough space
    free: list[tuple[int, int]] = []
    for i in order:
        size = len(examples[i])
        slot = bisect.bisect_left(free, (size, -1))
        if slot == len(free):
            rows.append(PackedRow())
            room, row = max_length, len(rows) - 1
        else:
            room, row = free.pop(slot)
        rows[row].add(examples[i])
        if room - size > 0:
            bisect.insort(free, (room - size, row))
    return rows


@dataclass(frozen=True)
class PackingStats:
    """``rows`` rows of capacity ``max_length`` hold ``tokens`` real tokens."""

    rows: int
    examples: int
    tokens: int
    max_length: int

    @property
    def padding_fraction(self) -> float:
        capacity = self.rows * self.max_length
        return 1.0 - self.tokens / capacity if capacity else 0.0

    @property
    def efficiency(self) -> float:
        return 1.0 - self.padding_fraction

    def summary(self) -> str:
        return (f"packed {self.examples} examples into {self.rows} rows of {self.max_length}: "
                f"{self.efficiency:.1%} filled, {self.padding_fraction:.1%} padding")


def packing_stats(rows: list[PackedRow], max_length: int) -> PackingStats:
    """Fill rate of packed rows padded to ``max_length``."""
    return PackingStats(len(rows), sum(len(r.seq_lengths) for r in rows), sum(len(r) for r in rows), max_length)
