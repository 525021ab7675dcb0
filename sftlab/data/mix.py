"""Mixtures: several sources -> one clean, weighted training set, with a report.

Stages, in order (each removal is counted per reason and per source, with the ids):

1. read every source: any format ``sftlab.data.io`` reads, ``superni`` task files, or
   labelled rows rendered on the way in through ``task: gsm8k`` (a Flan-style ``TaskSpec``)
   or ``promptsource: templates.yaml`` (P3);
2. exact duplicates: the same normalised text (case, punctuation and spacing ignored);
3. near duplicates: MinHash + LSH over word 5-grams, every candidate pair verified by its
   exact Jaccard similarity (``threshold``, default 0.8); the earlier record is kept;
4. decontamination: a record sharing any word 13-gram with an evaluation item (GPT-3 /
   Flan) is removed; an evaluation text shorter than 13 words counts as one n-gram
   (when it has at least ``min_words``);
5. sampling: examples-proportional with caps (T5 / Flan). A source offers
   ``min(available, max_examples, cap)`` records; with ``total`` unset it gives
   ``round(weight * offered)`` (a weight above 1 repeats records), with ``total`` set the
   total is split in proportion to ``weight * offered``. Deterministic by ``seed``.

Config (``sftlab data mix mix.yaml -o mix.jsonl``)::

    sources:
      - {path: data/alpaca_en_demo.json, weight: 1.0}
      - {path: data/seed_tasks.jsonl, format: self_instruct, max_examples: 100}
      - {path: data/gsm8k/train.jsonl, task: gsm8k, options: {few_shot: 2}, max_examples: 500}
    cap: 3000
    dedup: {threshold: 0.8, ngram: 5}
    decontaminate:
      ngram: 13
      evals:
        - {path: data/gsm8k/test.jsonl, field: question}
        - {path: data/humaneval/HumanEval.jsonl.gz, field: prompt}
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tqdm import tqdm

from sftlab.config import dump_config
from sftlab.errors import ConfigError, DataError
from sftlab.types import Conversation

# -- config ----------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    path: str
    """A data file (json, jsonl, .gz), or for ``format: superni`` a task file or folder of them."""
    format: str | None = None
    """A reader name from ``sftlab.data.formats.FORMATS``; detected from the file when unset."""
    name: str | None = None
    """Name in the report and in each record's ``meta.mix_source`` (default: the file name)."""
    weight: float = 1.0
    """Relative rate; with ``total`` unset, a multiplier on the records offered (2.0 = twice)."""
    max_examples: int | None = None
    """Cap on the records this source offers (after cleaning)."""
    options: dict = field(default_factory=dict)
    """Read options for the reader (``sftlab.data.formats.ReadOptions`` fields); with
    ``task``, ``sftlab.data.templates.integrate`` options (few_shot, templates, per_row, ...);
    for ``format: superni``, ``read_superni_task`` options (k, negative, explanation)."""
    task: str | None = None
    """Labelled rows rendered through a built-in Flan-style task (``sftlab.data.templates.TASKS``)."""
    promptsource: str | None = None
    """Labelled rows rendered through a PromptSource ``templates.yaml`` (every row x template)."""

    def __post_init__(self) -> None:
        if self.task and self.promptsource:
            raise ConfigError(f"source {self.path}: give 'task' or 'promptsource', not both")
        if self.weight < 0:
            raise ConfigError(f"source {self.path}: weight must be >= 0, got {self.weight}")
        if self.max_examples is not None and self.max_examples < 0:
            raise ConfigError(f"source {self.path}: max_examples must be >= 0")


@dataclass
class DedupConfig:
    exact: bool = True
    """Remove records whose normalised text (lower case, words only) is identical."""
    near: bool = True
    """Remove records whose word n-gram Jaccard similarity with an earlier one is >= threshold."""
    threshold: float = 0.8
    ngram: int = 5
    num_perm: int = 128
    """MinHash permutations; only candidate recall depends on it (pairs are verified exactly)."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.num_perm < 1:
            raise ConfigError("dedup.ngram and dedup.num_perm must be >= 1")


@dataclass
class EvalFileConfig:
    path: str
    field: str
    """The text field of each row, dotted for nesting (``turns`` lists are joined)."""
    name: str | None = None


@dataclass
class DecontaminateConfig:
    ngram: int = 13
    evals: list[EvalFileConfig] = field(default_factory=list)
    min_words: int = 8
    """An evaluation text shorter than ``ngram`` words is matched whole if it has this many."""
    check: Literal["all", "user"] = "all"
    """Which turns of a training record are compared: every turn, or only user/system turns."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ConfigError("decontaminate.ngram must be >= 1")


