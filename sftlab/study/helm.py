"""``sftlab study helm``: one table of many metrics, per model and scenario (HELM, Liang et al. 2022).

A scenario is one of sftlab's evaluation tasks on a fixed set of items: a generation task
(``gsm8k``: few-shot chain of thought, scored by exact match), a multiple-choice one
(``bbh_mc``: BIG-Bench Hard subtasks with lettered options, scored by log-likelihood as
``mc_letters`` scores) and the quickstart's exactly-checkable tasks (``checkable``). Every
model answers every item of every scenario several times: as written, under each
rewording of ``paraphrases`` and with typos. The answers run through the same code as
``sftlab eval`` (``sftlab.eval.runner``), so the numbers are the ones it would give.

Per model x scenario, each with its ``n`` and (all but two) a 95% interval:

- **accuracy**: the scenario's metric (gsm8k ``exact_match_flexible``, multiple choice
  ``acc``, checkable ``exact_match``), bootstrap interval over items;
- **calibration**: ECE over 10 bins (``sftlab.eval.metrics``) and selective accuracy at
  ``coverage`` (accuracy on the 10% of items the model is most confident on). Confidence:
  multiple choice, the softmax probability of the chosen option among the options;
  generation, the geometric-mean probability of the answer's tokens,
  ``exp(mean token log-prob)`` of the generated text given its prompt, rescored by the same
  model (``sftlab.eval.loglik``); an empty answer has confidence 0;
- **robustness**: the drop in accuracy from the items as written to (i) their rewordings
  (each item's accuracy averaged over the ``paraphrases``) and (ii) their typo version,
  paired over the same items (bootstrap of per-item differences; positive = worse);
- **efficiency**: prompt and completion tokens per item (bootstrap intervals), and, from
  the clean pass, completion tokens per second (scored tokens for multiple choice) and
  seconds per item, measured over the whole batched pass: one number each, no interval.

Every (model, scenario, variant) pass is cached in the runs folder under a hash of what
produced it (model files, items as perturbed, settings): a rerun reuses it, timings included.
"""
from __future__ import annotations

import html
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sftlab.errors import ConfigError, DataError
from sftlab.eval.backend import EvalBackend
from sftlab.eval.base import GenerationTask, LoglikelihoodTask, data_path_for
from sftlab.eval.loglik import loglikelihoods
from sftlab.eval.metrics import bootstrap_ci, expected_calibration_error
from sftlab.eval.runner import (EvalConfig, build_task, limit_docs, parse_task_spec, run_generation_task,
                                run_loglikelihood_task)
from sftlab.eval.tasks import BBH_SUBTASKS, Bbh, MultipleChoiceLetters
from sftlab.infer.base import SamplingConfig
from sftlab.models import BUILTIN, resolve_model, split_adapter_run
from sftlab.report.charts import png, pyplot
from sftlab.study.common import Clock, open_study
from sftlab.study.config import HelmConfig
from sftlab.study.report import paired_difference, pct, signed_pct, write_outputs
from sftlab.study.runs import Benchmark, digest, model_fingerprint, write_json
from sftlab.types import Message

# task name -> (the per-sample score reported as accuracy, the doc field perturbations rewrite)
PRIMARY = {"gsm8k": ("exact_match_flexible", "question"), "math": ("math_verify", "problem"),
           "bbh": ("exact_match", "input"), "mc": ("acc", "question"), "mc_letters": ("acc", "question"),
           "checkable": ("exact_match", "prompt")}
CONFIDENCE = {"generation": "exp(mean token log-prob) of the generated answer given its prompt (rescored)",
              "multiple_choice": "softmax probability of the chosen option among the options"}


@dataclass
class Scenario:
    """One row group of the table: a task, its items, the score reported as accuracy and
    the doc field (the question) that paraphrases and typos rewrite."""

    name: str
    task: Any
    docs: list[dict]
    metric: str
    text_field: str


class CheckableTask(GenerationTask):
    """The quickstart's checkable items as an eval task: the prompt as one user turn (the
    chat template applies), ``exact_match`` by the benchmark's own scorer."""

    name = "checkable"

    def __init__(self, benchmark: Benchmark, max_new_tokens: int) -> None:
        self.benchmark = benchmark
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens)

    def prompt(self, doc: dict) -> list[Message]:
        return [Message("user", doc["prompt"])]

    def score(self, doc: dict, response: str) -> tuple[Any, dict[str, float]]:
        return response.strip(), {"exact_match": float(self.benchmark.score(response, doc["answer"]))}


