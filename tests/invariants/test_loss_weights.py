"""Loss-weight invariants: a weight-0 assistant turn changes which positions are labelled
and nothing else.

For a conversation with some assistant turns at weight 0, the ids are those of the same
conversation with every turn trained, and the labelled positions are exactly that
conversation's runs of the weight-1 turns. A conversation with every assistant turn at
weight 0 trains nothing: ``tokenize_conversations`` drops and counts it
(``all_turns_weight_0``), so training never sees it.
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from sftlab.data.chat import render, tokenize_conversations
from sftlab.data.io import read_conversations
from sftlab.types import IGNORE_INDEX, Conversation
from tests.invariants.test_masks import TOKENIZERS, random_conversations


def with_weights(conversation: Conversation, weights: list[int]) -> Conversation:
    """``conversation`` with its assistant turns given ``weights``, in order."""
    turns = iter(weights)
    messages = [dataclasses.replace(m, weight=next(turns)) if m.role == "assistant" else m
                for m in conversation.messages]
    return dataclasses.replace(conversation, messages=messages)


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """The positions of each maximal run of labelled tokens."""
    runs: list[list[int]] = []
    for t, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][-1] == t - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def check_weights(conversation: Conversation, weights: list[int], tokenizer) -> None:
    full = render(conversation, tokenizer)
    runs = labelled_runs(full.labels)
    assert len(runs) == len(weights), conversation.id  # one run per assistant turn
    weighted = render(with_weights(conversation, weights), tokenizer)
    assert weighted.input_ids == full.input_ids
    kept = {t for run, weight in zip(runs, weights) if weight for t in run}
    expected = [label if t in kept else IGNORE_INDEX for t, label in enumerate(full.labels)]
    assert weighted.labels == expected, (conversation.id, weights)


@pytest.fixture(scope="module")
def multi_turn(shared_data) -> list[Conversation]:
    formats = shared_data / "formats"
    conversations = (read_conversations(formats / "sharegpt_dummy_conversation.json").conversations[:60]
                     + read_conversations(formats / "oasst_en_100_tree.jsonl").conversations[:30])
    multi = [c for c in conversations if c.turns > 1]
    assert len(multi) >= 30
    return multi


@pytest.mark.parametrize("tokenizer_name", list(TOKENIZERS))
def test_weight_0_turns_lose_exactly_their_labels(multi_turn, tokenizer_name):
    tokenizer = TOKENIZERS[tokenizer_name]()
    rng = random.Random(0)
    for conversation in multi_turn + [c for c in random_conversations(seed=3, n=100) if c.turns > 1]:
        weights = [rng.randint(0, 1) for _ in range(conversation.turns)]
        weights[rng.randrange(len(weights))] = 1  # at least one trained turn
        check_weights(conversation, weights, tokenizer)


def test_all_weight_0_conversations_are_dropped_and_counted(multi_turn, tiny_tokenizer):
    zero = [with_weights(c, [0] * c.turns) for c in multi_turn[:10]]
    result = tokenize_conversations(zero + multi_turn[10:20], tiny_tokenizer)
    assert [e.id for e in result.examples] == [c.id for c in multi_turn[10:20]]
    assert result.dropped == {"all_turns_weight_0": 10}
    assert sorted(name for name, _ in result.dropped_ids) == sorted(c.id for c in zero)
