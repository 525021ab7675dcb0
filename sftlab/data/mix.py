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

This file is the pipeline (config, stages, sampling, writing); the duplicate and n-gram
overlap detection it calls lives in ``sftlab.data.dedup``.

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

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from tqdm import tqdm

from sftlab.config import dump_config
from sftlab.data.dedup import (ALL_ROLES, MessageWords, document, exact_duplicates, message_words,
                               near_duplicates, shared_ngrams, words)
from sftlab.data.io import at_row, iter_records, read_conversations, read_objects, write_conversations
from sftlab.data.promptsource import apply_promptsource, load_templates
from sftlab.data.tasks import read_superni_task
from sftlab.data.templates import integrate
from sftlab.errors import ConfigError, DataError
from sftlab.types import Conversation

# -- config ----------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    """One data source of the mixture."""

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
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"source {self.path}: weight must be a finite number >= 0, got {self.weight}")
        if self.max_examples is not None and self.max_examples < 0:
            raise ConfigError(f"source {self.path}: max_examples must be >= 0")


@dataclass
class DedupConfig:
    """Duplicate removal: exact (normalised text) and near (MinHash + LSH, verified)."""

    exact: bool = True
    """Remove records whose normalised text (lower case, words only) is identical."""
    near: bool = True
    """Remove records whose word n-gram Jaccard similarity with an earlier one is >= threshold."""
    threshold: float = 0.8
    """Jaccard similarity (0-1] of word n-gram sets at or above which a later record is a near duplicate."""
    ngram: int = 5
    """Words per n-gram compared for near duplicates (a record shorter than this counts as one n-gram)."""
    num_perm: int = 128
    """MinHash permutations; only candidate recall depends on it (pairs are verified exactly)."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.num_perm < 1:
            raise ConfigError("dedup.ngram and dedup.num_perm must be >= 1")


@dataclass
class EvalFileConfig:
    """One evaluation file whose texts must not appear in the training mixture."""

    path: str
    """The evaluation file (json, jsonl, .gz), e.g. ``gsm8k/test.jsonl``."""
    field: str
    """The text field of each row, dotted for nesting (``turns`` lists are joined)."""
    name: str | None = None
    """Name of this evaluation set in the report (default: the file name)."""


@dataclass
class DecontaminateConfig:
    """Decontamination: remove training records that share a word n-gram with an evaluation text."""

    ngram: int = 13
    """Words per n-gram; a training record sharing one n-gram with an evaluation text is removed."""
    evals: list[EvalFileConfig] = field(default_factory=list)
    """The evaluation files to check against; none = no decontamination."""
    min_words: int = 8
    """An evaluation text shorter than ``ngram`` words is matched whole if it has this many."""
    check: Literal["all", "user"] = "all"
    """Which turns of a training record are compared: every turn, or only user/system turns."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ConfigError("decontaminate.ngram must be >= 1")


@dataclass
class MixConfig:
    """``sftlab data mix``: sources, cleaning and sampling of one training mixture."""

    sources: list[SourceConfig] = field(default_factory=list)
    """The data sources to mix, each with its path, format and weight."""
    total: int | None = None
    """Size of the mixture, split across sources by weight x offered records; unset = no target."""
    cap: int | None = None
    """Per-source cap (examples-proportional mixing with a cap, as in T5 / Flan)."""
    seed: int = 0
    """Seed of the per-source sampling, the final shuffle and the MinHash permutations."""
    shuffle: bool = True
    """Shuffle the sources together; false keeps them in source order."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed record in a source: stop with its file and line (fail), or skip and count it (skip)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate removal settings."""
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    """Evaluation-set decontamination settings."""

    def __post_init__(self) -> None:
        names = [source_name(s) for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"two sources are named {repeated[0]!r}; give them distinct 'name's")


def source_name(source: SourceConfig) -> str:
    """The source's name in the report and in ``meta["mix_source"]``: ``name`` or the file name."""
    return source.name or Path(source.path).name


# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class MixResult:
    """What ``build_mixture`` returns."""

    conversations: list[Conversation]
    """The mixture, in its final (shuffled) order."""
    report: dict[str, Any]
    """Counts per source and stage, the removed ids with reasons, timings (see ``build_mixture``)."""


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
    result = read_conversations(path, format=source.format, on_error=on_error, **source.options)
    return result.conversations, dict(result.skipped)


def _render_source(source: SourceConfig) -> list[Conversation]:
    """Labelled rows (any JSON/JSONL file) -> instructions through task or PromptSource templates."""
    path = Path(source.path)
    records = read_objects(path)
    rows = [record.value for record in records]
    try:
        if source.promptsource:
            return apply_promptsource(rows, load_templates(source.promptsource), source=source_name(source),
                                      **source.options)
        return integrate(rows, source.task, **source.options)
    except TypeError as exc:
        raise ConfigError(f"source {source.path}: bad template option ({exc})") from exc
    except DataError as error:
        raise at_row(error, path, records) from None


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


# -- decontamination ---------------------------------------------------------------------------


def load_eval_texts(spec: EvalFileConfig) -> list[str]:
    """The ``spec.field`` text of every row of an evaluation file (json, jsonl, .gz)."""
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
                 tokens: Sequence[MessageWords] | None = None) -> dict[int, dict[str, Any]]:
    """Positions of records sharing a word ``config.ngram``-gram with an evaluation text.

    Detail: ``{"eval": evaluation set name, "eval_index": index of the matching text}``.
    """
    roles = ALL_ROLES if config.check == "all" else ("system", "user")
    evals, origin = [], []
    for spec in config.evals:
        name = spec.name or Path(spec.path).name
        texts = load_eval_texts(spec)
        evals += [words(t) for t in texts]
        origin += [(name, i) for i in range(len(texts))]
    if tokens is None:
        tokens = [message_words(c) for c in records]
    train_docs = [document(t, roles) for t in tokens]
    matches = shared_ngrams(train_docs, evals, config.ngram, config.min_words)
    return {position: dict(zip(("eval", "eval_index"), origin[index])) for position, index in matches.items()}


# -- writing -----------------------------------------------------------------------------------


def write_mixture(result: MixResult, config: MixConfig, output: str | Path) -> dict[str, Path]:
    """Write ``OUT.jsonl`` plus ``OUT.report.json`` and ``OUT.config.yaml`` beside it."""
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
