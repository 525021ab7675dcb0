"""What every synthesis pipeline shares: the registry, the teacher, provenance, the report.

A pipeline is a function ``run(config) -> SynthReport`` registered in ``PIPELINES``; its
config dataclass carries a ``teacher`` section and ``output``/``seed``. Every record it
writes carries provenance: pipeline, teacher model, prompt template version, seed, round.
Prompt files are read by ``sftlab.data.prompts.read_prompts``, the reader ``sftlab
generate`` and eval use: the same file gives the same prompts and ids everywhere. Records
are keyed by ``resume_ids``, not by the ``<file stem>-<index>`` a row without an ``id``
gets there: a prompt file reordered, prepended to or renamed resumes without answering a
prompt twice.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sftlab.data.formats import record_id
from sftlab.data.io import file_stem
from sftlab.data.prompts import PromptRow
from sftlab.infer.backends import generator_for, resolve_backend
from sftlab.registry import Registry
from sftlab.synth.client import GeneratorTeacher, HTTPTeacher, Teacher, TeacherConfig
from sftlab.synth.store import stable_id

# name -> (config class, run function)
PIPELINES: Registry = Registry("synthesis pipeline")


def pipeline(name: str, config_class: type) -> Callable:
    def add(run: Callable) -> Callable:
        PIPELINES.register(name)((config_class, run))
        return run

    return add


def make_teacher(config: TeacherConfig) -> Teacher:
    """``base_url: local`` runs ``model`` in-process (``tiny``, ``default`` or a path) on
    ``config.backend``; anything else is an OpenAI-compatible endpoint."""
    if config.base_url == "local":
        config.backend = resolve_backend(config.backend, config.model)
        return GeneratorTeacher(generator_for(config.model, backend=config.backend), config.model, config.cache_dir)
    return HTTPTeacher(config)


def provenance(pipeline_name: str, teacher: Teacher, template_version: str, seed: int,
               round_index: int) -> dict[str, Any]:
    return {"pipeline": pipeline_name, "teacher": teacher.model,
            "template_version": template_version, "seed": seed, "round": round_index}


def prompt_key(prompt: PromptRow) -> str | list[dict[str, str]]:
    """What a record id is derived from for ``prompt``: the text of a one-turn prompt (so
    records written from such prompts keep their ids), else every turn."""
    if len(prompt.messages) == 1:
        return prompt.text
    return [message.to_dict() for message in prompt.messages]


def resume_ids(prompts: list[PromptRow], path: str | Path) -> list[str]:
    """The id each prompt's records are keyed by: the row's own ``id``; else a hash of its
    messages (``content_ids``). Not ``<file stem>-<index>``, which moves when a line is added
    above or the file is renamed, and would make a rerun answer every prompt again."""
    return content_ids([(None if record_id(p.row) is None else p.id, [m.to_dict() for m in p.messages])
                        for p in prompts])


def content_ids(items: list[tuple[str | None, Any]]) -> list[str]:
    """``(own id or None, content)`` per item -> its own id, else a short hash of its content,
    with ``-<k>`` for the k-th repeat of that content (two identical prompts stay two rows).

    >>> content_ids([("q1", "Hi"), (None, "Hi"), (None, "Hi")])
    ['q1', '9beb2e7fedb5', '9beb2e7fedb5-1']
    """
    ids, seen = [], Counter()
    for own, content in items:
        if own is not None:
            ids.append(own)
            continue
        digest = stable_id("content", content)[:12]
        ids.append(f"{digest}-{seen[digest]}" if seen[digest] else digest)
        seen[digest] += 1
    return ids


def has_default_id(item_id: str, path: str | Path) -> bool:
    """Whether ``item_id`` is the ``<file stem>-<index>[-<k>]`` that ``read_conversations``
    gives a row of ``path`` without its own ``id`` (for conversations, which do not keep
    their row; a prompt's own id is ``record_id(prompt.row)``)."""
    return re.fullmatch(re.escape(file_stem(Path(path))) + r"-\d+(-\d+)?", item_id) is not None


@dataclass
class SynthReport:
    """What a run produced and what it threw away, and why (saved as ``<output>.report.json``)."""

    pipeline: str
    written: int = 0
    total: int = 0
    requests: int = 0
    rejected: Counter = field(default_factory=Counter)
    refused: int = 0  # teacher replies without content (refusals): also among the rejected, as empty
    extra: dict[str, Any] = field(default_factory=dict)

    def count_refusals(self, teacher: Teacher) -> None:
        """Add the refusals ``teacher`` gave up on (HTTP teachers count them; others never refuse)."""
        self.refused += getattr(teacher, "refusals", 0)

    def save(self, output: str | Path, config: Any) -> Path:
        path = Path(f"{output}.report.json")
        data = asdict(self)
        data["rejected"] = dict(self.rejected.most_common())
        data["config"] = asdict(config)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in self.rejected.most_common()) or "none"
        refused = f"; teacher refusals: {self.refused}" if self.refused else ""
        return (f"{self.pipeline}: wrote {self.written} new records ({self.total} in the file) "
                f"from {self.requests} teacher requests; rejected: {reasons}{refused}")
