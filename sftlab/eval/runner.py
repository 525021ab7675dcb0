"""The evaluation runner: tasks x model -> ``results.json``, ``samples.jsonl``, ``settings.json``.

    config = EvalConfig(model="tiny", tasks=["gsm8k"], data_dir="../shared/data", limit=3)
    results = evaluate(config)        # also writes the three files when output_dir is set
    print(format_table(results))      # sftlab.eval.results

Beside this file: ``backend.py`` (where answers come from: local model, endpoint or a
responses file) and ``results.py`` (summaries with intervals, the files, the table).

How one task runs:
1. ``docs`` are read from the task's data path (``--data-dir`` + the task's ``data_file``,
   or ``TASK=PATH``), then cut to ``limit`` (per subtask when docs carry one);
2. a generation task's prompts go through a ``Generator`` in chunks (or responses come
   from ``--responses FILE``); a log-likelihood task is scored with ``sftlab.eval.loglik``;
3. every item becomes a ``Sample`` (prompt exactly as the model saw it, raw output,
   extracted answer, scores);
4. every per-sample metric gets its mean with a seeded bootstrap 95% interval and ``n``;
   subtasks get their own rows and a macro average.

``results.json`` layout::

    {"model": "tiny", "tasks": {"gsm8k": {"metrics": {"exact_match_strict":
        {"mean": 0.0, "low": 0.0, "high": 0.0, "stderr": 0.0, "n": 3}, ...},
        "subtasks": {...}, "extra": {...}}}}
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from sftlab.errors import ConfigError, DataError
from sftlab.eval.backend import EvalBackend, match_responses, read_responses
from sftlab.eval.base import TASKS, GenerationTask, LoglikelihoodTask, Sample, data_path_for
from sftlab.eval.loglik import loglikelihoods
from sftlab.eval.metrics import expected_calibration_error
from sftlab.eval.results import summarize, write_outputs
from sftlab.infer.base import SamplingConfig
from sftlab.infer.backends import resolve_backend
from sftlab.models import library_versions
from sftlab.types import Message


@dataclass
class EvalConfig:
    """What ``sftlab eval`` runs; every field is saved in ``settings.json``."""

    model: str | None = None
    """Model to evaluate: `tiny`, `default`, a model or run directory, a hub id; with
    `base_url`, the name shown in results (the served model answers). Not needed with
    `responses` unless a log-likelihood task runs."""
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])
    """Task names, comma-separated on the command line (gsm8k, math, bbh, mc, mc_letters,
    ifeval, humaneval, humaneval_chat, vqa); `NAME=PATH` gives one task its own data file or folder."""
    output_dir: str | None = None
    """Directory for results.json, samples.jsonl and settings.json; none: print only."""
    limit: int | None = None
    """Evaluate only the first N items (of each subtask)."""
    num_fewshot: int | None = None
    """Override the tasks' few-shot count (tasks without few-shot ignore it)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """`auto`: prompts as the task writes them; `on`: text prompts become one user
    message (chat template applied); `off`: message prompts are sent as plain text."""
    batch_size: int = 8
    """Prompts per generation or scoring batch."""
    adapter: str | None = None
    """A PEFT adapter directory to apply to the model."""
    responses: str | None = None
    """Score precomputed responses instead of generating (JSON/JSONL rows with `id` or
    `prompt`, and `response` or `output`)."""
    data_dir: str | None = None
    """Folder holding the tasks' data files (gsm8k/test.jsonl, bbh/, math/test.jsonl, ...)."""
    base_url: str | None = None
    """An OpenAI-compatible endpoint that generates, e.g. http://127.0.0.1:8000/v1."""
    api_model: str | None = None
    """Model name sent to `base_url` (required with it)."""
    max_new_tokens: int | None = None
    """Override the tasks' generation length."""
    num_samples: int = 1
    """Responses generated per item (sample ids `ID#0`, `ID#1`, ...); HumanEval's pass@k
    needs several, with `temperature` > 0."""
    temperature: float | None = None
    """Override the tasks' sampling temperature (their default: 0, greedy)."""
    seed: int = 1234
    """Seeds sampling (if any) and the bootstrap."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples behind each 95% interval."""
    dtype: str = "float32"
    """Dtype the local model is loaded in: float32, bfloat16 or float16."""
    device: str = "cpu"
    """Device of the local model: cpu, cuda, cuda:1, mps."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """Engine of local generation: `auto` (llama.cpp for GGUF models, `default` and .gguf files,
    when llama-cpp-python is installed, else hf), `hf` (transformers), `llamacpp` (llama.cpp's CPU
    kernels on the same float32 weights: same greedy tokens, faster; `pip install
    'sftlab[llamacpp]'`). Log-likelihood tasks always score with transformers. settings.json
    names the engine that ran."""


def evaluate(config: EvalConfig, *, generator=None, model=None, tokenizer=None,
             progress: bool = True) -> dict[str, Any]:
    """Run every task of ``config``; write the files when ``config.output_dir`` is set.

    ``generator`` / ``model`` + ``tokenizer`` may be passed in (tests, the quickstart);
    otherwise they are loaded from ``config`` when a task needs them.
    """
    _check(config, given_model=generator is not None or model is not None)
    if generator is None and not (config.base_url or config.responses):
        config.backend = resolve_backend(config.backend, config.model, adapter=config.adapter,
                                         dtype=config.dtype, device=config.device)
    backend = EvalBackend(config.model, adapter=config.adapter, dtype=config.dtype, device=config.device,
                          engine=config.backend, batch_size=config.batch_size, base_url=config.base_url,
                          api_model=config.api_model, responses=config.responses,
                          generator=generator, loaded_model=model, tokenizer=tokenizer)
    results: dict[str, Any] = {"model": config.model, "adapter": config.adapter, "tasks": {}}
    all_samples: list[Sample] = []
    task_settings = {}
    for spec in config.tasks:
        name, path = parse_task_spec(spec)
        task = build_task(name, config)
        docs = limit_docs(task.docs(path or data_path_for(task, config.data_dir)), config.limit)
        if not docs:
            raise DataError(f"task '{name}' has no items", file=path or config.data_dir)
        started = time.perf_counter()
        if isinstance(task, LoglikelihoodTask):
            samples, extra = run_loglikelihood_task(task, docs, backend, config, progress)
        else:
            samples, extra = run_generation_task(task, docs, backend, config, progress)
        summary = summarize(task, samples, seed=config.seed, resamples=config.bootstrap_resamples)
        summary["extra"].update(extra)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        results["tasks"][name] = summary
        all_samples += samples
        task_settings[name] = _task_settings(task, config, docs, backend)
    results["settings"] = settings(config, task_settings, backend)
    if config.output_dir:
        write_outputs(Path(config.output_dir), results, all_samples)
    return results


def _check(config: EvalConfig, given_model: bool) -> None:
    if config.chat_template not in ("auto", "on", "off"):
        raise ConfigError(f"--chat-template must be on, off or auto, not '{config.chat_template}'")
    if bool(config.base_url) != bool(config.api_model):
        raise ConfigError("--base-url and --api-model go together")
    if not (config.model or config.responses or config.base_url or given_model):
        raise ConfigError("give a MODEL to evaluate, or --responses FILE to score precomputed answers")
    if config.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, not {config.num_samples}")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {config.limit} (leave it out for every item)")
    if config.num_samples > 1 and not config.responses and not (config.temperature or 0) > 0:
        raise ConfigError(f"--num-samples {config.num_samples} needs --temperature above 0 (greedy "
                          "decoding gives the same response every time), e.g. --temperature 0.8")


def parse_task_spec(spec: str) -> tuple[str, str | None]:
    """``"mc=items.jsonl"`` -> ``("mc", "items.jsonl")``; ``"gsm8k"`` -> ``("gsm8k", None)``."""
    name, _, path = spec.partition("=")
    return name.strip(), (path.strip() or None)


def build_task(name: str, config: EvalConfig):
    """Look a task up (importing the modules that register tasks) and apply overrides."""
    import_task_modules()
    entry = TASKS.get(name)
    task = entry() if isinstance(entry, type) else entry
    if config.num_fewshot is not None and getattr(task, "num_fewshot", None) is not None:
        task.num_fewshot = config.num_fewshot
    return task


def import_task_modules() -> None:
    """Import every module that registers tasks (``TASKS``), skipping one whose optional
    dependency is not installed."""
    for module in ("sftlab.eval.tasks", "sftlab.eval.tasks_ifeval", "sftlab.eval.humaneval", "sftlab.eval.vqa"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it needs is missing
                raise


def limit_docs(docs: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` docs, or of each subtask when docs carry ``subtask``."""
    if limit is None:
        return docs
    taken: dict[Any, int] = {}
    kept = []
    for doc in docs:
        group = doc.get("subtask")
        if taken.get(group, 0) < limit:
            kept.append(doc)
            taken[group] = taken.get(group, 0) + 1
    return kept


