"""Data integration, the Flan 2021 / P3 recipe: labelled rows -> instructions.

A ``TaskSpec`` names a labelled data set's fields and carries several natural-language
templates; ``integrate`` renders rows through them, zero-shot or few-shot (k exemplars
from the task's own rows, deterministic by seed), with the label options listed in the
prompt for classification. Templates can be *held out* (kept for evaluation only, as Flan
held out templates and tasks): ``templates="train"`` renders the others, ``"held_out"``
only those. ``mix_tasks`` combines several tasks examples-proportionally with a per-task
cap (T5 / Flan: rate_i proportional to min(n_i, cap)).

A template is ``str.format`` text over the row's fields; ``{options_}`` marks where the
options go (appended at the end when a classification template does not place it)::

    row = {"sentence": "a gripping, funny film", "label": 1}
    integrate([row], TASKS.get("sentiment"), templates=["sentiment-0"])[0].messages
    # user:      "a gripping, funny film\\nWhat is the sentiment of this review?\\nOPTIONS:\\n- negative\\n- positive"
    # assistant: "positive"
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

from sftlab.errors import ConfigError, DataError
from sftlab.registry import Registry
from sftlab.types import Conversation, Message

OPTIONS_PLACEHOLDER = "{options_}"


@dataclass(frozen=True)
class Template:
    """``prompt`` and ``target`` are str.format texts over row fields plus ``answer``
    (the label text or target field) and ``options_``. ``held_out`` templates are for
    evaluation only."""

    id: str
    prompt: str
    target: str = "{answer}"
    held_out: bool = False


@dataclass
class TaskSpec:
    """A labelled task: which fields the rows have and how to phrase them.

    ``target_field`` holds the answer: an index into ``labels`` or a label string for a
    classification task (``labels`` given), the answer text otherwise.
    """

    name: str
    target_field: str
    templates: list[Template]
    labels: list[str] | None = None
    kind: Literal["classification", "qa", "generation"] = "qa"

    def select(self, which: str | Sequence[str] = "train") -> list[Template]:
        """``"train"`` (not held out), ``"held_out"``, ``"all"``, or a list of template ids."""
        if which == "train":
            chosen = [t for t in self.templates if not t.held_out]
        elif which == "held_out":
            chosen = [t for t in self.templates if t.held_out]
        elif which == "all":
            chosen = list(self.templates)
        elif isinstance(which, str):
            raise ConfigError(f"templates='{which}': use 'train', 'held_out', 'all' or a list of ids")
        else:
            by_id = {t.id: t for t in self.templates}
            unknown = [i for i in which if i not in by_id]
            if unknown:
                raise ConfigError(f"task '{self.name}' has no template {unknown[0]!r} "
                                  f"(templates: {', '.join(by_id)})")
            chosen = [by_id[i] for i in which]
        if not chosen:
            raise ConfigError(f"task '{self.name}' has no '{which}' templates")
        return chosen

    def answer(self, row: dict[str, Any]) -> str:
        """The answer text of a row; a label index maps through ``labels``."""
        if self.target_field not in row:
            raise DataError(f"task '{self.name}' needs field '{self.target_field}'",
                            field=self.target_field, hint=f"rows have: {', '.join(row)}")
        value = row[self.target_field]
        if self.labels is not None and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(self.labels):
                raise DataError(f"label {value} is out of range for {self.labels}", field=self.target_field)
            return self.labels[value]
        if self.labels is not None and str(value) not in self.labels:
            raise DataError(f"label {value!r} is not one of {self.labels}", field=self.target_field)
        return str(value).strip()


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    TASKS.register(spec.name)(spec)
    return spec


# -- rendering -----------------------------------------------------------------------------


def integrate(rows: Sequence[dict[str, Any]], task: TaskSpec | str,
              templates: str | Sequence[str] = "train", few_shot: int = 0,
              options_in_prompt: bool = True, per_row: Literal["one", "all"] = "one",
              exemplar_rows: Sequence[dict[str, Any]] | None = None,
              few_shot_as_turns: bool = False, seed: int = 0) -> list[Conversation]:
    """Render ``rows`` of ``task`` into conversations.

    ``per_row="one"`` picks one template per row at random (Flan), ``"all"`` renders every
    selected template (P3). Few-shot exemplars come from ``exemplar_rows`` (default: the
    same rows, never the row itself), rendered with the same template and joined by blank
    lines before the prompt, or as earlier user/assistant turns when ``few_shot_as_turns``.
    Meta: task, template id, held_out, few_shot, exemplar indices.
    """
    task = TASKS.get(task) if isinstance(task, str) else task
    chosen = task.select(templates)
    pool = list(exemplar_rows) if exemplar_rows is not None else list(rows)
    same_pool = exemplar_rows is None
    conversations = []
    for index, row in enumerate(rows):
        rng = random.Random(f"{seed}:{task.name}:{index}")
        for template in chosen if per_row == "all" else [rng.choice(chosen)]:
            shots = _exemplars(pool, few_shot, rng, skip=index if same_pool else None)
            try:
                messages = _messages(task, template, row, [pool[i] for i in shots],
                                     options_in_prompt, few_shot_as_turns)
            except DataError as error:  # the caller knows the file: give it the row
                raise DataError(error.message, index=index, field=error.field, hint=error.hint,
                                reason=error.reason) from None
            conversations.append(Conversation(
                messages=messages,
                id=f"{task.name}-{row.get('id', index)}-{template.id}",
                source=task.name,
                meta={"task": task.name, "template_id": template.id, "held_out": template.held_out,
                      "few_shot": len(shots), "exemplars": shots},
            ))
    return conversations


def render(task: TaskSpec, template: Template, row: dict[str, Any],
           options_in_prompt: bool = True) -> tuple[str, str]:
    """One row through one template -> (prompt, target)."""
    options = ""
    if task.labels is not None and options_in_prompt:
        options = "OPTIONS:\n" + "\n".join(f"- {label}" for label in task.labels)
    values = {**row, "answer": task.answer(row), "options_": options}
    prompt = _format(template.prompt, values, task, template)
    if OPTIONS_PLACEHOLDER not in template.prompt and options:
        prompt += "\n" + options
    return prompt.strip(), _format(template.target, values, task, template).strip()


def mix_tasks(task_rows: dict[str, Sequence[dict[str, Any]]], cap: int | None = 3000, seed: int = 0,
              **integrate_options: Any) -> list[Conversation]:
    """Examples-proportional mixing with a cap: each task gives ``min(len(rows), cap)``
    examples (a deterministic sample by seed), then everything is shuffled together.

    >>> sst2_rows = [{"sentence": f"film number {i}", "label": i % 2} for i in range(150)]
    >>> gsm_rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(40)]
    >>> len(mix_tasks({"sentiment": sst2_rows, "gsm8k": gsm_rows}, cap=100))   # 100 + 40
    140
    """
    mixed = []
    for name, rows in task_rows.items():
        rows = list(rows)
        if cap is not None and len(rows) > cap:
            rows = random.Random(f"{seed}:cap:{name}").sample(rows, cap)
        mixed += integrate(rows, name, seed=seed, **integrate_options)
    random.Random(f"{seed}:shuffle").shuffle(mixed)
    return mixed


def _exemplars(pool: Sequence[Any], k: int, rng: random.Random, skip: int | None) -> list[int]:
    """``k`` distinct indices into ``pool``, never ``skip`` (the row being rendered)."""
    available = len(pool) - (skip is not None)
    if k < 0:
        raise ConfigError(f"few_shot must be >= 0, got {k}")
    if k > available:
        raise ConfigError(f"few_shot={k} needs at least {k} other rows (have {available})")
    if not k:
        return []
    # sample from the indices without `skip`, then shift those at or past it by one
    return [i + (skip is not None and i >= skip) for i in rng.sample(range(available), k)]


def _messages(task: TaskSpec, template: Template, row: dict[str, Any], shots: list[dict[str, Any]],
              options_in_prompt: bool, as_turns: bool) -> list[Message]:
    prompt, target = render(task, template, row, options_in_prompt)
    rendered = [render(task, template, shot, options_in_prompt) for shot in shots]
    if as_turns:
        turns = [Message(role, text) for pair in rendered for role, text in zip(("user", "assistant"), pair)]
        return turns + [Message("user", prompt), Message("assistant", target)]
    context = "".join(f"{shot_prompt}\n{shot_target}\n\n" for shot_prompt, shot_target in rendered)
    return [Message("user", context + prompt), Message("assistant", target)]


def _format(text: str, values: dict[str, Any], task: TaskSpec, template: Template) -> str:
    try:
        return text.format_map(values)
    except KeyError as exc:
        raise DataError(f"template '{template.id}' of task '{task.name}' uses field {exc}, "
                        "which the row lacks", field=str(exc.args[0]),
                        hint=f"rows have: {', '.join(k for k in values if k not in ('answer', 'options_'))}") from exc


def template_fields(text: str) -> list[str]:
    """Field names a template uses: ``template_fields("{a} and {b}") == ["a", "b"]``."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