# ---------------------------------------------------------------- scenarios

def check_config(config: HelmConfig) -> list[str]:
    """The models to compare; every bad key fails here, before anything loads."""
    models = config.models or [config.model]
    if len(set(models)) != len(models):
        raise ConfigError(f"models: each model once, got {models}")
    for name in models:
        if name not in BUILTIN and not Path(name).exists():
            raise ConfigError(f"models: {name!r} is neither {' nor '.join(BUILTIN)} nor an existing model, "
                              "adapter or run directory (this study reads local models only)")
    if not config.scenarios or len(set(config.scenarios)) != len(config.scenarios):
        raise ConfigError(f"scenarios: give each scenario once, got {config.scenarios}")
    for template in config.paraphrases:
        if "{text}" not in template:
            raise ConfigError(f"paraphrases: {template!r} has no {{text}} (where the question goes)")
    if not config.paraphrases:
        raise ConfigError("paraphrases: give at least one rewording, e.g. ['Consider the following. {text}']")
    if not 0 < config.coverage <= 1:
        raise ConfigError(f"coverage: must be in (0, 1], got {config.coverage}")
    if not 0 <= config.typo_rate <= 1:
        raise ConfigError(f"typo_rate: must be in [0, 1], got {config.typo_rate}")
    unknown = [s for s in config.mc_subtasks if s not in BBH_SUBTASKS]
    if unknown:
        raise ConfigError(f"mc_subtasks: {unknown} are not BBH subtasks ({', '.join(BBH_SUBTASKS[:4])}, ...)")
    return models


def build_scenarios(config: HelmConfig, benchmark: Benchmark) -> list[Scenario]:
    """Each scenario with its items, read the way ``sftlab eval`` reads them."""
    scenarios = []
    for spec in config.scenarios:
        name, path = parse_task_spec(spec)
        if name == "checkable":
            docs = [{**item, "target": item["answer"]} for item in benchmark.items]
            scenarios.append(Scenario(name, CheckableTask(benchmark, config.max_new_tokens), docs,
                                      *PRIMARY[name]))
            continue
        if name == "bbh_mc":
            bbh = Bbh(config.mc_subtasks)
            docs = bbh_choice_docs(limit_docs(bbh.docs(path or data_path_for(bbh, _data(config, name, spec))),
                                              config.limit))
            scenarios.append(Scenario(name, MultipleChoiceLetters(), docs, *PRIMARY["mc_letters"]))
            continue
        if name not in PRIMARY:
            raise ConfigError(f"scenarios: {name!r} is not one of bbh_mc, {', '.join(PRIMARY)}")
        task = build_task(name, eval_config(config, None))
        where = path or data_path_for(task, _data(config, name, spec))
        scenarios.append(Scenario(name, task, limit_docs(task.docs(where), config.limit), *PRIMARY[name]))
    return scenarios


def _data(config: HelmConfig, name: str, spec: str) -> str:
    if not config.data_dir:
        raise ConfigError(f"scenarios: {spec!r} needs its data; set data_dir=DIR (the folder `sftlab eval "
                          f"--data-dir` takes, e.g. ../shared/data) or give {name}=PATH")
    return config.data_dir


OPTION = re.compile(r"^\(([A-Z])\)\s*(.*)$")


def bbh_choice_docs(docs: Sequence[dict]) -> list[dict]:
    """BBH docs -> ``mc`` docs (``id``, ``question``, ``choices``, ``gold``): a subtask with
    ``Options:`` lines ``(A) ...`` keeps them as choices; one whose targets are a small fixed
    set (yes/no, True/False) takes that set, sorted, as every item's choices.

    >>> bbh_choice_docs([{"id": "s-0", "subtask": "s", "input": "Plausible?", "target": "no"},
    ...                  {"id": "s-1", "subtask": "s", "input": "Q?\\nOptions:\\n(A) x\\n(B) y", "target": "(B)"}])
    [{'id': 's-0', 'question': 'Plausible?', 'choices': ['no'], 'gold': 0, 'subtask': 's'}, \
{'id': 's-1', 'question': 'Q?', 'choices': ['x', 'y'], 'gold': 1, 'subtask': 's'}]
    """
    answer_sets: dict[str, set[str]] = {}
    for doc in docs:
        if "\nOptions:\n" not in doc["input"]:
            answer_sets.setdefault(doc["subtask"], set()).add(doc["target"])
    out = []
    for doc in docs:
        question, _, options = doc["input"].partition("\nOptions:\n")
        if options:
            parsed = [OPTION.match(line.strip()) for line in options.splitlines() if line.strip()]
            if not all(parsed) or doc["target"].strip("()") not in [m.group(1) for m in parsed]:
                raise DataError(f"bbh_mc: item {doc['id']} has options that are not '(A) ...' lines, or its "
                                f"target {doc['target']!r} is not one of them", field="mc_subtasks")
            choices = [m.group(2) for m in parsed]
            gold = [m.group(1) for m in parsed].index(doc["target"].strip("()"))
        else:
            choices = sorted(answer_sets[doc["subtask"]])
            if len(choices) > 5:
                raise DataError(f"bbh_mc: subtask {doc['subtask']} has free-form answers ({len(choices)} "
                                "distinct), not a multiple choice", field="mc_subtasks",
                                hint="pick subtasks with options or yes/no answers, e.g. sports_understanding")
            gold = choices.index(doc["target"])
        out.append({"id": doc["id"], "question": question, "choices": choices, "gold": gold,
                    "subtask": doc["subtask"]})
    return out