# ---------------------------------------------------------------- generation tasks

def run_generation_task(task: GenerationTask, docs, backend: EvalBackend, config: EvalConfig,
                        progress: bool) -> tuple[list[Sample], dict[str, Any]]:
    """Prompt, generate (or look up responses), extract and score every doc."""
    sampling = task_sampling(task, config)
    prompts, shots = [], []
    for doc in docs:
        prompt, used = fit_prompt(task, doc, config, backend, sampling.max_new_tokens)
        prompts.append(prompt)
        shots.append(used)
    if config.responses:
        rows = read_responses(config.responses)
        if hasattr(task, "problem_scores"):  # pass@k: several responses per item may come
            per_doc = responses_per_doc(docs, prompts, rows)
        else:
            per_doc = [[output] for output in match_responses(docs, prompts, rows)]
        meta = [[{} for _ in outputs] for outputs in per_doc]
    else:
        count = config.num_samples
        repeated = [prompt for prompt in prompts for _ in range(count)]
        generations = _generate_in_chunks(backend.generator(), repeated, sampling, config.batch_size,
                                          progress, task.name, group=count)
        per_doc = [[g.text for g in generations[i * count:(i + 1) * count]] for i in range(len(docs))]
        meta = [[{"finish_reason": g.finish_reason, "completion_tokens": g.completion_tokens}
                 for g in generations[i * count:(i + 1) * count]] for i in range(len(docs))]
    samples = []
    for doc, prompt, outputs, extras, used in zip(docs, prompts, per_doc, meta, shots):
        for index, (output, extra) in enumerate(zip(outputs, extras)):
            extracted, scores = task.score(doc, output)
            if doc.get("subtask"):
                extra = {**extra, "subtask": doc["subtask"]}
            if used != getattr(task, "num_fewshot", None):
                extra = {**extra, "num_fewshot": used}
            sample_id = str(doc["id"]) if len(outputs) == 1 else f"{doc['id']}#{index}"
            samples.append(Sample(task=task.name, id=sample_id, prompt=backend.render(prompt),
                                  target=doc.get("target"), output=output, extracted=extracted,
                                  scores=scores, meta=extra))
    reduced = sum(used != getattr(task, "num_fewshot", None) for used in shots)
    return samples, ({"items_with_fewer_shots": reduced} if reduced else {})


