"""What every synthesis pipeline shares: the registry, the teacher, provenance, the report.

A pipeline is a function ``run(config) -> SynthReport`` registered in ``PIPELINES``; its
config dataclass carries a ``teacher`` section and ``output``/``seed``. Every record it
writes carries provenance: pipeline, teacher model, prompt template version, seed, round.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sftlab.data.synth.client import GeneratorTeacher, HTTPTeacher, Teacher, TeacherConfig
from sftlab.registry import Registry

# name -> (config class, run function)
PIPELINES: Registry = Registry("synthesis pipeline")


def pipeline(name: str, config_class: type) -> Callable:
    def add(run: Callable) -> Callable:
        PIPELINES.register(name)((config_class, run))
        return run

    return add


def make_teacher(config: TeacherConfig) -> Teacher:
    """``base_url: local`` runs ``model`` in-process (``tiny``, ``default`` or a path);
    anything else is an OpenAI-compatible endpoint."""
    if config.base_url == "local":
        from sftlab.infer.hf import HFGenerator
        from sftlab.models import load_model, load_tokenizer

        generator = HFGenerator(load_model(config.model), load_tokenizer(config.model))
        return GeneratorTeacher(generator, config.model, config.cache_dir)
    return HTTPTeacher(config)


def provenance(pipeline_name: str, teacher: Teacher, template_version: str, seed: int,
               round_index: int) -> dict[str, Any]:
    return {"pipeline": pipeline_name, "teacher": teacher.model,
            "template_version": template_version, "seed": seed, "round": round_index}


@dataclass
class SynthReport:
    """What a run produced and what it threw away, and why (saved as ``<output>.report.json``)."""

    pipeline: str
    written: int = 0
    total: int = 0
    requests: int = 0
    rejected: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, output: str | Path, config: Any) -> Path:
        path = Path(f"{output}.report.json")
        data = asdict(self)
        data["rejected"] = dict(self.rejected.most_common())
        data["config"] = asdict(config)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in self.rejected.most_common()) or "none"
        return (f"{self.pipeline}: wrote {self.written} new records ({self.total} in the file) "
                f"from {self.requests} teacher requests; rejected: {reasons}")


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompts to synthesise from, one per row of a JSON list or JSONL file: rows with
    ``instruction`` (+ ``input``) as in Alpaca, ``prompt``, or ``messages`` (the last user
    turn is the prompt). Returns ``{"id", "prompt"}`` dicts; ids default to the row index.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.jsonl")
    >>> _ = open(p, "w").write('{"instruction": "Add", "input": "2 and 3"}\\n')
    >>> read_prompts(p)
    [{'id': 'x-0', 'prompt': 'Add\\n\\n2 and 3'}]
    """
    from sftlab.errors import DataError

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if text.lstrip().startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    prompts = []
    for index, row in enumerate(rows):
        if "instruction" in row:
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        elif "prompt" in row:
            prompt = row["prompt"]
        elif "messages" in row:
            users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
            prompt = users[-1] if users else ""
        else:
            raise DataError("no prompt in this row", file=str(path), index=index, field="instruction",
                            hint="give each row an 'instruction', 'prompt' or 'messages' field")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("empty prompt", file=str(path), index=index, field="instruction",
                            hint="remove the row or fill in its instruction")
        prompts.append({"id": str(row.get("id", f"{path.stem.split('.')[0]}-{index}")), "prompt": prompt})
    return prompts