# ---------------------------------------------------------------- perturbations

def paraphrase(text: str, template: str) -> str:
    """``template`` with the question in place of ``{text}`` (not ``str.format``: questions
    may hold braces).

    >>> paraphrase("What is 2 + 2?", "Consider the following. {text}")
    'Consider the following. What is 2 + 2?'
    """
    return template.replace("{text}", text)


WORD = re.compile(r"[A-Za-z]{4,}")


def add_typos(text: str, rate: float, seed: str, keep: frozenset[str] = frozenset()) -> str:
    """HELM-style typos: each word of 4+ letters gets, with chance ``rate``, two neighbouring
    letters after its first swapped, or one such letter dropped. Numbers, short words and the
    words in ``keep`` (lower case: the gold answer's) are never touched; seeded by ``seed``.

    >>> add_typos("Sort these numbers: 3, 14", 1.0, "a") != "Sort these numbers: 3, 14"
    True
    >>> add_typos("Sort these numbers: 3, 14", 1.0, "a").endswith(": 3, 14")
    True
    >>> add_typos("Write apple twice", 1.0, "a", keep=frozenset({"apple"})).split()[1]
    'apple'
    """
    rng = random.Random(seed)

    def edit(match: re.Match) -> str:
        word = match.group(0)
        if word.lower() in keep or rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)  # never the first letter: the word stays recognisable
        if rng.random() < 0.5 and word[i] != word[i + 1]:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        return word[:i] + word[i + 1:]

    return WORD.sub(edit, text)


def gold_words(scenario: Scenario, doc: dict) -> frozenset[str]:
    """The gold answer's words, lower case (a typo there would change the right answer)."""
    gold = doc["choices"][doc["gold"]] if "choices" in doc else str(doc.get("target", ""))
    return frozenset(w.lower() for w in WORD.findall(gold))


def variants(scenario: Scenario, config: HelmConfig) -> dict[str, list[dict]]:
    """``original``, ``paraphrase_1..k`` and ``typos``: the scenario's docs, question rewritten."""
    field = scenario.text_field

    def rewrite(edit) -> list[dict]:
        return [{**doc, field: edit(doc)} for doc in scenario.docs]

    out = {"original": list(scenario.docs)}
    for k, template in enumerate(config.paraphrases, 1):
        out[f"paraphrase_{k}"] = rewrite(lambda doc, t=template: paraphrase(doc[field], t))
    out["typos"] = rewrite(lambda doc: add_typos(doc[field], config.typo_rate, f"{config.data_seed}:{doc['id']}",
                                                 gold_words(scenario, doc)))
    return out


# ---------------------------------------------------------------- one pass

def eval_config(config: HelmConfig, model: str | None, scenario: str = "") -> EvalConfig:
    """The ``sftlab eval`` settings of one pass (checkable answers are short)."""
    return EvalConfig(model=model, batch_size=config.eval_batch_size, seed=config.data_seed,
                      num_fewshot=None if config.num_fewshot < 0 else config.num_fewshot,
                      max_new_tokens=config.max_new_tokens if scenario == "checkable" else config.generation_tokens,
                      bootstrap_resamples=config.bootstrap_resamples)


