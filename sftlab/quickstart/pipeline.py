"""The quickstart, end to end: build data -> evaluate -> LoRA-tune -> evaluate -> report.

It shows the survey's core claim on a laptop CPU: instruction tuning on template-integrated
data (Flan style) makes SmolLM2-135M-Instruct follow instructions it did not follow
before, measured on held-out instances phrased through held-out templates, plus whole
tasks it never trained on (reported whatever they show).

Every output lands in one run directory whose path is printed first; files are written
atomically, so Ctrl-C leaves nothing half-written. The converted model, the built data
and the "before" evaluation are cached, so a second run skips them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from sftlab.config import load_config
from sftlab.data.io import read_rows
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.models import resolve_model
from sftlab.quickstart import data as qdata
from sftlab.quickstart.config import QuickstartConfig
from sftlab.quickstart.report import summarize, write_report
from sftlab.quickstart.tasks import exact_match, normalize_answer
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train
from sftlab.types import Message

STAGES = 5


@dataclass
class QuickstartResult:
    run_dir: Path
    summary: dict
    report: Path


def open_run_dir(config: QuickstartConfig, name: str = "quickstart") -> Path:
    """The run directory (``output_dir``, else ``runs/<name>-<date>-<time>``), created and
    printed first, with ``quickstart_config.json`` in it; sets torch's threads."""
    run_dir = Path(config.output_dir or time.strftime(f"runs/{name}-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {run_dir}", flush=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    _write_json(run_dir / "quickstart_config.json", asdict(config))
    return run_dir


def run_quickstart(config: QuickstartConfig) -> QuickstartResult:
    run_dir = open_run_dir(config)
    timings: dict[str, float] = {}

    with _stage(1, "building instruction data from task templates", timings, "data"):
        built = _cached_data(config)
        qdata.save(built, run_dir / "data")
        print(f"      {len(built.train)} training conversations, {len(built.eval)} held-out eval items")

    with _stage(2, f"evaluating the base model ({config.model}) on held-out items", timings, "before"):
        model_path = _resolve(config.model)
        before = _cached_eval(config, model_path, built, run_dir)

    with _stage(3, "LoRA fine-tuning through `sftlab train`", timings, "train"):
        train_result = _train(config, model_path, run_dir)

    with _stage(4, "evaluating the tuned model on the same items", timings, "after"):
        after = evaluate(model_path, built.eval, config, adapter=train_result.saved_to)
        _write_jsonl(run_dir / "eval_after.jsonl", after)

    with _stage(5, "writing the report", timings, "report"):
        summary = summarize(before, after, config, timings)
        check = train_result.output_dir / "check.json"  # `sftlab check` on the saved result
        summary["train"] = {"steps": train_result.steps, "final_loss": train_result.final_loss,
                            "run": str(train_result.output_dir),
                            "check_ok": json.loads(check.read_text())["ok"] if check.exists() else None}
        _write_json(run_dir / "summary.json", summary)
        report = write_report(run_dir, built, before, after, summary, model_path)
    print_summary(summary, report)
    return QuickstartResult(run_dir, summary, report)


# -- stages ---------------------------------------------------------------------------------

@contextmanager
def _stage(index: int, what: str, timings: dict, key: str, total: int = STAGES):
    """Print ``[index/total] what``, time the block into ``timings[key]``, print its time."""
    print(f"[{index}/{total}] {what} ...", flush=True)
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 1)
    print(f"      done in {timings[key]:.1f} s", flush=True)


def _resolve(model: str) -> str:
    return resolve_model(model)  # converts `default` from GGUF once, with a message


def _cache_dir() -> Path:
    base = os.environ.get("SFTLAB_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "sftlab") / "quickstart"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached_data(config: QuickstartConfig) -> qdata.QuickstartData:
    directory = _cache_dir() / f"data-{_key(config.seed, config.train_per_task, config.eval_per_task)}"
    if (directory / "eval.jsonl").exists():
        print(f"      reusing built data from {directory}")
        return qdata.load(directory)
    built = qdata.build(config.seed, config.train_per_task, config.eval_per_task)
    _atomic_dir(directory, lambda tmp: qdata.save(built, tmp))
    return built


def _cached_eval(config: QuickstartConfig, model_path: str, built: qdata.QuickstartData, run_dir: Path) -> list[dict]:
    """The base model's answers depend only on the model, the items and the decoding settings."""
    key = _key(_model_fingerprint(model_path), [i.__dict__ for i in built.eval], config.max_new_tokens)
    cached = _cache_dir() / f"eval-before-{key}.jsonl"
    if cached.exists():
        print(f"      reusing the base model's answers from {cached}")
        rows = read_rows(cached)
    else:
        rows = evaluate(model_path, built.eval, config)
        _write_jsonl(cached, rows)
    _write_jsonl(run_dir / "eval_before.jsonl", rows)
    return rows


def _model_fingerprint(model_path: str) -> str:
    path = Path(model_path)
    if not path.is_dir():
        return model_path
    return _key(sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir() if f.is_file()))


def evaluate(model_path: str, items: list[qdata.EvalItem], config: QuickstartConfig, adapter=None) -> list[dict]:
    """Greedy answers for every item, scored by exact match (and 'contains' as a looser view)."""
    generator = HFGenerator.from_name(model_path, adapter=adapter, batch_size=config.eval_batch_size)
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=0.0)
    prompts = [[Message("user", item.prompt)] for item in items]
    outputs = []
    for start in _progress(range(0, len(prompts), config.eval_batch_size), len(prompts), config.eval_batch_size):
        outputs += generator.generate(prompts[start:start + config.eval_batch_size], sampling)
    return [{**item.__dict__, "response": out.text, "correct": float(exact_match(out.text, item.answer)),
             "contains": float(normalize_answer(item.answer).lower() in normalize_answer(out.text).lower())}
            for item, out in zip(items, outputs)]


