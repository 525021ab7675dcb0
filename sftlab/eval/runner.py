"""The evaluation runner: tasks x model -> ``results.json``, ``samples.jsonl``, ``settings.json``.

    config = EvalConfig(model="tiny", tasks=["gsm8k"], data_dir="../shared/data", limit=3)
    results = evaluate(config)        # also writes the three files when output_dir is set
    print(format_table(results))

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
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.errors import ConfigError, DataError
from sftlab.eval.base import TASKS, GenerationTask, LoglikelihoodTask, Sample, data_path_for
from sftlab.eval.metrics import bootstrap_ci, expected_calibration_error, mean
from sftlab.infer.base import SamplingConfig
from sftlab.types import Message


@dataclass
class EvalConfig:
    """What ``sftlab eval`` runs; every field is saved in ``settings.json``."""

    model: str = "tiny"
    """Model name or directory (``tiny``, ``default``, a HF directory); with ``base_url``,
    ignored for generation (the served model answers)."""
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])
    """Task names; ``NAME=PATH`` gives one task its own data file or folder."""
    output_dir: str | None = None
    limit: int | None = None
    """Evaluate only the first N items (of each subtask)."""
    num_fewshot: int | None = None
    """Override the tasks' few-shot count (tasks without few-shot ignore it)."""
    chat_template: str = "auto"
    """``auto``: prompts as the task writes them; ``on``: text prompts become one user
    message (chat template applied); ``off``: message prompts are sent as plain text."""
    batch_size: int = 8
    adapter: str | None = None
    responses: str | None = None
    """Score precomputed responses (JSON/JSONL with ``id`` or ``prompt`` and ``response``/``output``)."""
    data_dir: str | None = None
    base_url: str | None = None
    api_model: str | None = None
    max_new_tokens: int | None = None
    """Override the tasks' generation length."""
    seed: int = 1234
    """Seeds sampling (if any) and the bootstrap."""
    bootstrap_resamples: int = 1000
    dtype: str = "float32"
    device: str = "cpu"


def evaluate(config: EvalConfig, *, generator=None, model=None, tokenizer=None,
             progress: bool = True) -> dict[str, Any]:
    """Run every task of ``config``; write the files when ``config.output_dir`` is set.

    ``generator`` / ``model`` + ``tokenizer`` may be passed in (tests, the quickstart);
    otherwise they are loaded from ``config`` when a task needs them.
    """
    _check(config)
    backend = _Backend(config, generator, model, tokenizer)
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
        summary = summarize(task, samples, config)
        summary["extra"].update(extra)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        results["tasks"][name] = summary
        all_samples += samples
        task_settings[name] = _task_settings(task, config, docs, backend)
    results["settings"] = settings(config, task_settings, backend)
    if config.output_dir:
        write_outputs(Path(config.output_dir), results, all_samples)
    return results


def _check(config: EvalConfig) -> None:
    if config.chat_template not in ("auto", "on", "off"):
        raise ConfigError(f"--chat-template must be on, off or auto, not '{config.chat_template}'")
    if bool(config.base_url) != bool(config.api_model):
        raise ConfigError("--base-url and --api-model go together")


def parse_task_spec(spec: str) -> tuple[str, str | None]:
    """``"mc=items.jsonl"`` -> ``("mc", "items.jsonl")``; ``"gsm8k"`` -> ``("gsm8k", None)``."""
    name, _, path = spec.partition("=")
    return name.strip(), (path.strip() or None)


def build_task(name: str, config: EvalConfig):
    """Look a task up (importing the modules that register tasks) and apply overrides."""
    _import_task_modules()
    entry = TASKS.get(name)
    task = entry() if isinstance(entry, type) else entry
    if config.num_fewshot is not None and getattr(task, "num_fewshot", None) is not None:
        task.num_fewshot = config.num_fewshot
    return task


def _import_task_modules() -> None:
    import importlib

    for module in ("sftlab.eval.tasks", "sftlab.eval.tasks_ifeval", "sftlab.eval.humaneval"):
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

def run_generation_task(task: GenerationTask, docs, backend: "_Backend", config: EvalConfig,
                        progress: bool) -> tuple[list[Sample], dict[str, Any]]:
    """Prompt, generate (or look up responses), extract and score every doc."""
    sampling = task_sampling(task, config)
    prompts, shots = [], []
    for doc in docs:
        prompt, used = fit_prompt(task, doc, config, backend, sampling.max_new_tokens)
        prompts.append(prompt)
        shots.append(used)
    if config.responses:
        outputs = match_responses(docs, prompts, read_responses(config.responses))
        meta = [{} for _ in docs]
    else:
        generations = _generate_in_chunks(backend.generator(), prompts, sampling, config.batch_size,
                                          progress, task.name)
        outputs = [g.text for g in generations]
        meta = [{"finish_reason": g.finish_reason, "completion_tokens": g.completion_tokens}
                for g in generations]
    samples = []
    for doc, prompt, output, extra, used in zip(docs, prompts, outputs, meta, shots):
        extracted, scores = task.score(doc, output)
        if doc.get("subtask"):
            extra = {**extra, "subtask": doc["subtask"]}
        if used != getattr(task, "num_fewshot", None):
            extra = {**extra, "num_fewshot": used}
        samples.append(Sample(task=task.name, id=str(doc["id"]), prompt=backend.render(prompt),
                              target=doc.get("target"), output=output, extracted=extracted,
                              scores=scores, meta=extra))
    reduced = sum(used != getattr(task, "num_fewshot", None) for used in shots)
    return samples, ({"items_with_fewer_shots": reduced} if reduced else {})


