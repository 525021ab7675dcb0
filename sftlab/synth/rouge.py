"""ROUGE-L F-measure, as Self-Instruct uses it to reject near-duplicate instructions.

Tokenisation follows the common ROUGE scorer without stemming: lowercase, every run of
characters other than a-z and 0-9 is a separator.

>>> round(rouge_l("Write a poem about the sea.", "Write a poem about the ocean."), 3)
0.833
"""
from __future__ import annotations

import re

_SEPARATOR = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return [t for t in _SEPARATOR.split(text.lower()) if t]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str | list[str], reference: str | list[str]) -> float:
    a = tokenize(candidate) if isinstance(candidate, str) else candidate
    b = tokenize(reference) if isinstance(reference, str) else reference
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def max_rouge_l(candidate: str, pool_tokens: list[list[str]]) -> tuple[float, int]:
    """Best score against a pre-tokenised pool and the index of that pool item (-1 if empty)."""
    tokens = tokenize(candidate)
    best, best_index = 0.0, -1
    for index, other in enumerate(pool_tokens):
        score = rouge_l(tokens, other)
        if score > best:
            best, best_index = score, index
    return best, best_index
