"""PromptSource (P3) templates: load ``templates.yaml`` safely and apply it to rows.

A PromptSource file (bigscience-workshop/promptsource, ``templates/<dataset>/templates.yaml``)
holds Jinja templates whose output is ``input ||| target``::

    dataset: ag_news
    templates:
      24e44a81-...: !Template
        answer_choices: World politics ||| Sports ||| Business ||| Science and technology
        id: 24e44a81-...
        jinja: "What label best describes this news article?\\n{{text}} ||| {{answer_choices[label]}}"
        metadata: !TemplateMetadata {choices_in_prompt: false, metrics: [Accuracy], original_task: true}
        name: classify_question_first

The ``!Template`` / ``!TemplateMetadata`` tags are read as plain mappings by a SafeLoader
subclass, so a file cannot construct arbitrary Python objects; any other tag is an error.
Templates render in a sandboxed Jinja environment with PromptSource's extras: the
``choice`` filter (seeded here, so rendering is reproducible), ``highlight`` and ``zip``.

>>> templates = load_templates(shared_data / "promptsource/ag_news/templates.yaml")
>>> templates[0].apply({"text": "Stocks rose.", "label": 2})
Rendered(input='What label best describes this news article?\\nStocks rose.', target='Business', ...)
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from jinja2 import StrictUndefined, TemplateError, pass_context
from jinja2.sandbox import SandboxedEnvironment

from sftlab.errors import DataError
from sftlab.types import Conversation, Message

# The separator between the input and the target (and between answer choices).
SEPARATOR = "|||"
# A "|||" inside a data value must not split the rendered text; it is swapped out and back.
_PROTECT = "\x00PIPES\x00"


@dataclass
class PromptTemplate:
    """One PromptSource template; ``metadata`` keeps choices_in_prompt, metrics, original_task."""

    id: str
    name: str
    jinja: str
    answer_choices: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    dataset: str | None = None
    subset: str | None = None

    def apply(self, row: dict[str, Any], seed: int | str = 0) -> "Rendered":
        """Render on one row: the input, the target and the answer choices (a list or None)."""
        rng = random.Random(f"{seed}:{self.id}")
        example = _protect(row)
        choices = self.render_answer_choices(example, rng)
        text = _render(self.jinja, {**example, "answer_choices": choices}, rng, self.name)
        parts = [_unprotect(part).strip() for part in text.split(SEPARATOR)]
        return Rendered(
            input=parts[0],
            target=parts[1] if len(parts) > 1 else "",
            answer_choices=[_unprotect(c) for c in choices] if choices is not None else None,
        )

    def render_answer_choices(self, row: dict[str, Any], rng: random.Random) -> list[str] | None:
        """``answer_choices`` is itself a template (``{{choices.text | join("|||")}}``)."""
        if not self.answer_choices:
            return None
        text = _render(self.answer_choices, row, rng, f"{self.name} answer_choices")
        return [choice.strip() for choice in text.split(SEPARATOR)]


@dataclass
class Rendered:
    input: str
    target: str
    answer_choices: list[str] | None = None


# -- loading -------------------------------------------------------------------------------


class _TemplateLoader(yaml.SafeLoader):
    """SafeLoader that reads PromptSource's two custom tags as plain mappings."""


def _as_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


for _tag in ("!Template", "!TemplateMetadata"):
    _TemplateLoader.add_constructor(_tag, _as_mapping)


def load_templates(path: str | Path) -> list[PromptTemplate]:
    """All templates of one ``templates.yaml``, in file order."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)  # noqa: S506 (safe subclass)
    except yaml.YAMLError as exc:
        raise DataError(f"not a PromptSource template file: {exc}", file=str(path)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise DataError("no 'templates' mapping", file=str(path), field="templates",
                        hint="a PromptSource file has 'dataset:' and 'templates:' at the top level")
    templates = []
    for key, spec in data["templates"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("jinja"), str):
            raise DataError("a template needs a 'jinja' string", file=str(path), field=f"templates.{key}")
        templates.append(PromptTemplate(
            id=str(spec.get("id") or key), name=str(spec.get("name") or key), jinja=spec["jinja"],
            answer_choices=spec.get("answer_choices"), metadata=dict(spec.get("metadata") or {}),
            reference=spec.get("reference") or "", dataset=data.get("dataset"), subset=data.get("subset"),
        ))
    return templates


# -- applying ------------------------------------------------------------------------------


def apply_promptsource(rows: Iterable[dict[str, Any]], templates: list[PromptTemplate], seed: int = 0,
                       skipped: list[dict[str, Any]] | None = None,
                       source: str | None = None) -> list[Conversation]:
    """One conversation per (row, template): user = rendered input, assistant = target.

    A pair whose input or target renders empty (a template whose ``{% if %}`` does not hold
    for that row, as P3 also drops) is left out and, when ``skipped`` is a list, recorded
    there as ``{"row": i, "template": name, "reason": ...}``.
    Meta: template id and name, dataset, answer_choices, choices_in_prompt.
    """
    conversations = []
    for index, row in enumerate(rows):
        row_id = row.get("id", row.get("task_id", index))
        for template in templates:
            rendered = template.apply(row, seed=f"{seed}:{index}")
            if not rendered.input or not rendered.target:
                if skipped is not None:
                    skipped.append({"row": index, "template": template.name,
                                    "reason": "empty input" if not rendered.input else "empty target"})
                continue
            conversations.append(Conversation(
                messages=[Message("user", rendered.input), Message("assistant", rendered.target)],
                id=f"{row_id}:{template.id}",
                source=source or template.dataset,
                meta={"template": template.name, "template_id": template.id,
                      "dataset": "/".join(filter(None, [template.dataset, template.subset])),
                      "answer_choices": rendered.answer_choices,
                      "choices_in_prompt": template.metadata.get("choices_in_prompt")},
            ))
    return conversations


# -- jinja ---------------------------------------------------------------------------------


_RNG = "_sftlab_rng"  # context variable carrying the per-render random generator


@pass_context
def _choice(context: Any, values: Iterable[Any]) -> Any:
    return context[_RNG].choice(list(values))


# StrictUndefined: a field the row lacks is an error, not a silently empty prompt
_ENV = SandboxedEnvironment(undefined=StrictUndefined)
_ENV.filters["choice"] = _choice  # seeded per render (PromptSource uses the global random)
_ENV.filters["highlight"] = lambda text: text  # PromptSource's UI-only highlighting
_ENV.globals["zip"] = zip


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def _render(source: str, row: dict[str, Any], rng: random.Random, what: str) -> str:
    try:
        return _compiled(source).render(**row, **{_RNG: rng})
    except TemplateError as exc:
        raise DataError(f"template '{what}' failed on this row: {exc}", field=what,
                        hint="check that the row has the fields the template uses") from exc


def _protect(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(SEPARATOR, _PROTECT)
    if isinstance(value, dict):
        return {k: _protect(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_protect(v) for v in value]
    return value


def _unprotect(text: str) -> str:
    return text.replace(_PROTECT, SEPARATOR)