def _progress(iterable, total_items: int, step: int):
    return tqdm(iterable, total=(total_items + step - 1) // step, desc="      generating", unit="batch")


def _train(config: QuickstartConfig, model_path: str, run_dir: Path):
    """Write the YAML a user would write, then run it through the normal `sftlab train` path."""
    train_yaml = {
        "model": {"name": model_path},
        "data": {"paths": [str(run_dir / "data" / "train.jsonl")], "format": "canonical",
                 "max_length": config.max_length, "packing": True},
        "method": {"name": "lora", "lora": {"rank": config.lora_rank, "alpha": 2 * config.lora_rank}},
        "optim": {"name": "adamw", "lr": config.lr, "schedule": "cosine", "warmup_ratio": 0.1},
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "max_steps": 3 if config.fast else 0,
        "seed": config.seed,
        "threads": config.threads,
        "output_dir": str(run_dir / "train"),
    }
    path = run_dir / "train.yaml"
    path.write_text(yaml.safe_dump(train_yaml, sort_keys=False))
    print(f"      config: {path}  (rerun it with: sftlab train {path})")
    return train(load_config(TrainConfig, path))


def print_summary(summary: dict, report: Path) -> None:
    print("\nexact match on held-out items (95% interval):")
    for group, row in summary["groups"].items():
        b, a = row["before"], row["after"]
        print(f"  {group:28s} before {100 * b['mean']:5.1f}% [{100 * b['low']:.0f}-{100 * b['high']:.0f}]"
              f"   after {100 * a['mean']:5.1f}% [{100 * a['low']:.0f}-{100 * a['high']:.0f}]   (n={b['n']})")
    print(f"\nreport: {report}")


# -- files ----------------------------------------------------------------------------------

def _atomic_dir(directory: Path, fill) -> None:
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def _write_json(path: Path, data) -> None:
    _atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