def measure(backend: EvalBackend, scenario: Scenario, docs: list[dict], config: EvalConfig) -> dict:
    """Answer ``docs`` with the scenario's task as ``sftlab eval`` does -> ``{"seconds", "rows"}``,
    a row per item: ``id``, ``correct``, ``confidence``, ``prompt_tokens``, ``completion_tokens``,
    ``prompt`` (as the model saw it) and ``output``."""
    started = time.perf_counter()
    if isinstance(scenario.task, LoglikelihoodTask):
        samples, _ = run_loglikelihood_task(scenario.task, docs, backend, config, progress=False)
        seconds = time.perf_counter() - started
        confidences = [s.meta["confidence"] for s in samples]
        completion = [0] * len(samples)
        prompts = [_tokens(backend, s.prompt) + sum(_tokens(backend, c) for c in s.meta["choices"]) for s in samples]
    else:
        samples, _ = run_generation_task(scenario.task, docs, backend, config, progress=False)
        seconds = time.perf_counter() - started  # before the rescoring: the timing is generation's
        confidences = answer_confidences(backend, samples, config.batch_size)
        completion = [int(s.meta.get("completion_tokens", 0)) for s in samples]
        prompts = [_tokens(backend, s.prompt) for s in samples]
    rows = [{"id": s.id, "correct": float(s.scores[scenario.metric]), "confidence": conf, "prompt_tokens": p,
             "completion_tokens": c, "prompt": s.prompt, "output": s.output if s.output is not None else s.extracted}
            for s, conf, p, c in zip(samples, confidences, prompts, completion)]
    return {"seconds": round(seconds, 3), "rows": rows}


def _tokens(backend: EvalBackend, text: str) -> int:
    """Tokens of text as rendered (a chat template already wrote its special tokens)."""
    return len(backend.tokenizer()(text, add_special_tokens=False)["input_ids"])


def answer_confidences(backend: EvalBackend, samples, batch_size: int) -> list[float]:
    """Each generated answer's ``exp(mean token log-prob)`` given its rendered prompt; 0 for
    an empty answer."""
    model, tokenizer = backend.local_model()
    scored = [i for i, s in enumerate(samples) if s.output and s.output.strip()]
    results = loglikelihoods(model, tokenizer, [(samples[i].prompt, samples[i].output) for i in scored],
                             batch_size=batch_size) if scored else []
    confidences = [0.0] * len(samples)
    for i, result in zip(scored, results):
        confidences[i] = math.exp(result.logprob / max(1, result.num_tokens))
    return confidences


def model_key(model: str) -> str:
    """What identifies a model's files: the model directory's, plus an adapter's for an
    adapter or adapter-only run directory (as ``sftlab eval`` loads them: base + adapter)."""
    split = split_adapter_run(model) if model not in BUILTIN else None
    if split is None:
        return model_fingerprint(resolve_model(model))
    base, adapter_dir = split
    return digest(model_fingerprint(resolve_model(base)), model_fingerprint(str(adapter_dir)))


def cached_measure(store_root: Path, model: str, backend: EvalBackend, scenario: Scenario, variant: str,
                   docs: list[dict], config: EvalConfig, reused: list[int]) -> dict:
    """``measure``, kept under ``helm-<key>.json`` (key: model files, task, items, settings)."""
    settings = {k: getattr(config, k) for k in ("batch_size", "num_fewshot", "max_new_tokens", "seed")}
    key = digest("helm", model_key(model), scenario.name, type(scenario.task).__name__,
                 scenario.metric, docs, settings)
    path = store_root / f"helm-{key}.json"
    if path.exists():
        reused[0] += 1
        return json.loads(path.read_text())
    print(f"      {model} / {scenario.name} / {variant}: {len(docs)} items", flush=True)
    result = measure(backend, scenario, docs, config)
    write_json(path, result)
    return result


# ---------------------------------------------------------------- metrics

def ece_block(confidences: Sequence[float], correct: Sequence[float], *, seed: int, resamples: int) -> dict:
    """ECE (``expected_calibration_error``, 10 bins) with a percentile-bootstrap 95% interval
    over items (the ECE of each resample of the items)."""
    conf, hits = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    n = len(conf)
    draws = [expected_calibration_error(conf[i], hits[i])
             for i in np.random.default_rng(seed).integers(0, n, size=(resamples, n))]
    return {"mean": expected_calibration_error(conf, hits), "low": float(np.quantile(draws, 0.025)),
            "high": float(np.quantile(draws, 0.975)), "stderr": float(np.std(draws, ddof=1)), "n": n}


