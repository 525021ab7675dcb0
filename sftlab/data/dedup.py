"""Duplicate and overlap detection on word n-grams: the engine behind ``sftlab data mix``.

Three questions, each answered with record positions (``sftlab.data.mix`` turns them into
removals and a report):

* ``exact_duplicates``: which records repeat an earlier one once case, punctuation and
  spacing are ignored (a 128-bit hash of the normalised (role, words) sequence);
* ``near_duplicates``: which records have a word n-gram Jaccard similarity of at least
  ``threshold`` with an earlier kept record. MinHash signatures with LSH banding propose
  candidate pairs; every candidate is verified on the exact n-gram sets, so there are no
  false positives and the banding is tuned for recall;
* ``shared_ngrams``: which training documents share a word n-gram with an evaluation
  document (decontamination, GPT-3 / Flan style).

Text is normalised once by ``message_words`` (lower-cased ``\\w+`` tokens per message) and
the stages share those tokens. Word n-grams are hashed with numpy over one flat array of
64-bit word hashes (``_Corpus``); the word hash is blake2b, not Python's ``hash``, so
candidates and results are the same in every run.

Example::

    >>> from sftlab.types import Conversation, Message
    >>> a = Conversation([Message("user", "Name three painters.")], id="a")
    >>> b = Conversation([Message("user", "name THREE painters")], id="b")
    >>> exact_duplicates([a, b])
    {1: {'duplicate_of': 'a'}}
    >>> shared_ngrams([["one", "two", "three"]], [["two", "three"]], ngram=2)
    {0: 0}
"""
from __future__ import annotations

import hashlib
import itertools
import re
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from sftlab.types import Conversation

MessageWords = list[tuple[str, list[str]]]
"""``[(role, words of its content), ...]``: one conversation, normalised (``message_words``)."""

ALL_ROLES = ("system", "user", "assistant")

# -- text normalisation ------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing are ignored.

    >>> words("Hello, World!  It's 5pm.")
    ['hello', 'world', 'it', 's', '5pm']
    """
    return _WORD.findall(text.lower())


def message_words(conversation: Conversation) -> MessageWords:
    """``[(role, words of its content), ...]`` for each message."""
    return [(m.role, words(m.content)) for m in conversation.messages]


def document(tokens: MessageWords, roles: Sequence[str] = ALL_ROLES) -> list[str]:
    """The words of the messages whose role is in ``roles``, as one flat list."""
    return [w for role, ws in tokens if role in roles for w in ws]


def _tokens(records: Sequence[Conversation], tokens: Sequence[MessageWords] | None) -> Sequence[MessageWords]:
    """``tokens`` when the caller already normalised ``records``, else normalise them now."""
    return tokens if tokens is not None else [message_words(c) for c in records]


# -- exact duplicates --------------------------------------------------------------------------


def exact_duplicates(records: Sequence[Conversation], tokens: Sequence[MessageWords] | None = None
                     ) -> dict[int, dict[str, Any]]:
    """Positions of records whose normalised (role, words) sequence was seen before.

    Detail: ``{"duplicate_of": id of the first record with that text}``.
    """
    first: dict[bytes, int] = {}
    removed = {}
    for position, message_tokens in enumerate(_tokens(records, tokens)):
        key = "\x1e".join(f"{role}\x1f{' '.join(ws)}" for role, ws in message_tokens)
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if digest in first:
            removed[position] = {"duplicate_of": records[first[digest]].id}
        else:
            first[digest] = position
    return removed


# -- n-gram hashing ----------------------------------------------------------------------------


class _Corpus:
    """Documents as one flat array of 64-bit word hashes, for vectorised n-gram hashing."""

    def __init__(self, documents: Sequence[list[str]]) -> None:
        self.lengths = np.array([len(doc) for doc in documents], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])[:-1]
        flat = list(itertools.chain.from_iterable(documents))
        # a stable hash per distinct word (Python's own str hash changes between runs, which
        # would make LSH candidates, and so the output, vary from run to run)
        table = {word: _stable_hash(word) for word in set(flat)}
        self.tokens = np.fromiter(map(table.__getitem__, flat), dtype=np.uint64, count=len(flat))

    def ngrams(self, n: int, short: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, document index) of every word n-gram; with ``short``, a document of
        1..n-1 words contributes one hash of all its words (as an n-gram of its length)."""
        total = len(self.tokens)
        hashes, index = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        if total >= n:
            doc = np.repeat(np.arange(len(self.lengths)), self.lengths)[: total - n + 1]
            # a window is valid when it ends inside the document it starts in
            valid = np.arange(total - n + 1) + n <= (self.starts + self.lengths)[doc]
            hashes, index = _rolling(self.tokens, n)[valid], doc[valid]
        if short:
            small = np.nonzero((self.lengths > 0) & (self.lengths < n))[0]
            extra = [_rolling(self.tokens[self.starts[d]: self.starts[d] + self.lengths[d]],
                              int(self.lengths[d]))[0] for d in small]
            hashes = np.concatenate([hashes, np.array(extra, dtype=np.uint64)])
            index = np.concatenate([index, small.astype(np.int64)])
        return hashes, index


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _stable_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: well-spread 64-bit hashes of small integers."""
    x = (x + _GOLDEN).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _rolling(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of ``n`` consecutive tokens (length ``len(tokens) - n + 1``)."""
    count = len(tokens) - n + 1
    h = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(n):
        h = h * np.uint64(1000003) + tokens[j: j + count]
    return _mix64(h)


