"""The config's ``data`` section -> tokenized examples -> the micro-batches of each step.

Three stages, each a function:

1. ``load_examples(section, tokenizer)``: read the files (``sftlab.data.io``), render and
   mask them (``sftlab.data.chat``), hold out the eval split. Fails *before* training
   when nothing would be trained.
2. ``epoch_order(...)``: the seeded order of the epoch's units (examples, or packed rows
   with ``packing``). It is a plain list of ints, saved in every checkpoint, so a resumed
   run replays exactly the same batches.
3. ``step_batches(...)``: the micro-batches one process runs for one optimizer step,
   collated by ``sftlab.data.collate`` (padded, packed rows, or padding-free: the
   micro-batch concatenated into one row with attention isolated per example).

Another objective (``sftlab.train.objectives``) brings its own units, loader and collate
(``step_batches(..., make_batch=objective.collate)``); the order and batching are the same.

Global batch of one optimizer step = ``batch_size x grad_accumulation x processes``
units; process ``r`` takes micro-batches ``r * grad_accumulation ...`` of the step.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

from sftlab.data.chat import tokenize_conversations
from sftlab.data.collate import collate_packed, collate_padded, segment_bounds
from sftlab.data.io import read_conversations
from sftlab.data.packing import PackedRow, pack
from sftlab.errors import DataError
from sftlab.types import Tokenized


@dataclass
class Batch:
    """One micro-batch: ``tensors`` go to the model (``input_ids``, ``labels`` ``[B, T]``
    and ``attention_mask`` or ``position_ids``); ``tokens`` are the real (non-padding)
    tokens and ``padded`` the tensor size, for throughput and the padding fraction."""

    tensors: dict
    tokens: int
    padded: int


def load_examples(section, tokenizer, seed: int = 0, progress: bool = False):
    """Read, tokenize and split: ``-> (train, eval, summary_line)``, lists of ``Tokenized``."""
    train, dropped = _tokenize_files(section.paths, section, tokenizer, progress)
    if not train:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in dropped.most_common()) or "no records"
        raise DataError(f"no trainable example in the data set (dropped: {reasons})",
                        file=", ".join(section.paths),
                        hint="check data.mask and data.max_length with `sftlab data show-mask`")
    evaluation: list[Tokenized] = []
    if section.eval_path:
        evaluation, _ = _tokenize_files([section.eval_path], section, tokenizer, progress)
    elif section.eval_split > 0:
        train, evaluation = split_eval(train, section.eval_split, seed)
    summary = (f"data: {len(train)} train examples, {sum(e.num_trained for e in train):,} "
               f"trained tokens; {len(evaluation)} eval examples")
    return train, evaluation, summary


def _tokenize_files(paths, section, tokenizer, progress: bool):
    """``-> (examples, Counter of drop reasons)``."""
    if not paths:
        raise DataError("no training data: set data.paths", hint="data.paths=[train.jsonl]")
    conversations = []
    for path in paths:
        result = read_conversations(path, format=section.format, on_error=section.on_error,
                                    columns=section.columns, dataset_info=section.dataset_info,
                                    split=section.split, subset=section.subset, revision=section.revision)
        if result.skipped:
            print(f"{path}: skipped {sum(result.skipped.values())} bad records "
                  f"({dict(result.skipped)})")
        _refuse_undesirable(path, result.conversations, section)
        conversations += result.conversations
    if section.limit is not None:
        conversations = conversations[:section.limit]
    result = tokenize_conversations(conversations, tokenizer, max_length=section.max_length,
                                    strategy=section.mask, progress=progress,
                                    train_tool_calls=section.train_tool_calls, reasoning=section.reasoning)
    print(f"{', '.join(map(str, paths))}: {result.summary()}")
    return result.examples, result.dropped


def _refuse_undesirable(path, conversations, section) -> None:
    """A KTO data set (a dataset_info entry mapping ``kto_tag``) trained as SFT would learn its
    undesirable answers too; refused unless ``data.format`` is given (the user's choice)."""
    undesirable = sum(c.meta.get("kto_tag") is False for c in conversations)
    if undesirable and section.format is None:
        raise DataError(f"{undesirable} of its {len(conversations)} conversations are marked undesirable "
                        "(kto_tag false), which SFT would train on", file=str(path), reason="unpaired examples",
                        hint="train them with objective=kto (examples/kto.yaml); to train every answer "
                        "anyway, set data.format")


def split_eval(examples: list, fraction: float, seed: int):
    """Hold out ``fraction`` of the examples (at least one), chosen by ``seed``."""
    n_eval = max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise DataError(f"eval_split={fraction} leaves no training example out of {len(examples)}")
    held = set(random.Random(seed).sample(range(len(examples)), n_eval))
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


def make_units(examples: list, section) -> list:
    """What a batch is made of: the examples, or rows of ``max_length`` with ``packing``."""
    return pack(examples, section.max_length) if section.packing else list(examples)


def example_key(example: Tokenized) -> tuple:
    """What identifies an example's data: its ids and labels."""
    return (example.input_ids, example.labels)


def fingerprint(examples: list, key: Callable[[Any], Any] = example_key) -> str:
    """sha256 of the tokenized data (``key(unit)`` of each unit, in order: ids and labels
    of an example; an objective's own units name theirs): equal data, equal hash."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr(key(example)).encode())
    return digest.hexdigest()


# -- order and batches ---------------------------------------------------------------------

def steps_per_epoch(n_units: int, global_batch: int, world_size: int) -> int:
    """Optimizer steps in one epoch; with several processes a partial last step is dropped
    (every process must run the same number of forward/backward passes)."""
    if world_size > 1:
        return n_units // global_batch
    return -(-n_units // global_batch)


def epoch_order(lengths: list[int], seed: int, epoch: int, *, shuffle: bool = True,
                group_by_length: bool = False, global_batch: int = 1) -> list[int]:
    """Unit indices in the order epoch ``epoch`` visits them (deterministic in seed, epoch).

    ``group_by_length``: shuffle, then sort each window of 64 global batches by length so
    a batch holds similar lengths, then shuffle the batches (less padding, still random).
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        window = 64 * global_batch
        for start in range(0, len(order), window):
            order[start:start + window] = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches = [order[i:i + global_batch] for i in range(0, len(order), global_batch)]
        if shuffle:
            rng.shuffle(batches)
        order = [i for batch in batches for i in batch]
    return order


def step_batches(units: list, order: list[int], step_in_epoch: int, *, batch_size: int,
                 grad_accumulation: int, rank: int, world_size: int, pad_id: int,
                 padding_free: bool = False,
                 make_batch: Callable[..., Batch] | None = None) -> list[Batch]:
    """This process's micro-batches for one optimizer step (at most ``grad_accumulation``),
    each made by ``make_batch(units, pad_id, padding_free)`` (an objective's collate;
    default: ``collate``, for examples and packed rows).

    >>> units, order = [Tokenized([5, 6, 7], [-100, 6, 7])] * 8, list(range(8))
    >>> [len(b.tensors["input_ids"]) for b in step_batches(units, order, 0, batch_size=2,
    ...     grad_accumulation=2, rank=0, world_size=1, pad_id=3)]
    [2, 2]
    """
    per_process = batch_size * grad_accumulation
    start = step_in_epoch * per_process * world_size + rank * per_process
    mine = order[start:start + per_process]
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    make_batch = make_batch or collate
    return [make_batch([units[i] for i in chunk], pad_id, padding_free) for chunk in chunks]


def collate(items: list, pad_id: int, padding_free: bool = False) -> Batch:
    """Examples or packed rows -> a ``Batch``; ``padding_free`` makes the batch one row."""
    if padding_free:
        row = PackedRow()
        for item in items:
            for example in _examples_of(item):
                row.add(example)
        items = [row]
    if isinstance(items[0], PackedRow):
        tensors = collate_packed(items, pad_id)
        tensors["segments"] = segment_bounds(items, tensors["input_ids"].shape[1])
        tokens = sum(len(row) for row in items)
    else:
        tensors = collate_padded(items, pad_id)
        tokens = int(tensors["attention_mask"].sum())
    return Batch(tensors, tokens, tensors["input_ids"].numel())


def _examples_of(item) -> list[Tokenized]:
    if isinstance(item, Tokenized):
        return [item]
    # a packed row back into its examples (their first label is already ignored)
    out, start = [], 0
    for length in item.seq_lengths:
        out.append(Tokenized(item.input_ids[start:start + length], item.labels[start:start + length]))
        start += length
    return out