def selective_accuracy(rows: Sequence[dict], coverage: float, *, seed: int, resamples: int) -> dict:
    """Accuracy on the ``ceil(coverage * n)`` most confident items (ties: item order), with
    the bootstrap interval over those items and ``coverage``.

    >>> rows = [{"confidence": c, "correct": k} for c, k in [(0.9, 1), (0.2, 1), (0.8, 0), (0.1, 0)]]
    >>> block = selective_accuracy(rows, 0.5, seed=0, resamples=10)
    >>> block["mean"], block["n"]
    (0.5, 2)
    """
    k = max(1, math.ceil(coverage * len(rows) - 1e-9))
    top = sorted(range(len(rows)), key=lambda i: -rows[i]["confidence"])[:k]
    return {**bootstrap_ci([rows[i]["correct"] for i in top], seed=seed, resamples=resamples), "coverage": coverage}


def scenario_metrics(passes: dict[str, dict], coverage: float, *, seed: int, resamples: int) -> dict:
    """Every column of one (model, scenario) row from its passes (``original``, ``paraphrase_k``, ``typos``)."""
    stats = {"seed": seed, "resamples": resamples}
    clean = passes["original"]["rows"]
    rewordings = [passes[v]["rows"] for v in passes if v.startswith("paraphrase_")]
    typos = passes["typos"]["rows"]
    n, seconds = len(clean), passes["original"]["seconds"]
    completion, prompt = sum(r["completion_tokens"] for r in clean), sum(r["prompt_tokens"] for r in clean)
    return {
        "accuracy": bootstrap_ci([r["correct"] for r in clean], **stats),
        "ece": ece_block([r["confidence"] for r in clean], [r["correct"] for r in clean], **stats),
        "selective_accuracy": selective_accuracy(clean, coverage, **stats),
        "paraphrase_drop": paired_difference([clean], rewordings, **stats),
        "typo_drop": paired_difference([clean], [typos], **stats),
        "prompt_tokens": bootstrap_ci([r["prompt_tokens"] for r in clean], **stats),
        "completion_tokens": bootstrap_ci([r["completion_tokens"] for r in clean], **stats),
        # one timing of the whole batched pass: no interval
        "tokens_per_second": {"mean": (completion or prompt) / max(seconds, 1e-9), "low": None, "high": None, "n": n,
                              "counts": "completion tokens" if completion else "scored prompt tokens"},
        "latency_s": {"mean": seconds / max(1, n), "low": None, "high": None, "n": n},
        "paraphrase_accuracy": [bootstrap_ci([r["correct"] for r in rows], **stats) for rows in rewordings],
        "typo_accuracy": bootstrap_ci([r["correct"] for r in typos], **stats),
    }


# ---------------------------------------------------------------- the study

def run_helm(config: HelmConfig, benchmark: Benchmark) -> dict:
    """Every model on every scenario and variant; writes study.json, one chart per metric and
    report.html; returns the summary written to study.json."""
    models = check_config(config)
    scenarios = build_scenarios(config, benchmark)
    clock = Clock()
    out, store = open_study(config, "helm")
    reused, table, timings = [0], [], {}
    try:
        for model in models:
            started = time.perf_counter()
            backend = EvalBackend(model, batch_size=config.eval_batch_size)
            for scenario in scenarios:
                settings = eval_config(config, model, scenario.name)
                passes = {name: cached_measure(store.root, model, backend, scenario, name, docs, settings, reused)
                          for name, docs in variants(scenario, config).items()}
                row = scenario_metrics(passes, config.coverage, seed=config.data_seed,
                                       resamples=config.bootstrap_resamples)
                table.append({"scenario": scenario.name, "model": model, **row})
            timings[model] = round(time.perf_counter() - started, 1)
    finally:
        store.release()
    summary = {
        "study": "helm", "models": models, "table": table,
        "scenarios": [{"name": s.name, "task": s.task.name, "metric": s.metric, "items": len(s.docs),
                       "perturbed_field": s.text_field,
                       "confidence": CONFIDENCE["multiple_choice" if isinstance(s.task, LoglikelihoodTask)
                                                else "generation"]} for s in scenarios],
        "paraphrases": config.paraphrases, "typo_rate": config.typo_rate, "coverage": config.coverage,
        "jobs": {"reused": reused[0]}, "timings_s": {"total": clock.seconds(), "per_model": timings},
        "config": asdict(config),
    }
    charts = {f"{key}.png": metric_chart(table, key, label, unit) for key, label, unit in COLUMNS}
    report = write_outputs(out, summary, charts, _sections(summary), f"sftlab study helm: {', '.join(models)}")
    for row in table:
        print(f"{row['scenario']:<12} {row['model']:<16} " + "  ".join(
            f"{label}={cell(row[key], unit)}" for key, label, unit in COLUMNS[:5]))
    print(f"report: {report}")
    return summary