def responses_per_doc(docs, prompts, rows) -> list[list[str]]:
    """Each doc's responses, for a task scored over several samples per item (HumanEval):
    rows naming an item by ``id`` (or ``task_id``; ``ID#k``, as in samples.jsonl, counts as
    ``ID``) may be several per item, kept in file order; without repeated ids, one
    response per doc as ``match_responses`` pairs them."""
    known = {str(doc["id"]) for doc in docs}
    grouped: dict[str, list[str]] = {}
    for row in rows:
        key = row.get("id", row.get("task_id"))
        if key is None:
            continue
        key = str(key)
        if key not in known and key.rpartition("#")[0] in known:
            key = key.rpartition("#")[0]
        grouped.setdefault(key, []).append(row["response"])
    if all(len(responses) == 1 for responses in grouped.values()):
        return [[output] for output in match_responses(docs, prompts, rows)]
    missing = [str(doc["id"]) for doc in docs if str(doc["id"]) not in grouped]
    if missing:
        raise DataError(f"no response for item '{missing[0]}' ({len(missing)} items without one)",
                        hint="with several responses per item, give every row the item's 'id'")
    return [grouped[str(doc["id"])] for doc in docs]


def fit_prompt(task, doc, config: EvalConfig, backend: EvalBackend, max_new_tokens: int):
    """The item's prompt, with fewer few-shot exemplars when the full prompt plus the
    generation budget would not fit the local model's context (a tiny model's 1024
    tokens cannot hold GSM8K's 8 shots). -> (prompt, shots used). Never cuts text mid-way:
    whole exemplars are dropped, and the sample records how many were used."""
    requested = getattr(task, "num_fewshot", None)
    if requested is None or config.responses or backend.context_length() is None:
        return apply_chat_mode(task.prompt(doc), config.chat_template), requested
    limit = backend.context_length()
    shots = requested
    try:
        while True:
            task.num_fewshot = shots
            prompt = apply_chat_mode(task.prompt(doc), config.chat_template)
            if shots == 0 or backend.count_tokens(prompt) + max_new_tokens <= limit:
                return prompt, shots
            shots -= 1
    finally:
        task.num_fewshot = requested


