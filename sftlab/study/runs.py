"""Runs and evaluations a study reuses: each kept under a hash of what produced it.

A study asks for "a LoRA run of model M on these examples with seed s and these settings"
and for "the answers of that run (or of the base model) to these items". Both are stored
in the runs folder under a key that hashes exactly those inputs::

    <runs_dir>/train-<key>/      data.jsonl, train.yaml, the `sftlab train` run directory
                                 (run.json, metrics.jsonl, adapter/), done.json last
    <runs_dir>/eval-<key>.jsonl  one row per item: id, task, prompt, answer, response, correct

``done.json`` and the eval file are written last (atomically), so an interrupted study
redoes only the job that was cut off: a restarted study trains and generates nothing it
already has, whichever study asked for it first. Jobs run one at a time, in the caller's
order: each training run and each evaluation uses every core it is given.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from sftlab.config import load_config
from sftlab.data.io import read_rows, write_conversations
from sftlab.errors import ConfigError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train as finetune
from sftlab.types import Conversation, Message


@dataclass
class Benchmark:
    """What a study trains on and measures with.

    ``pool``: training conversations with unique ids; ``items``: evaluation rows with
    ``id``, ``task``, ``prompt`` and ``answer``; ``score(response, answer)`` -> 1.0 or 0.0.
    """

    name: str
    pool: list[Conversation]
    items: list[dict]
    score: Callable[[str, str], float]
    metric: str = "exact match"


def digest(*parts) -> str:
    """A short stable hash of JSON-able ``parts``.

    >>> digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_digest(conversations: Sequence[Conversation]) -> str:
    """Hash of the examples' ids and contents, in order (order changes packing and batches)."""
    return digest([[c.id, [(m.role, m.content) for m in c.messages]] for c in conversations])


def model_fingerprint(model_path: str) -> str:
    """The model's name, or for a directory its files' names and sizes (a retrained model
    in the same place gets a new key)."""
    path = Path(model_path)
    if not path.is_dir():
        return model_path
    return digest(sorted((f.name, f.stat().st_size) for f in path.rglob("*") if f.is_file()))


class RunStore:
    """Training runs and evaluations under ``root``, reused by key (see the module docstring)."""

    def __init__(self, root: Path, model_path: str, settings: dict) -> None:
        self.root, self.model_path, self.settings = Path(root), model_path, settings
        self.fingerprint = model_fingerprint(model_path)
        self.trained = self.reused = 0

    def claim(self) -> None:
        """Hold the runs folder for this process (``.lock`` holds its pid): two studies on one
        folder at once would train the same runs twice and share the cores. A lock whose
        process has ended is taken over; ``release`` gives it back."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".lock"
        if lock.exists():
            holder = int(lock.read_text() or 0)
            if holder != os.getpid() and _alive(holder):
                raise ConfigError(f"runs_dir: {self.root} is in use by another study (process {holder}); "
                                  "wait for it to finish, or give this study another runs_dir")
        write_text(lock, str(os.getpid()))

    def release(self) -> None:
        (self.root / ".lock").unlink(missing_ok=True)

    def train_key(self, conversations: Sequence[Conversation], seed: int) -> str:
        return digest("train", self.fingerprint, data_digest(conversations), seed, self.settings["train"])

    def train(self, conversations: Sequence[Conversation], seed: int) -> dict:
        """The finished run for these examples and seed: trained now, or found by its key.

        -> ``done.json``'s content: ``{"key", "run_dir", "adapter", "examples", "steps",
        "final_loss", "trained_tokens"}`` (trained tokens summed over every step)."""
        key = self.train_key(conversations, seed)
        run_dir = self.root / f"train-{key}"
        done = run_dir / "done.json"
        if done.exists():
            self.reused += 1
            print(f"      reusing run {run_dir.name} ({len(conversations)} examples, seed {seed})", flush=True)
            return json.loads(done.read_text())
        print(f"      training {run_dir.name} on {len(conversations)} examples, seed {seed}", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_conversations(conversations, run_dir / "data.jsonl")
        config_path = run_dir / "train.yaml"
        config_path.write_text(yaml.safe_dump(self._train_yaml(run_dir, seed), sort_keys=False))
        result = finetune(load_config(TrainConfig, config_path))
        self.trained += 1
        info = {"key": key, "run_dir": str(run_dir), "adapter": str(result.saved_to), "examples": len(conversations),
                "seed": seed, "steps": result.steps, "final_loss": result.final_loss,
                "trained_tokens": sum(int(r.get("labelled_tokens", 0)) for r in result.history)}
        write_json(done, info)
        return info

    def _train_yaml(self, run_dir: Path, seed: int) -> dict:
        """The YAML a user would write for ``sftlab train`` (kept beside the run: rerunnable)."""
        t = self.settings["train"]
        return {
            "model": {"name": self.model_path},
            "data": {"paths": [str(run_dir / "data.jsonl")], "format": "canonical",
                     "max_length": t["max_length"], "packing": True},
            "method": {"name": "lora", "lora": {"rank": t["lora_rank"], "alpha": 2 * t["lora_rank"]}},
            "optim": {"name": "adamw", "lr": t["lr"], "schedule": "cosine", "warmup_ratio": 0.1},
            "batch_size": t["batch_size"], "epochs": t["epochs"], "max_steps": t["max_steps"],
            "seed": seed, "threads": t["threads"], "output_dir": str(run_dir / "train"),
        }

    def evaluate(self, benchmark: Benchmark, run: dict | None) -> list[dict]:
        """Per-item answers and scores of ``run`` (None: the untuned model), cached by key."""
        key = digest("eval", self.fingerprint, run["key"] if run else "base", benchmark.items,
                     self.settings["eval"])
        path = self.root / f"eval-{key}.jsonl"
        if path.exists():
            self.reused += 1
            return read_rows(path)
        what = f"run {Path(run['run_dir']).name}" if run else "the untuned model"
        print(f"      evaluating {what} on {len(benchmark.items)} items", flush=True)
        responses = generate_answers(self.model_path, run["adapter"] if run else None, benchmark.items,
                                     **self.settings["eval"])
        rows = [{**item, "response": text, "correct": float(benchmark.score(text, item["answer"]))}
                for item, text in zip(benchmark.items, responses)]
        write_jsonl(path, rows)
        return rows


def generate_answers(model_path: str, adapter: str | None, items: Sequence[dict], *, max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Greedy answers to each item's prompt, sent as one user turn (the chat template applies)."""
    generator = HFGenerator.from_name(model_path, adapter=adapter, batch_size=batch_size)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    prompts = [[Message("user", item["prompt"])] for item in items]
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out += [g.text for g in generator.generate(prompts[start:start + batch_size], sampling)]
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


# -- files ----------------------------------------------------------------------------------

def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_text(path: Path, text: str) -> None:
    """Write atomically: an interrupted study never leaves a half-written file to reuse."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