# ---------------------------------------------------------------- the table and charts

# column key, heading, unit: pct (a fraction, in percent), pts (a difference, points),
# frac (a fraction shown as is), num (a count or a rate)
COLUMNS = [("accuracy", "accuracy", "pct"), ("ece", "ECE", "frac"),
           ("selective_accuracy", "selective acc.", "pct"), ("paraphrase_drop", "paraphrase drop", "pts"),
           ("typo_drop", "typo drop", "pts"), ("prompt_tokens", "prompt tokens", "num"),
           ("completion_tokens", "completion tokens", "num"), ("tokens_per_second", "tokens/s", "num"),
           ("latency_s", "s/item", "num")]


def cell(block: dict, unit: str) -> str:
    """One table cell: ``38.5% [31–46]``, ``+4.2 pts [-1.0, +9.4]``, ``0.12 [0.05–0.20]``, ``36.2``."""
    if unit == "pct":
        return pct(block)
    if unit == "pts":
        return signed_pct(block)
    if unit == "frac":
        return f"{block['mean']:.3f} [{block['low']:.3f}–{block['high']:.3f}]"
    interval = f" [{block['low']:.1f}–{block['high']:.1f}]" if block.get("low") is not None else ""
    return f"{block['mean']:.1f}{interval}" if block["mean"] >= 1 else f"{block['mean']:.3f}{interval}"


def _sections(summary: dict) -> list[str]:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in COLUMNS)
    rows = "".join(f"<tr><td>{html.escape(r['scenario'])}</td><td>{html.escape(r['model'])}</td><td>{r['accuracy']['n']}</td>"
                   + "".join(f"<td>{cell(r[key], unit)}</td>" for key, _, unit in COLUMNS) + "</tr>"
                   for r in summary["table"])
    scenarios = "".join(f"<li><b>{html.escape(s['name'])}</b>: task {s['task']}, {s['items']} items, accuracy = "
                        f"{s['metric']}, confidence = {html.escape(s['confidence'])}</li>" for s in summary["scenarios"])
    rewordings = ", ".join(f"<code>{html.escape(p)}</code>" for p in summary["paraphrases"])
    return [f"<p>HELM-style multi-metric table: every model on the same items of every scenario. Brackets: "
            f"bootstrap 95% intervals over items. Selective accuracy: on the {100 * summary['coverage']:.0f}% most "
            f"confident items. Drops: accuracy as written minus accuracy reworded ({rewordings}, averaged per item) "
            f"or with typos (each word of 4+ letters with chance {summary['typo_rate']}, numbers and the gold "
            f"answer's words kept), paired over items; positive = worse. Tokens are per item; tokens/s and s/item "
            f"time the clean pass as a whole (batched).</p><ul>{scenarios}</ul>",
            f"<table><tr><th>scenario</th><th>model</th><th>items</th>{head}</tr>{rows}</table>"]


def metric_chart(table: list[dict], key: str, label: str, unit: str) -> bytes:
    """Grouped bars: one group per scenario, one bar per model, 95% intervals where known."""
    plt = pyplot()
    scenarios = list(dict.fromkeys(r["scenario"] for r in table))
    models = list(dict.fromkeys(r["model"] for r in table))
    scale = 100 if unit in ("pct", "pts") else 1
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.3 * len(scenarios) + 2), 3.4))
    for m, model in enumerate(models):
        blocks = {r["scenario"]: r[key] for r in table if r["model"] == model}
        xs = [s + (m - (len(models) - 1) / 2) * width for s in range(len(scenarios))]
        means = [scale * blocks[s]["mean"] for s in scenarios]
        errors = [[scale * max(0.0, blocks[s]["mean"] - blocks[s]["low"]) if blocks[s]["low"] is not None else 0.0
                   for s in scenarios],
                  [scale * max(0.0, blocks[s]["high"] - blocks[s]["mean"]) if blocks[s]["high"] is not None else 0.0
                   for s in scenarios]]
        axes.bar(xs, means, width, yerr=errors, capsize=3, label=Path(model).name or model)
    axes.set_xticks(range(len(scenarios)), scenarios)
    axes.set_ylabel({"pct": f"{label} (%)", "pts": f"{label} (points)"}.get(unit, label))
    if unit == "pct":
        axes.set_ylim(0, 100)
    if unit == "pts":
        axes.axhline(0, color="#999999", linewidth=0.8)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return png(figure)