def apply_chat_mode(prompt, mode: str):
    """``on``: text -> [user message]; ``off``: messages -> their contents as plain text."""
    if mode == "on" and isinstance(prompt, str):
        return [Message("user", prompt)]
    if mode == "off" and not isinstance(prompt, str):
        return "\n\n".join(m.content for m in prompt)
    return prompt


def task_sampling(task, config: EvalConfig) -> SamplingConfig:
    sampling = dataclasses.replace(task.sampling, seed=config.seed)
    if config.temperature is not None:
        sampling = dataclasses.replace(sampling, temperature=config.temperature)
    if config.max_new_tokens is not None:
        sampling = dataclasses.replace(sampling, max_new_tokens=config.max_new_tokens)
    return sampling


def _generate_in_chunks(generator, prompts, sampling, batch_size, progress, label, group: int = 1):
    """Generate in chunks of a few batches so the progress bar moves. A chunk holds whole
    groups (the ``group`` samples of one item): a row's sampling seed is its index within
    the call, so the samples of one item must not straddle two calls."""
    chunk = -(-max(1, batch_size) * 4 // group) * group
    outputs = []
    with tqdm(total=len(prompts), desc=f"{label}: generate", unit="item", disable=not progress) as bar:
        for start in range(0, len(prompts), chunk):
            outputs += generator.generate(prompts[start:start + chunk], sampling)
            bar.update(len(prompts[start:start + chunk]))
    return outputs


# ---------------------------------------------------------------- log-likelihood tasks

def run_loglikelihood_task(task: LoglikelihoodTask, docs, backend: EvalBackend, config: EvalConfig,
                           progress: bool) -> tuple[list[Sample], dict[str, Any]]:
    """acc (highest summed log-prob), acc_norm (highest log-prob per character of the
    choice, as lm-eval), and the ECE of the softmax over choices."""
    model, tokenizer = backend.local_model()
    pairs, owners = [], []
    for index, doc in enumerate(docs):
        for choice in task.choices(doc):
            pairs.append((task.context(doc), choice))
            owners.append(index)
    scored = loglikelihoods(model, tokenizer, pairs, batch_size=config.batch_size, progress=progress)
    per_doc: list[list[float]] = [[] for _ in docs]
    for owner, result in zip(owners, scored):
        per_doc[owner].append(result.logprob)
    samples, confidences, hits = [], [], []
    for doc, logprobs in zip(docs, per_doc):
        choices, gold = task.choices(doc), task.gold(doc)
        best = max(range(len(logprobs)), key=lambda i: logprobs[i])
        best_norm = max(range(len(logprobs)), key=lambda i: logprobs[i] / max(1, len(choices[i])))
        top = max(logprobs)
        probs = [math.exp(lp - top) for lp in logprobs]
        confidence = probs[best] / sum(probs)
        confidences.append(confidence)
        hits.append(float(best == gold))
        samples.append(Sample(task=task.name, id=str(doc["id"]), prompt=task.context(doc),
                              target=gold, output=None, extracted=best,
                              scores={"acc": float(best == gold), "acc_norm": float(best_norm == gold)},
                              meta={"choices": choices, "logprobs": logprobs,
                                    "confidence": confidence}))
    return samples, {"ece": expected_calibration_error(confidences, hits)}


# ---------------------------------------------------------------- settings

def settings(config: EvalConfig, task_settings: dict[str, Any], backend: EvalBackend) -> dict[str, Any]:
    """The resolved settings: config, per-task prompts/generation, versions, machine."""
    return {"config": dataclasses.asdict(config), "tasks": task_settings,
            "versions": library_versions(), "python": platform.python_version(),
            "chat_template_sha256": backend.chat_template_hash(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _task_settings(task, config: EvalConfig, docs, backend: EvalBackend) -> dict[str, Any]:
    fingerprint = hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()
    entry: dict[str, Any] = {"num_fewshot": getattr(task, "num_fewshot", None), "items": len(docs),
                             "data_sha256": fingerprint, "chat_template": config.chat_template}
    if isinstance(task, GenerationTask) or hasattr(task, "sampling"):
        entry["generation"] = dataclasses.asdict(task_sampling(task, config))
        entry["responses_file"] = config.responses
    else:
        entry["scoring"] = "loglikelihood (acc, acc_norm by characters, ece over 10 bins)"
    return entry