@dataclass
class MixConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    total: int | None = None
    """Size of the mixture, split across sources by weight x offered records; unset = no target."""
    cap: int | None = None
    """Per-source cap (examples-proportional mixing with a cap, as in T5 / Flan)."""
    seed: int = 0
    shuffle: bool = True
    on_error: Literal["fail", "skip"] = "fail"
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)

    def __post_init__(self) -> None:
        names = [source_name(s) for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"two sources are named {repeated[0]!r}; give them distinct 'name's")


def source_name(source: SourceConfig) -> str:
    return source.name or Path(source.path).name


# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class MixResult:
    conversations: list[Conversation]
    report: dict[str, Any]


def build_mixture(config: MixConfig, progress: bool = False) -> MixResult:
    """Read, clean and sample the sources of ``config``; see the module docstring.

    ``report``: per source ``read / skipped / exact_duplicate / near_duplicate /
    contaminated / available / offered / selected`` counts; ``removed``: reason -> entries
    ``{"id", "source", ...why}``; ``removed_counts``; ``total``; ``timing_s``.
    """
    if not config.sources:
        raise ConfigError("the mix has no sources")
    timings, started = {}, time.perf_counter()
    report = _empty_report(config)
    pools = read_sources(config, report)
    records = [c for name in pools for c in pools[name]]
    timings["read"] = time.perf_counter() - started

    tokens = [message_words(c) for c in records]  # tokenised once, shared by the stages
    stages = [("exact_duplicate", config.dedup.exact, lambda rs, ts: exact_duplicates(rs, ts)),
              ("near_duplicate", config.dedup.near, lambda rs, ts: near_duplicates(
                  rs, config.dedup.threshold, config.dedup.ngram, config.dedup.num_perm, config.seed, ts)),
              ("contaminated", bool(config.decontaminate.evals), lambda rs, ts: contaminated(
                  rs, config.decontaminate, ts))]
    for reason, enabled, find in tqdm(stages, desc="mix", unit="stage", disable=not progress):
        if not enabled:
            continue
        begin = time.perf_counter()
        removed = find(records, tokens)  # position -> detail dict
        records = _remove(records, removed, reason, report)
        tokens = [t for i, t in enumerate(tokens) if i not in removed]
        timings[reason] = time.perf_counter() - begin

    clean = defaultdict(list)
    for conversation in records:
        clean[conversation.meta["mix_source"]].append(conversation)
    mixture = sample_mixture(clean, config, report)
    report["total"] = len(mixture)
    report["timing_s"] = {k: round(v, 3) for k, v in timings.items()}
    return MixResult(mixture, report)


def read_sources(config: MixConfig, report: dict[str, Any] | None = None) -> dict[str, list[Conversation]]:
    """Source name -> its conversations, each tagged with ``meta["mix_source"]``."""
    pools = {}
    for source in config.sources:
        name = source_name(source)
        conversations, skipped = _read_source(source, config.on_error)
        for conversation in conversations:
            conversation.meta = {**conversation.meta, "mix_source": name}
        pools[name] = conversations
        if report is not None:
            report["sources"][name].update(read=len(conversations), skipped=dict(skipped))
    return pools


def _read_source(source: SourceConfig, on_error: str) -> tuple[list[Conversation], dict[str, int]]:
    """(conversations, bad records skipped per reason) of one source."""
    path = Path(source.path)
    if source.format == "superni":  # one JSON object per task file, not a file of rows
        from sftlab.data.tasks import read_superni_task

        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise DataError("no task files (*.json) in this folder", file=str(path))
        try:
            return [c for f in files for c in read_superni_task(f, **source.options)], {}
        except TypeError as exc:
            raise ConfigError(f"source {path}: bad superni option ({exc}); use k, negative, "
                              "explanation, task_name, max_instances, tk_spacing") from exc
    if source.task or source.promptsource:
        return _render_source(source), {}
    from sftlab.data.io import read_conversations

    result = read_conversations(path, format=source.format, on_error=on_error, **source.options)
    return result.conversations, dict(result.skipped)


def _render_source(source: SourceConfig) -> list[Conversation]:
    """Labelled rows (any JSON/JSONL file) -> instructions through task or PromptSource templates."""
    from sftlab.data.io import read_rows

    rows = read_rows(source.path)
    if source.promptsource:
        from sftlab.data.promptsource import apply_promptsource, load_templates

        return apply_promptsource(rows, load_templates(source.promptsource), source=source_name(source),
                                  **source.options)
    from sftlab.data.templates import integrate

    try:
        return integrate(rows, source.task, **source.options)
    except TypeError as exc:
        raise ConfigError(f"source {source.path}: bad template option ({exc})") from exc


