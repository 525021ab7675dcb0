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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from jinja2 import StrictUndefined, TemplateError, pass_context
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from sftlab.config import read_yaml
from sftlab.errors import ConfigError, DataError
from sftlab.types import Conversation, Message

# The separator between the input and the target (and between answer choices).
SEPARATOR = "|||"
# A "|||" inside a data value must not split the rendered text; it is swapped out and back.
_PROTECT = "\x00PIPES\x00"
MAX_RENDER_CHARS = 1_000_000
"""Longest text one render may produce; past it the render stops with a ``DataError``."""
MAX_RENDER_SECONDS = 10.0
"""Longest time one render may take (checked as its output is produced)."""
MAX_INT_BITS = 4096  # results of ``**`` larger than this are refused before computing them
MAX_RANGE_ITEMS = 1_000_000  # items all range() calls of one render may yield together


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

    def apply(self, row: dict[str, Any], seed: int | str = 0, max_chars: int | None = None) -> "Rendered":
        """Render on one row: the input, the target and the answer choices (a list or None);
        a render longer than ``max_chars`` (default ``MAX_RENDER_CHARS``) is an error."""
        rng = random.Random(f"{seed}:{self.id}")
        example = _protect(row)
        choices = self.render_answer_choices(example, rng)
        text = _render(self.jinja, {**example, "answer_choices": choices}, rng, self.name,
                       max_chars or MAX_RENDER_CHARS)
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
        data = read_yaml(path, _TemplateLoader)
    except ConfigError as exc:
        raise DataError(f"not a PromptSource template file: {str(exc).removeprefix(f'{path}: ')}",
                        file=str(path)) from None
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
                       source: str | None = None, max_chars: int = MAX_RENDER_CHARS) -> list[Conversation]:
    """One conversation per (row, template): user = rendered input, assistant = target.

    A render that fails, or whose text passes ``max_chars``, raises a ``DataError`` with the
    row's index and the template's name.

    A pair whose input or target renders empty (a template whose ``{% if %}`` does not hold
    for that row, as P3 also drops) is left out and, when ``skipped`` is a list, recorded
    there as ``{"row": i, "template": name, "reason": ...}``.
    Meta: template id and name, dataset, answer_choices, choices_in_prompt.
    """
    conversations = []
    for index, row in enumerate(rows):
        row_id = row.get("id", row.get("task_id", index))
        for template in templates:
            try:
                rendered = template.apply(row, seed=f"{seed}:{index}", max_chars=max_chars)
            except DataError as error:  # the caller knows the file: give it the row
                raise DataError(error.message, index=index, field=error.field, hint=error.hint,
                                reason=error.reason) from None
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


_BUDGET = "_sftlab_budget"  # context variable: range items left in this render


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, plus bounds on what one operator may build: ``9**(9**8)`` and
    ``"ab" * 10**9`` are refused before Python starts computing them."""

    intercepted_binops = frozenset(["**", "*"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1 \
                and right * abs(left).bit_length() > MAX_INT_BITS:
            raise SecurityError(f"{left} ** {right} is too large (limit {MAX_INT_BITS} bits)")
        if operator == "*":
            size, count = (len(left), right) if _is_int(right) and hasattr(left, "__len__") else \
                (len(right), left) if _is_int(left) and hasattr(right, "__len__") else (0, 0)
            if size * count > MAX_RENDER_CHARS:
                raise SecurityError(f"repeating {size} items {count} times is too large "
                                    f"(limit {MAX_RENDER_CHARS})")
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@pass_context
def _range(context: Any, *args: int) -> Iterable[int]:
    """``range`` whose items, over all calls of one render, stop at ``MAX_RANGE_ITEMS``."""
    budget = context[_BUDGET]
    for item in range(*args):
        budget[0] -= 1
        if budget[0] < 0:
            raise SecurityError(f"loops over range() ran past {MAX_RANGE_ITEMS} items")
        yield item


# StrictUndefined: a field the row lacks is an error, not a silently empty prompt
_ENV = _BoundedEnvironment(undefined=StrictUndefined)
_ENV.filters["choice"] = _choice  # seeded per render (PromptSource uses the global random)
_ENV.filters["highlight"] = lambda text: text  # PromptSource's UI-only highlighting
_ENV.globals["zip"] = zip
_ENV.globals["range"] = _range


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def _render(source: str, row: dict[str, Any], rng: random.Random, what: str,
            max_chars: int = MAX_RENDER_CHARS) -> str:
    """The template rendered on ``row``, at most ``max_chars`` long and ``MAX_RENDER_SECONDS``
    in the making; any failure is a ``DataError`` naming the template (the caller adds the
    file and row)."""
    try:
        template = _compiled(source)
    except TemplateError as exc:
        raise DataError(f"template '{what}' does not parse: {exc}", field=what,
                        hint="fix the template's Jinja syntax", reason="template syntax") from None
    deadline = time.monotonic() + MAX_RENDER_SECONDS
    parts, size = [], 0
    try:
        for part in template.generate(**row, **{_RNG: rng, _BUDGET: [MAX_RANGE_ITEMS]}):
            parts.append(part)
            size += len(part)
            if size > max_chars:
                raise SecurityError(f"its output passed {max_chars} characters")
            if time.monotonic() > deadline:
                raise SecurityError(f"it ran longer than {MAX_RENDER_SECONDS:g} s")
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError,
            RecursionError, MemoryError) as exc:
        raise DataError(f"template '{what}' failed on this row: {exc}", field=what,
                        hint="check that the row has the fields the template uses", reason="template failed") from None
    return "".join(parts)


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

