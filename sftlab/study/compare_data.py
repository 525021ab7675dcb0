"""``sftlab study compare-data``: which data is better, at an equal budget, and by how much.

Each source (a selection from the pool, or a data file) trains the same model with the same
settings, per seed, on the same number of trained tokens (or examples); every run is
evaluated on the same held-out items. The study ranks the sources by score (seeds pooled
per item, bootstrap interval over items) and gives each one's paired difference from the
baseline (``random`` by default): the bootstrap of per-item differences, so the item-level
noise both sides share cancels. "Is the selected k better than a random k of the same
size?" is that difference and its interval: ``better`` when the interval lies above 0,
``worse`` below, else ``no clear difference``.

The ``judge`` source (AlpaGasus) asks ``judge`` to rate every pool example once; the
ratings are cached beside the runs under a hash of the judge, its endpoint and the pool,
and the judge's endpoint is checked to answer before anything trains.
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from sftlab.data.io import read_conversations
from sftlab.errors import ConfigError
from sftlab.models import load_model, load_tokenizer
from sftlab.study import select
from sftlab.study.common import Clock, check_endpoint, open_study, run_info
from sftlab.study.config import CompareDataConfig
from sftlab.report.charts import png, pyplot
from sftlab.study.report import paired_difference, pct, score_block, signed_pct, write_outputs
from sftlab.study.runs import Benchmark, RunStore, data_digest, digest, write_json
from sftlab.types import Conversation


def check_sources(config: CompareDataConfig) -> None:
    """Clear errors, naming the key, before anything loads or trains."""
    if len(config.sources) < 2:
        raise ConfigError(f"sources: give at least two to compare, got {config.sources}")
    if len(set(config.sources)) != len(config.sources):
        raise ConfigError(f"sources: each source once, got {config.sources}")
    for source in config.sources:
        if source not in select.SELECTIONS and not Path(source).is_file():
            raise ConfigError(f"sources: {source!r} is neither a selection ({', '.join(select.SELECTIONS)}) "
                              "nor an existing data file")
    if config.baseline not in config.sources:
        raise ConfigError(f"baseline: {config.baseline!r} is not one of sources {config.sources}")
    if config.pool and not Path(config.pool).is_file():
        raise ConfigError(f"pool: no such file: {config.pool}")
    if config.k <= 0:
        raise ConfigError(f"k: must be positive, got {config.k}")
    if "judge" in config.sources:
        check_judge(config)


def check_judge(config: CompareDataConfig) -> None:
    """``ConfigError`` naming the key unless the ``judge`` source has a judge that answers."""
    if not config.judge:
        raise ConfigError("judge: the `judge` source needs a rater: judge=MODEL (with judge_base_url=URL for an "
                          "OpenAI-compatible endpoint, or a local model such as judge=default)")
    if config.judge_base_url:
        check_endpoint(config.judge_base_url, config.judge_api_key_env, key="judge_base_url", role="judge")


def run_compare_data(config: CompareDataConfig, benchmark: Benchmark) -> dict:
    """Train every (source, seed), evaluate each, write study.json, plots and report.html."""
    check_sources(config)
    pool = read_conversations(config.pool).conversations if config.pool else benchmark.pool
    if config.k > len(pool):
        raise ConfigError(f"k: {config.k} exceeds the pool's {len(pool)} examples; lower k or give a larger pool")
    clock = Clock()
    out, store = open_study(config, "compare-data")
    files = {s: read_conversations(s).conversations for s in config.sources if s not in select.SELECTIONS}
    tokenizer = load_tokenizer(store.model_path)
    everything = pool + [c for examples in files.values() for c in examples]
    _check_ids(everything)
    counts = dict(zip([c.id for c in everything], select.trained_tokens(everything, tokenizer, config.max_length)))
    ifd = _ifd(store, tokenizer, pool, config) if "ifd" in config.sources else None
    ratings = _judge_ratings(store, pool, config) if "judge" in config.sources else None

    chosen: dict[str, dict[int, list[Conversation]]] = {s: {} for s in config.sources}
    budgets = {}
    for seed in config.seeds:
        selections = {s: _ordering(s, seed, pool, files, counts, ifd, ratings, config)[:config.k]
                      for s in config.sources}
        short = {s: len(chosen_k) for s, chosen_k in selections.items() if len(chosen_k) < config.k}
        if short:  # a file smaller than k, or the IFD or judge filter leaving fewer than k
            raise ConfigError(f"k: {config.k} examples cannot be taken from {short}; lower k"
                              + (" or raise ifd_max" if "ifd" in short else "")
                              + (" or lower judge_min_score" if "judge" in short else ""))
        if config.equalise == "tokens":
            budgets[seed], selections = select.equal_budget(selections, counts, config.budget_tokens)
        for s, examples in selections.items():
            chosen[s][seed] = examples

    results, sources = {}, []
    stats = {"seed": config.data_seed, "resamples": config.bootstrap_resamples}
    for s in config.sources:
        print(f"[{s}] {len(config.seeds)} seed(s)", flush=True)
        runs = [store.train(chosen[s][seed], seed) for seed in config.seeds]
        results[s] = [store.evaluate(benchmark, run) for run in runs]
        sources.append({"source": s, "score": score_block(results[s], **stats), "runs": [run_info(r) for r in runs],
                        "examples": [len(chosen[s][seed]) for seed in config.seeds],
                        "selected_tokens": [sum(counts[c.id] for c in chosen[s][seed]) for seed in config.seeds]})
    sources.sort(key=lambda row: -row["score"]["mean"])
    differences = {s: paired_difference(results[s], results[config.baseline], **stats)
                   for s in config.sources if s != config.baseline}
    pairs = {f"{a} - {b}": paired_difference(results[a], results[b], **stats)
             for i, a in enumerate(config.sources) for b in config.sources[i + 1:]}
    summary = {
        "study": "compare-data", "model": config.model, "benchmark": benchmark.name, "metric": benchmark.metric,
        "pool_size": len(pool), "eval_items": len(benchmark.items), "seeds": config.seeds,
        "equalise": config.equalise, "budget_tokens": budgets, "k": config.k,
        "ranking": [row["source"] for row in sources], "sources": sources, "baseline": config.baseline,
        "differences_vs_baseline": {s: {**d, "verdict": verdict(d)} for s, d in differences.items()},
        "pairwise_differences": pairs, "ifd": _ifd_summary(ifd), "judge": _judge_summary(ratings, config),
        "jobs": {"trained": store.trained, "reused": store.reused}, "timings_s": {"total": clock.seconds()},
        "config": asdict(config),
    }
    store.release()
    charts = {"scores.png": scores_chart(sources, benchmark.metric),
              "paired_differences.png": differences_chart(differences, config.baseline)}
    report = write_outputs(out, summary, charts, _sections(summary), f"sftlab study compare-data: {config.model}")
    for s, d in summary["differences_vs_baseline"].items():
        print(f"{s} - {config.baseline}: {signed_pct(d)} ({d['verdict']})")
    print(f"report: {report}")
    return summary


def _check_ids(examples: list[Conversation]) -> None:
    """Token counts are kept by example id: two different examples may not share one."""
    first: dict[str, Conversation] = {}
    for example in examples:
        other = first.setdefault(example.id, example)
        if other is not example and other.messages != example.messages:
            raise ConfigError(f"sources: two different examples share the id {example.id!r} (across the pool "
                              "and the data files); give the files distinct ids")


def verdict(difference: dict) -> str:
    """``better`` / ``worse`` when the paired interval excludes 0, else ``no clear difference``."""
    if difference["low"] > 0:
        return "better"
    if difference["high"] < 0:
        return "worse"
    return "no clear difference"


def _ordering(source: str, seed: int, pool, files, counts, ifd, ratings, config) -> list[Conversation]:
    if source == "random":
        return select.random_order(pool, seed)
    if source == "longest":
        return select.longest_order(pool, [counts[c.id] for c in pool])
    if source == "ifd":
        return select.ifd_order(pool, ifd, config.ifd_max)
    if source == "judge":
        return select.judge_order(pool, [row["score"] for row in ratings], config.judge_min_score)
    return select.random_order(files[source], seed)  # a data set: a random draw of it per seed


def _ifd(store: RunStore, tokenizer, pool: list[Conversation], config: CompareDataConfig) -> list[dict]:
    """IFD of every pool example under the untuned model, cached beside the runs."""
    path = store.root / f"ifd-{digest('ifd', store.fingerprint, data_digest(pool), config.max_length)}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"      scoring IFD of {len(pool)} pool examples with the untuned model", flush=True)
    model = load_model(store.model_path)
    scores = select.ifd_scores(model, tokenizer, pool, config.max_length)
    write_json(path, scores)
    return scores


def _judge_ratings(store: RunStore, pool: list[Conversation], config: CompareDataConfig) -> list[dict]:
    """The judge's 0-5 rating of every pool example (``score`` None where none parsed), cached."""
    from sftlab.eval.judge.client import complete_checked, make_judge  # lazy: httpx, a local judge's model

    key = digest("judge", config.judge, config.judge_base_url, select.JUDGE_PROMPT, config.judge_max_tokens,
                 data_digest(pool))
    path = store.root / f"judge-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"      rating {len(pool)} pool examples with judge {config.judge}", flush=True)
    judge = make_judge(config.judge, base_url=config.judge_base_url or None, cache_dir=store.root / "judge-cache",
                       api_key_env=config.judge_api_key_env)
    replies = complete_checked(judge, [select.judge_request(c) for c in pool], select.parse_judge_score,
                               max_tokens=config.judge_max_tokens, off_switch=None)  # ratings it must give
    ratings = [{"id": c.id, "score": select.parse_judge_score(text), "reply": text[:200]}
               for c, text in zip(pool, replies)]
    write_json(path, ratings)
    return ratings