def _remove(records: list[Conversation], removed: dict[int, dict[str, Any]], reason: str,
            report: dict[str, Any]) -> list[Conversation]:
    entries = report["removed"].setdefault(reason, [])
    report["removed_counts"][reason] = report["removed_counts"].get(reason, 0) + len(removed)
    for position in sorted(removed):
        conversation = records[position]
        name = conversation.meta["mix_source"]
        report["sources"][name][reason] += 1
        entries.append({"id": conversation.id, "source": name, **removed[position]})
    return [c for i, c in enumerate(records) if i not in removed]


def _empty_report(config: MixConfig) -> dict[str, Any]:
    reasons = ("exact_duplicate", "near_duplicate", "contaminated")
    return {
        "sources": {source_name(s): {"path": s.path, "read": 0, "skipped": {}, **{r: 0 for r in reasons},
                                     "available": 0, "offered": 0, "selected": 0}
                    for s in config.sources},
        "removed_counts": {},
        "removed": {},
    }


# -- sampling --------------------------------------------------------------------------------


def sample_mixture(pools: dict[str, list[Conversation]], config: MixConfig,
                   report: dict[str, Any] | None = None) -> list[Conversation]:
    """Draw each source's count (see ``mixture_counts``) and shuffle them together."""
    sources = {source_name(s): s for s in config.sources}
    offered = {name: _offered(len(pools.get(name, [])), source, config.cap) for name, source in sources.items()}
    counts = mixture_counts(offered, {n: s.weight for n, s in sources.items()}, config.total)
    mixture = []
    for name, count in counts.items():
        pool = pools.get(name, [])
        rng = random.Random(f"{config.seed}:{name}")
        mixture += _draw(pool, count, rng)
        if report is not None:
            report["sources"][name].update(available=len(pool), offered=offered[name], selected=count)
    if config.shuffle:
        random.Random(f"{config.seed}:shuffle").shuffle(mixture)
    return mixture


def _offered(available: int, source: SourceConfig, cap: int | None) -> int:
    limits = [available] + [c for c in (source.max_examples, cap) if c is not None]
    return min(limits)