# -- near duplicates: MinHash + LSH, verified ----------------------------------------------------


def near_duplicates(records: Sequence[Conversation], threshold: float = 0.8, ngram: int = 5,
                    num_perm: int = 128, seed: int = 0, tokens: Sequence[MessageWords] | None = None
                    ) -> dict[int, dict[str, Any]]:
    """Positions of records whose word ``ngram`` Jaccard similarity with an earlier kept
    record is at least ``threshold``. MinHash signatures + LSH banding find candidate
    pairs; each candidate is checked on the exact n-gram sets, so no false positives.

    Detail: ``{"duplicate_of": id of the earlier record, "similarity": Jaccard, 4 digits}``.
    """
    corpus = _Corpus([document(t) for t in _tokens(records, tokens)])
    hashes, docs = corpus.ngrams(ngram, short=True)
    candidates = _lsh_candidates(hashes, docs, threshold, num_perm, seed)
    sets = _NgramSets(hashes, docs)
    removed: dict[int, dict[str, Any]] = {}
    for later in sorted(candidates):
        for earlier in sorted(candidates[later]):
            if earlier in removed:
                continue
            similarity = _jaccard(sets[earlier], sets[later])
            if similarity >= threshold:
                removed[later] = {"duplicate_of": records[earlier].id, "similarity": round(similarity, 4)}
                break
    return removed


class _NgramSets:
    """Unique n-gram hashes of one document, computed on first use (only candidates need them)."""

    def __init__(self, hashes: np.ndarray, docs: np.ndarray) -> None:
        order = np.argsort(docs, kind="stable")
        self.hashes, self.docs = hashes[order], docs[order]
        self.cache: dict[int, np.ndarray] = {}

    def __getitem__(self, doc: int) -> np.ndarray:
        if doc not in self.cache:
            lo, hi = np.searchsorted(self.docs, [doc, doc + 1])
            self.cache[doc] = np.unique(self.hashes[lo:hi])
        return self.cache[doc]


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm whose S-curve midpoint
    ``(1/bands)^(1/rows)`` lies well below ``threshold`` (recall first: pairs are verified)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if (1 / bands) ** (1 / rows) <= max(threshold - 0.15, 0.05):
            best = (bands, rows)
    return best