def _judge_summary(ratings: list[dict] | None, config: CompareDataConfig) -> dict | None:
    if ratings is None:
        return None
    scores = [row["score"] for row in ratings if row["score"] is not None]
    return {"judge": config.judge, "base_url": config.judge_base_url, "examples": len(ratings),
            "unparsed": len(ratings) - len(scores), "min_score": config.judge_min_score,
            "kept": sum(score >= config.judge_min_score for score in scores),
            "histogram": {str(v): sum(round(s) == v for s in scores) for v in range(6)}}


def _ifd_summary(ifd: list[dict] | None) -> dict | None:
    if ifd is None:
        return None
    values = sorted(row["ifd"] for row in ifd)
    return {"examples": len(values), "min": values[0], "median": values[len(values) // 2], "max": values[-1],
            "at_or_above_1": sum(v >= 1 for v in values)}


VERDICT_CLASS = {"better": "pos", "worse": "neg", "no clear difference": ""}


def _sections(summary: dict) -> list[str]:
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(row['source'])}</td><td>{pct(row['score'])}</td><td>{row['score']['n']}</td>"
        f"<td>{', '.join(map(str, row['examples']))}</td><td>{', '.join(map(str, row['selected_tokens']))}</td>"
        + (f"<td class='{VERDICT_CLASS[d['verdict']]}'>{signed_pct(d)} ({d['verdict']})</td>"
           if (d := summary['differences_vs_baseline']
           .get(row['source'])) else "<td>baseline</td>")
        + "</tr>" for i, row in enumerate(summary["sources"]))
    budget = (f"an equal budget of trained tokens per seed ({summary['budget_tokens']})"
              if summary["equalise"] == "tokens" else f"{summary['k']} examples each")
    return [f"<p>LoRA runs on each data source at {budget}, seeds {summary['seeds']}, evaluated on the same "
            f"{summary['eval_items']} held-out items ({summary['metric']}). Paired differences: bootstrap over the "
            f"same items.</p>",
            "<table><tr><th>rank</th><th>source</th><th>score</th><th>items</th><th>examples per seed</th>"
            f"<th>trained tokens per seed</th><th>minus {summary['baseline']} (paired)</th></tr>{rows}</table>",
            "<p>Not included yet: a judge-quality filter (AlpaGasus style).</p>"]