# -- built-in tasks ------------------------------------------------------------------------
# Phrasings written for sftlab in the style of Flan 2021; the last template of each task is
# held out for evaluation.


def _templates(task: str, pairs: Iterable[tuple[str, str]], held_out: int = 1) -> list[Template]:
    pairs = list(pairs)
    return [Template(f"{task}-{i}", prompt, target, held_out=i >= len(pairs) - held_out)
            for i, (prompt, target) in enumerate(pairs)]


register_task(TaskSpec(
    name="sentiment", target_field="label", labels=["negative", "positive"], kind="classification",
    templates=_templates("sentiment", [
        ("{sentence}\nWhat is the sentiment of this review?\n{options_}", "{answer}"),
        ("Review: {sentence}\nIs this review positive or negative?\n{options_}", "{answer}"),
        ("How would you describe the sentiment of the following text?\n\n{sentence}\n\n{options_}", "{answer}"),
        ("Read this sentence and tell me whether the writer liked the film.\n{sentence}\n{options_}",
         "The sentiment is {answer}."),
        ("{sentence}\n\nDid the reviewer feel positive or negative about it?\n{options_}", "{answer}"),
    ]),
))

register_task(TaskSpec(
    name="topic", target_field="label", labels=["World", "Sports", "Business", "Science/Tech"],
    kind="classification",
    templates=_templates("topic", [
        ("{text}\n\nWhat is this news article about?\n{options_}", "{answer}"),
        ("Which topic is this article about?\n{text}\n{options_}", "{answer}"),
        ("Choose the section of the newspaper this story belongs in.\n\n{text}\n\n{options_}", "{answer}"),
        ("Article: {text}\nTopic:\n{options_}", "{answer}"),
    ]),
))