def _lsh_candidates(hashes: np.ndarray, docs: np.ndarray, threshold: float, num_perm: int,
                    seed: int) -> dict[int, set[int]]:
    """later position -> earlier positions sharing at least one LSH band."""
    if len(hashes) == 0:
        return {}
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    offsets = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    order = np.argsort(docs, kind="stable")
    hashes, docs = hashes[order], docs[order]
    present, starts = np.unique(docs, return_index=True)
    signatures = np.empty((len(present), num_perm), dtype=np.uint64)
    for p in range(num_perm):  # one permutation at a time keeps memory at one copy of `hashes`
        signatures[:, p] = np.minimum.reduceat((hashes * multipliers[p] + offsets[p]) >> np.uint64(16), starts)
    bands, rows = _bands(threshold, num_perm)
    band_mix = _mix64(np.arange(rows, dtype=np.uint64))
    candidates: dict[int, set[int]] = defaultdict(set)
    for b in range(bands):
        keys = (signatures[:, b * rows:(b + 1) * rows] * band_mix).sum(axis=1)  # wraps mod 2^64
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # only buckets holding two or more documents matter; find them without a Python loop
        same = np.nonzero(sorted_keys[1:] == sorted_keys[:-1])[0]
        for key in np.unique(sorted_keys[same]):
            lo, hi = np.searchsorted(sorted_keys, [key, key], side="left")[0], np.searchsorted(
                sorted_keys, key, side="right")
            members = sorted(present[order[lo:hi]].tolist())
            for i, later in enumerate(members[1:], start=1):
                candidates[later].update(members[:i])
    return candidates


# -- overlap with evaluation texts -------------------------------------------------------------


def shared_ngrams(train_docs: Sequence[list[str]], eval_docs: Sequence[list[str]], ngram: int = 13,
                  min_words: int = 8) -> dict[int, int]:
    """Training document position -> index of an evaluation document it shares a word
    ``ngram``-gram with (the first match found). An evaluation document shorter than
    ``ngram`` words, with at least ``min_words``, counts as one n-gram of its length.

    >>> shared_ngrams([["a", "b", "c", "d"], ["x", "y"]], [["b", "c", "d"]], ngram=3, min_words=1)
    {0: 0}
    """
    offset = len(train_docs)
    corpus = _Corpus(list(train_docs) + list(eval_docs))  # one vocabulary, so equal n-grams hash equally
    hashes, docs = corpus.ngrams(ngram)
    is_eval = docs >= offset
    eval_grams = {int(h): int(d) - offset for h, d in zip(hashes[is_eval], docs[is_eval])}
    train_hashes, train_docs_of = hashes[~is_eval], docs[~is_eval]
    # evaluation texts shorter than n words: match their whole word sequence
    lengths = corpus.lengths[offset:]
    for length in sorted(set(lengths[(lengths >= min_words) & (lengths < ngram)].tolist())):
        short_hashes, short_docs = corpus.ngrams(length)
        short_eval = (short_docs >= offset) & (lengths[np.clip(short_docs - offset, 0, None)] == length)
        for h, d in zip(short_hashes[short_eval], short_docs[short_eval]):
            eval_grams.setdefault(int(h), int(d) - offset)
        keep = short_docs < offset
        train_hashes = np.concatenate([train_hashes, short_hashes[keep]])
        train_docs_of = np.concatenate([train_docs_of, short_docs[keep]])
    hits = _member(train_hashes, np.fromiter(eval_grams, dtype=np.uint64, count=len(eval_grams)))
    matches: dict[int, int] = {}
    for h, d in zip(train_hashes[hits], train_docs_of[hits]):
        matches.setdefault(int(d), eval_grams[int(h)])
    return matches


def _member(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.isin(values, keys)`` for many values and few keys: a bitmap over the low 22 bits
    rules out almost every value cheaply; binary search in the sorted keys settles the rest."""
    if len(keys) == 0:
        return np.zeros(len(values), dtype=bool)
    mask = np.uint64((1 << 22) - 1)
    bitmap = np.zeros(1 << 22, dtype=bool)
    bitmap[keys & mask] = True
    maybe = np.nonzero(bitmap[values & mask])[0]
    keys = np.sort(keys)
    where = np.minimum(np.searchsorted(keys, values[maybe]), len(keys) - 1)
    hits = np.zeros(len(values), dtype=bool)
    hits[maybe] = keys[where] == values[maybe]
    return hits