def scores_chart(sources: list[dict], metric: str) -> bytes:
    """Ranked bars with 95% intervals."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(sources) + 1.5), 3.6))
    means = [100 * row["score"]["mean"] for row in sources]
    errors = [[m - 100 * row["score"]["low"] for m, row in zip(means, sources)],
              [100 * row["score"]["high"] - m for m, row in zip(means, sources)]]
    axes.bar(range(len(sources)), means, yerr=errors, capsize=3, color="#2a7ab9")
    axes.set_xticks(range(len(sources)), [Path(row["source"]).name for row in sources])
    axes.set_ylabel(f"{metric} (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    return png(figure)


def differences_chart(differences: dict[str, dict], baseline: str) -> bytes:
    """Each source minus the baseline, paired 95% intervals, against 0."""
    plt = pyplot()
    names = list(differences)
    figure, axes = plt.subplots(figsize=(6.0, 0.6 * len(names) + 1.4))
    means = [100 * differences[n]["mean"] for n in names]
    errors = [[m - 100 * differences[n]["low"] for m, n in zip(means, names)],
              [100 * differences[n]["high"] - m for m, n in zip(means, names)]]
    axes.errorbar(means, range(len(names)), xerr=errors, fmt="o", capsize=3, color="#2a7ab9")
    axes.axvline(0, color="#999999", linestyle="--")
    axes.set_yticks(range(len(names)), [Path(n).name for n in names])
    axes.set_xlabel(f"minus {baseline} (points, paired over items)")
    axes.grid(axis="x", alpha=0.3)
    return png(figure)