register_task(TaskSpec(
    name="entailment", target_field="label", labels=["yes", "no"], kind="classification",
    templates=_templates("entailment", [
        ("{premise}\n\nBased on the paragraph above, can we conclude that \"{hypothesis}\"?\n{options_}",
         "{answer}"),
        ("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\n{options_}",
         "{answer}"),
        ("Read the text and decide if the sentence is true.\n\n{premise}\n\nSentence: {hypothesis}\n{options_}",
         "{answer}"),
        ("{premise}\nIf the above is true, is it also true that {hypothesis}?\n{options_}", "{answer}"),
    ]),
))

register_task(TaskSpec(
    name="gsm8k", target_field="answer", kind="qa",
    templates=_templates("gsm8k", [
        ("{question}", "{answer}"),
        ("Solve this math word problem step by step.\n\n{question}", "{answer}"),
        ("Question: {question}\nAnswer with your reasoning, then the final number after ####.", "{answer}"),
        ("A student asks: {question}\nWork it out.", "{answer}"),
    ]),
))

register_task(TaskSpec(
    name="bbh", target_field="target", kind="qa",
    templates=_templates("bbh", [
        ("{input}", "{answer}"),
        ("Answer the following question.\n\n{input}", "{answer}"),
        ("{input}\nGive only the final answer.", "{answer}"),
        ("Q: {input}\nA:", "{answer}"),
    ]),
))