def fit_prompt(task, doc, config: EvalConfig, backend: "_Backend", max_new_tokens: int):
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
    if config.max_new_tokens is not None:
        sampling = dataclasses.replace(sampling, max_new_tokens=config.max_new_tokens)
    return sampling


def _generate_in_chunks(generator, prompts, sampling, batch_size, progress, label):
    """Generate in chunks of a few batches so the progress bar moves."""
    from tqdm import tqdm

    chunk = max(1, batch_size) * 4
    outputs = []
    with tqdm(total=len(prompts), desc=f"{label}: generate", unit="item", disable=not progress) as bar:
        for start in range(0, len(prompts), chunk):
            outputs += generator.generate(prompts[start:start + chunk], sampling)
            bar.update(len(prompts[start:start + chunk]))
    return outputs


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON list or JSONL file; each needs a ``response`` (or ``output``/``text``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("responses file not found", file=str(path))
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(rows):
        response = next((row[k] for k in ("response", "output", "text", "completion") if k in row), None)
        if not isinstance(response, str):
            raise DataError("no 'response' string", file=str(path), index=i, field="response")
        row["response"] = response
    return rows


def match_responses(docs, prompts, rows) -> list[str]:
    """Pair each doc with a response: by ``id``, else by prompt text, else by position."""
    by_id = {str(r["id"]): r["response"] for r in rows if "id" in r}
    by_prompt = {r["prompt"]: r["response"] for r in rows if isinstance(r.get("prompt"), str)}
    outputs = []
    for index, (doc, prompt) in enumerate(zip(docs, prompts)):
        text = prompt if isinstance(prompt, str) else (prompt[-1].content if prompt else "")
        if str(doc["id"]) in by_id:
            outputs.append(by_id[str(doc["id"])])
        elif text in by_prompt:
            outputs.append(by_prompt[text])
        elif not by_id and not by_prompt and index < len(rows):
            outputs.append(rows[index]["response"])
        else:
            raise DataError(f"no response for item '{doc['id']}'",
                            hint="give each row the item's 'id' or its 'prompt' text")
    return outputs


# ---------------------------------------------------------------- log-likelihood tasks

def run_loglikelihood_task(task: LoglikelihoodTask, docs, backend: "_Backend", config: EvalConfig,
                           progress: bool) -> tuple[list[Sample], dict[str, Any]]:
    """acc (highest summed log-prob), acc_norm (highest log-prob per character of the
    choice, as lm-eval), and the ECE of the softmax over choices."""
    import math

    from sftlab.eval.loglik import loglikelihoods

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


# ---------------------------------------------------------------- summaries and files

def summarize(task, samples: list[Sample], config: EvalConfig) -> dict[str, Any]:
    """Per metric: mean, bootstrap 95% interval, stderr, n; per subtask and macro average."""
    metrics = _intervals(samples, config)
    summary: dict[str, Any] = {"metrics": metrics, "subtasks": {}, "extra": {}}
    subtasks = sorted({s.meta.get("subtask") for s in samples if s.meta.get("subtask")})
    for subtask in subtasks:
        summary["subtasks"][subtask] = _intervals([s for s in samples if s.meta.get("subtask") == subtask],
                                                  config)
    if subtasks:
        for metric in metrics:
            summary["extra"][f"{metric}_macro"] = mean(
                [summary["subtasks"][t][metric]["mean"] for t in subtasks])
    # a task's own aggregate wins where it is not the plain mean (IFEval's instruction-level
    # accuracy pools instructions over prompts); its interval is a bootstrap of that aggregate
    aggregated = task.aggregate(samples) if hasattr(task, "aggregate") else {}
    pooled = [k for k, v in aggregated.items() if k in metrics and abs(v - metrics[k]["mean"]) > 1e-9]
    if pooled:
        metrics.update(_bootstrap_aggregate(task, samples, pooled, aggregated, config))
    for key, value in aggregated.items():
        if key not in metrics:
            summary["extra"][key] = value
    return summary


def _bootstrap_aggregate(task, samples, keys, point, config: EvalConfig) -> dict[str, dict[str, float]]:
    """Percentile bootstrap of ``task.aggregate`` itself over resampled items (seeded)."""
    import numpy as np

    rng = np.random.default_rng(config.seed)
    draws = {key: [] for key in keys}
    for _ in range(config.bootstrap_resamples):
        picked = [samples[i] for i in rng.integers(0, len(samples), len(samples))]
        values = task.aggregate(picked)
        for key in keys:
            draws[key].append(values[key])
    return {key: {"mean": float(point[key]), "low": float(np.quantile(draws[key], 0.025)),
                  "high": float(np.quantile(draws[key], 0.975)), "stderr": float(np.std(draws[key], ddof=1)),
                  "n": len(samples), "aggregate": "task"} for key in keys}


def _intervals(samples: list[Sample], config: EvalConfig) -> dict[str, dict[str, float]]:
    values: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in sample.scores.items():
            values.setdefault(key, []).append(float(value))
    return {key: bootstrap_ci(v, seed=config.seed, resamples=config.bootstrap_resamples)
            for key, v in values.items()}


def settings(config: EvalConfig, task_settings: dict[str, Any], backend: "_Backend") -> dict[str, Any]:
    """The resolved settings: config, per-task prompts/generation, versions, machine."""
    return {"config": dataclasses.asdict(config), "tasks": task_settings,
            "versions": library_versions(), "python": platform.python_version(),
            "chat_template_sha256": backend.chat_template_hash(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _task_settings(task, config: EvalConfig, docs, backend: "_Backend") -> dict[str, Any]:
    fingerprint = hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()
    entry: dict[str, Any] = {"num_fewshot": getattr(task, "num_fewshot", None), "items": len(docs),
                             "data_sha256": fingerprint, "chat_template": config.chat_template}
    if isinstance(task, GenerationTask) or hasattr(task, "sampling"):
        entry["generation"] = dataclasses.asdict(task_sampling(task, config))
        entry["responses_file"] = config.responses
    else:
        entry["scoring"] = "loglikelihood (acc, acc_norm by characters, ece over 10 bins)"
    return entry


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("sftlab", "torch", "transformers", "peft", "tokenizers", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_outputs(out: Path, results: dict[str, Any], samples: list[Sample]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "settings.json").write_text(json.dumps(results["settings"], indent=2, default=str),
                                       encoding="utf-8")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(dataclasses.asdict(sample), ensure_ascii=False, default=str) + "\n")


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table: task, metric, value, 95% interval, n (values in percent)."""
    lines = [f"{'task':<28} {'metric':<24} {'value':>7}  {'95% CI':<17} {'n':>5}"]
    for task, summary in results["tasks"].items():
        for metric, s in summary["metrics"].items():
            lines.append(f"{task:<28} {metric:<24} {100 * s['mean']:>7.2f}  "
                         f"[{100 * s['low']:6.2f}, {100 * s['high']:6.2f}] {s['n']:>5}")
        for key, value in summary["extra"].items():
            if isinstance(value, (int, float)):
                lines.append(f"{task:<28} {key:<24} {100 * value:>7.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- model access

class _Backend:
    """Loads the model, tokenizer or remote generator once, when a task first needs it."""

    def __init__(self, config: EvalConfig, generator=None, model=None, tokenizer=None) -> None:
        self.config = config
        self._generator, self._model, self._tokenizer = generator, model, tokenizer

    def local_model(self):
        if self._model is None:
            # log-likelihood tasks read the model's logits: they always run locally
            from sftlab.models import load_model

            self._model = load_model(self.config.model, adapter=self.config.adapter,
                                     dtype=self.config.dtype, device=self.config.device).eval()
        return self._model, self.tokenizer()

    def tokenizer(self):
        if self._tokenizer is None:
            from sftlab.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model, adapter=self.config.adapter)
        return self._tokenizer

    def generator(self):
        if self._generator is None:
            if self.config.base_url:
                from sftlab.eval.remote import OpenAIGenerator

                self._generator = OpenAIGenerator(self.config.base_url, self.config.api_model)
            else:
                from sftlab.infer.hf import HFGenerator

                model, tokenizer = self.local_model()
                self._generator = HFGenerator(model, tokenizer, batch_size=self.config.batch_size,
                                              name=self.config.model)
        return self._generator

    def render(self, prompt) -> Any:
        """The prompt as the model sees it: chat-templated text when we hold the tokenizer,
        else the messages themselves (a remote server applies its own template)."""
        if isinstance(prompt, str):
            return prompt
        messages = [m.to_dict() for m in prompt]
        tokenizer = self._tokenizer if self.config.responses is None else None
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return messages

    def context_length(self) -> int | None:
        """The local model's context in tokens; None for a remote model."""
        if self.config.base_url or (self._model is None and self._generator is not None):
            return None
        model, _ = self.local_model()
        return getattr(model.config, "max_position_embeddings", None)

    def count_tokens(self, prompt) -> int:
        from sftlab.infer.hf import prompt_to_ids

        return len(prompt_to_ids(self.tokenizer(), prompt))

    def chat_template_hash(self) -> str | None:
        template = getattr(self._tokenizer, "chat_template", None)
        return hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None