def mixture_counts(offered: dict[str, int], weights: dict[str, float], total: int | None) -> dict[str, int]:
    """Records drawn per source.

    >>> mixture_counts({"a": 100, "b": 50}, {"a": 1.0, "b": 2.0}, None)
    {'a': 100, 'b': 100}
    >>> mixture_counts({"a": 100, "b": 50}, {"a": 1.0, "b": 1.0}, 30)
    {'a': 20, 'b': 10}
    """
    rates = {name: weights[name] * offered[name] for name in offered}
    if total is None:
        return {name: round(rate) for name, rate in rates.items()}
    mass = sum(rates.values())
    if mass == 0:
        return {name: 0 for name in rates}
    # largest remainder: the counts add up to `total` exactly
    exact = {name: total * rate / mass for name, rate in rates.items()}
    counts = {name: int(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda n: (-(exact[n] - counts[n]), list(exact).index(n)))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def _draw(pool: list[Conversation], count: int, rng: random.Random) -> list[Conversation]:
    """``count`` records from ``pool``: a sample without replacement, or whole repeats plus
    a sample when ``count`` exceeds the pool (a repeated record gets ``#r<k>`` on its id)."""
    if not pool or count == 0:
        return []
    repeats, rest = divmod(count, len(pool))
    drawn = []
    for k in range(repeats):
        drawn += [_repeat(c, k) for c in pool]
    drawn += [_repeat(c, repeats) for c in rng.sample(pool, rest)]
    return drawn


def _repeat(conversation: Conversation, k: int) -> Conversation:
    if k == 0:
        return conversation
    return Conversation(list(conversation.messages), f"{conversation.id}#r{k}", conversation.source,
                        {**conversation.meta, "repeat": k})


# -- text normalisation and n-gram hashing -----------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing are ignored."""
    return _WORD.findall(text.lower())


def message_words(conversation: Conversation) -> list[tuple[str, list[str]]]:
    """``[(role, words of its content), ...]`` for each message."""
    return [(m.role, words(m.content)) for m in conversation.messages]


def _document(tokens: list[tuple[str, list[str]]], roles: Sequence[str] = ("system", "user", "assistant")
              ) -> list[str]:
    return [w for role, ws in tokens if role in roles for w in ws]


def _tokens(records: Sequence[Conversation], tokens: Sequence | None) -> Sequence:
    return tokens if tokens is not None else [message_words(c) for c in records]


def exact_duplicates(records: Sequence[Conversation], tokens: Sequence | None = None
                     ) -> dict[int, dict[str, Any]]:
    """Positions of records whose normalised (role, words) sequence was seen before."""
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


# -- near duplicates ---------------------------------------------------------------------------


def near_duplicates(records: Sequence[Conversation], threshold: float = 0.8, ngram: int = 5,
                    num_perm: int = 128, seed: int = 0, tokens: Sequence | None = None
                    ) -> dict[int, dict[str, Any]]:
    """Positions of records whose word ``ngram`` Jaccard similarity with an earlier kept
    record is at least ``threshold``. MinHash signatures + LSH banding find candidate
    pairs; each candidate is checked on the exact n-gram sets, so no false positives."""
    corpus = _Corpus([_document(t) for t in _tokens(records, tokens)])
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


# -- decontamination ---------------------------------------------------------------------------


def load_eval_texts(spec: EvalFileConfig) -> list[str]:
    """The ``spec.field`` text of every row of an evaluation file (json, jsonl, .gz)."""
    from sftlab.data.io import iter_records

    texts = []
    for record in iter_records(Path(spec.path)):
        if isinstance(record.value, DataError):
            raise record.value
        value = record.value
        for part in spec.field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise DataError(f"evaluation row has no field '{spec.field}'", file=spec.path,
                            line=record.line, index=record.index, field=spec.field,
                            hint="set 'field' to the text column (gsm8k: question, humaneval: prompt)")
        texts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return texts


def contaminated(records: Sequence[Conversation], config: DecontaminateConfig,
                 tokens: Sequence | None = None) -> dict[int, dict[str, Any]]:
    """Positions of records sharing a word ``config.ngram``-gram with an evaluation text.

    Detail: the evaluation set's name and the index of the matching evaluation text.
    """
    roles = ("system", "user", "assistant") if config.check == "all" else ("system", "user")
    evals, origin = [], []
    for spec in config.evals:
        name = spec.name or Path(spec.path).name
        texts = load_eval_texts(spec)
        evals += [words(t) for t in texts]
        origin += [(name, i) for i in range(len(texts))]
    train_docs = [_document(t, roles) for t in _tokens(records, tokens)]
    corpus = _Corpus(train_docs + evals)  # one vocabulary, so equal n-grams hash equally
    hashes, docs = corpus.ngrams(config.ngram)
    is_eval = docs >= len(train_docs)
    eval_grams = {int(h): int(d) - len(train_docs) for h, d in zip(hashes[is_eval], docs[is_eval])}
    train_hashes, train_docs_of = hashes[~is_eval], docs[~is_eval]
    # evaluation texts shorter than n words: match their whole word sequence
    lengths = corpus.lengths[len(train_docs):]
    for length in sorted(set(lengths[(lengths >= config.min_words) & (lengths < config.ngram)].tolist())):
        short_hashes, short_docs = corpus.ngrams(length)
        short_eval = (short_docs >= len(train_docs)) & (lengths[np.clip(short_docs - len(train_docs), 0, None)]
                                                        == length)
        for h, d in zip(short_hashes[short_eval], short_docs[short_eval]):
            eval_grams.setdefault(int(h), int(d) - len(train_docs))
        keep = short_docs < len(train_docs)
        train_hashes = np.concatenate([train_hashes, short_hashes[keep]])
        train_docs_of = np.concatenate([train_docs_of, short_docs[keep]])
    hits = _member(train_hashes, np.fromiter(eval_grams, dtype=np.uint64, count=len(eval_grams)))
    removed = {}
    for h, d in zip(train_hashes[hits], train_docs_of[hits]):
        if int(d) not in removed:
            name, index = origin[eval_grams[int(h)]]
            removed[int(d)] = {"eval": name, "eval_index": index}
    return removed


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


# -- writing -----------------------------------------------------------------------------------


def write_mixture(result: MixResult, config: MixConfig, output: str | Path) -> dict[str, Path]:
    """Write ``OUT.jsonl`` plus ``OUT.report.json`` and ``OUT.config.yaml`` beside it."""
    from sftlab.data.io import write_conversations

    output = Path(output)
    write_conversations(result.conversations, output, "canonical")
    stem = output.with_suffix("") if output.suffix else output
    paths = {"output": output, "report": Path(f"{stem}.report.json"), "config": Path(f"{stem}.config.yaml")}
    paths["report"].write_text(json.dumps({"output": str(output), **result.report}, indent=2) + "\n")
    dump_config(config, paths["config"])
    return paths


def mix_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: per source read -> removed -> selected."""
    lines = []
    for name, row in report["sources"].items():
        removed = ", ".join(f"{reason} {row[reason]}" for reason in
                            ("exact_duplicate", "near_duplicate", "contaminated") if row[reason])
        lines.append(f"{name}: read {row['read']}, removed {removed or 'none'}, "
                     f"offered {row['offered']}, selected {row['selected']}")
    lines.append(f"total: {report['total']} records")
    return "\n".join(lines)
