"""Collators: lists of examples -> the tensors a causal LM's ``forward`` takes.

``collate_padded`` right-pads one example per row. ``collate_packed`` stacks packed rows
(``sftlab.data.packing``) and isolates attention per example.

How packed attention is isolated (transformers 5.23; checked by
``tests/invariants/test_packing_invariants.py``). Two routes exist:

* ``attention="mask"`` (default): an explicit boolean block-diagonal causal mask
  ``[B, 1, L, L]`` is returned as ``attention_mask``. transformers passes a 4D mask to the
  attention as-is, so isolation holds whatever else the call does.
* ``attention="position_ids"``: no ``attention_mask``; ``transformers.masking_utils``
  detects the ``position_ids`` restarts (``find_packed_sequence_indices``) and builds the
  same block-diagonal mask, and flash-attention derives its variable-length boundaries
  from them. **But** the detection only runs when no cache is passed, and a Llama in
  ``train()`` *or* ``eval()`` mode creates a ``DynamicCache`` unless called with
  ``use_cache=False`` (``config.use_cache`` is True by default). Forgetting it silently
  lets examples attend to each other (we measured logit errors of 0.6 on the tiny model).
  Use this route only with ``model(**batch, use_cache=False)``, e.g. for flash-attention,
  which ignores 4D masks.

The mask route is the default because it cannot fail silently, and on CPU it costs the
same: for ``sdpa`` transformers materialises the identical 4D mask in the other route too.
``position_ids`` restart at 0 per example in both routes (rotary positions as unpacked);
padding at the end of a row gets its own restarting positions and its own mask block.

Packing does not work with PEFT prompt or prefix tuning: PEFT drops ``position_ids``
(with a warning) and prepends virtual tokens to a 2D mask, so the mask route fails and
the position-ids route silently lets examples attend to each other (checked with peft
0.21.2). Use ``collate_padded`` for those methods.

Labels are padded with ``IGNORE_INDEX``; they are never derived from ``input_ids ==
pad_id`` (with SmolLM2, pad == eos and the eos must stay trained).
"""
from __future__ import annotations

import itertools

from typing import Literal, Sequence

from sftlab.data.packing import PackedRow
from sftlab.types import IGNORE_INDEX, Tokenized


def _padded_length(lengths: Sequence[int], pad_to_multiple_of: int | None) -> int:
    longest = max(lengths)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


def _require_trained(examples: Sequence[Tokenized | PackedRow]) -> None:
    # an all-ignored row is a bug upstream (tokenize_conversations drops such examples)
    for i, example in enumerate(examples):
        if all(label == IGNORE_INDEX for label in example.labels[1:]):
            raise ValueError(f"example {i} in the batch has no trained token; "
                             "use sftlab.data.chat.tokenize_conversations, which drops such examples")


def collate_padded(examples: Sequence[Tokenized], pad_id: int, pad_to_multiple_of: int | None = None):
    """Right-pad examples into a batch.

    Returns ``{"input_ids": LongTensor[B, L], "labels": LongTensor[B, L],
    "attention_mask": LongTensor[B, L]}`` with ``L`` the longest example (rounded up to
    ``pad_to_multiple_of``); padding has ``pad_id`` / ``IGNORE_INDEX`` / 0.

    >>> collate_padded([Tokenized([1, 5, 2], [-100, 5, 2]), Tokenized([1, 2], [-100, 2])], pad_id=3)["labels"]
    tensor([[-100,    5,    2],
            [-100,    2, -100]])
    """
    import torch

    if not examples:
        raise ValueError("cannot collate an empty batch")
    _require_trained(examples)
    length = _padded_length([len(e) for e in examples], pad_to_multiple_of)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def collate_packed(rows: Sequence[PackedRow], pad_id: int, pad_to_multiple_of: int | None = None,
                   attention: Literal["mask", "position_ids"] = "mask"):
    """Stack packed rows; attention never crosses an example boundary.

    Returns ``{"input_ids", "labels", "position_ids"}``, each ``LongTensor[B, L]``, and
    with ``attention="mask"`` (default) also ``"attention_mask"``: ``BoolTensor[B, 1, L, L]``,
    True where query ``i`` may attend key ``j`` (same example, ``j <= i``). Pass the dict
    straight to ``model(**batch)``; with ``attention="position_ids"`` call
    ``model(**batch, use_cache=False)`` (module docstring says why).

    >>> from sftlab.data.packing import pack
    >>> examples = [Tokenized([5, 6, 7, 8], [-100, 6, 7, 8]), Tokenized([5, 6, 7], [-100, 6, 7])]
    >>> batch = collate_packed(pack(examples, 8), pad_id=3)
    >>> batch["position_ids"][0]                   # positions restart at each example
    tensor([0, 1, 2, 3, 0, 1, 2])
    """
    import torch

    if not rows:
        raise ValueError("cannot collate an empty batch")
    _require_trained(rows)
    length = _padded_length([len(r) for r in rows], pad_to_multiple_of)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    # padding restarts at 0 so it is a block of its own (see module docstring)
    position_ids = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
    segment = torch.zeros((len(rows), length), dtype=torch.long)
    for row, packed in enumerate(rows):
        n = len(packed)
        input_ids[row, :n] = torch.tensor(packed.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(packed.labels, dtype=torch.long)
        position_ids[row, :n] = torch.tensor(packed.position_ids, dtype=torch.long)
        position_ids[row, n:] = torch.arange(length - n, dtype=torch.long)
        segment[row, :n] = torch.repeat_interleave(
            torch.arange(len(packed.seq_lengths)), torch.tensor(packed.seq_lengths))
        segment[row, n:] = len(packed.seq_lengths)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if attention not in ("mask", "position_ids"):
        raise ValueError(f"attention must be 'mask' or 'position_ids', got {attention!r}")
    if attention == "mask":
        same_example = segment[:, :, None] == segment[:, None, :]
        causal = torch.ones((length, length), dtype=torch.bool).tril()
        batch["attention_mask"] = (same_example & causal)[:, None, :, :]
    return batch


def segment_bounds(rows: Sequence[PackedRow], length: int):
    """``LongTensor[B, S + 1]``: each packed row's block boundaries, from 0 to ``length`` (the
    row as ``collate_packed`` padded it); the padding at a row's end is a block of its own,
    as in the mask. Rows with fewer blocks repeat their last boundary. What
    ``sftlab.train.attention`` needs to attend block by block.

    >>> from sftlab.data.packing import pack
    >>> rows = pack([Tokenized([5, 6, 7], [-100, 6, 7]), Tokenized([9, 9], [9, 9]),
    ...              Tokenized([5, 6, 7, 8], [-100, 6, 7, 8])], 6)
    >>> [row.seq_lengths for row in rows]
    [[4, 2], [3]]
    >>> segment_bounds(rows, 6)
    tensor([[0, 4, 6],
            [0, 3, 6]])
    """
    import torch

    bounds = [[0, *itertools.accumulate(r.seq_lengths)] for r in rows]
    bounds = [b + [length] if b[-1] < length else b for b in bounds]
    width = max(len(b) for b in bounds)
    return torch.tensor([b + b[-1:] * (width - len(b)) for b in bounds], dtype=torch.long)
