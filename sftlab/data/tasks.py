"""Task-collection readers: Self-Instruct seed tasks and Super-NaturalInstructions tasks.

Both collections store *tasks* (an instruction plus instances) rather than chat records.
Each reader is a pure function ``row, options -> list[Conversation]``; ``sftlab.data.formats``
registers them in ``FORMATS`` with their detectors (this module imports nothing of it, so
the two never import each other). ``options`` is any object, read with ``getattr`` and
defaults (``sftlab.data.formats.ReadOptions`` in practice), so a plain ``None`` works.

Self-Instruct (``seed_tasks.jsonl``, one task per line)::

    {"id": "seed_task_1", "name": "antonym_relation",
     "instruction": "What is the relation between the given pairs?",
     "instances": [{"input": "Night : Day :: Right : Left",
                    "output": "The relation between the given pairs is that they are opposites."}],
     "is_classification": false}

    -> user: "What is the relation between the given pairs?\\n\\nNight : Day :: Right : Left"
       assistant: "The relation between the given pairs is that they are opposites."

Super-NaturalInstructions (``tasks/task001_....json``: ONE JSON object per file)::

    {"Definition": ["Given a question, answer it with yes or no."],
     "Positive Examples": [{"input": "...", "output": "...", "explanation": "..."}],
     "Negative Examples": [{"input": "...", "output": "...", "explanation": "..."}],
     "Instances": [{"id": "task001-0", "input": "...", "output": ["yes"]}], ...}

    -> one conversation per instance, rendered as Tk-Instruct's encoding (Wang et al. 2022):
       "Definition: ...\\n\\nPositive Example 1 -\\nInput: ...\\nOutput: ...\\n\\n"
       "Now complete the following example -\\nInput: ...\\nOutput:"   target: output[0]
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from sftlab.errors import DataError
from sftlab.types import Conversation, Message

# -- Self-Instruct -------------------------------------------------------------------------


def is_self_instruct_row(row: Any) -> bool:
    """True for a Self-Instruct seed-task row (instruction + instances + is_classification)."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("instruction"), str)
        and isinstance(row.get("instances"), list)
        and "is_classification" in row
    )


def read_self_instruct(row: dict[str, Any], options: Any = None) -> list[Conversation]:
    """One conversation per seed task (its first instance), or one per instance when
    ``options.expand_instances`` is true. The user turn is the instruction, followed by
    ``"\\n\\n" + input`` when the instance has an input. With ``options.require_assistant``
    false (a prompt file) an instance needs no ``output``: the conversation ends on the user turn.
    """
    instruction = _required_str(row, "instruction")
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        raise DataError("a seed task needs a non-empty 'instances' list", field="instances",
                        hint='give at least one {"input": ..., "output": ...}')
    expand = bool(getattr(options, "expand_instances", False))
    task_id = row.get("id")
    conversations = []
    for number, instance in enumerate(instances if expand else instances[:1]):
        if not isinstance(instance, dict):
            raise DataError("each instance must be an object", field=f"instances[{number}]")
        task_input = str(instance.get("input") or "").strip()
        separator = getattr(options, "user_input_separator", "\n\n")
        user = instruction.strip() + (separator + task_input if task_input else "")
        conversations.append(Conversation(
            messages=[Message("user", user)] + _instance_answer(instance, number, options),
            id=f"{task_id}-{number}" if expand and task_id is not None else task_id,
            source=getattr(options, "source", None),
            meta={"task": row.get("name"), "is_classification": bool(row.get("is_classification")),
                  "instance": number},
        ))
    return conversations


# -- Super-NaturalInstructions --------------------------------------------------------------


def is_superni_task(obj: Any) -> bool:
    """True for a Super-NaturalInstructions task object (Definition + Instances)."""
    return isinstance(obj, dict) and "Definition" in obj and isinstance(obj.get("Instances"), list)


def read_superni(task: dict[str, Any], options: Any = None) -> list[Conversation]:
    """A whole Super-NI task object -> one conversation per instance.

    Options (read with getattr): ``num_positive_examples`` (k, default 2),
    ``num_negative_examples`` (default 0), ``add_explanation`` (default False),
    ``add_task_name`` (default False), ``max_instances`` (default all),
    ``tk_spacing`` (default False: reproduce Tk-Instruct's stray leading spaces byte for byte).
    """
    return superni_conversations(
        task,
        k=getattr(options, "num_positive_examples", 2),
        negative=getattr(options, "num_negative_examples", 0),
        explanation=getattr(options, "add_explanation", False),
        task_name=getattr(options, "add_task_name", False),
        max_instances=getattr(options, "max_instances", None),
        tk_spacing=getattr(options, "tk_spacing", False),
        source=getattr(options, "source", None),
    )


def read_superni_task(path: str | Path, k: int = 2, negative: int = 0, explanation: bool = False,
                      task_name: bool = False, max_instances: int | None = None,
                      tk_spacing: bool = False) -> list[Conversation]:
    """Read one Super-NI task file (``task001_quoref_question_generation.json``).

    >>> convs = read_superni_task("tests/fixtures/superni/task_yes_no_question.json", k=1)
    >>> convs[0].messages[0].content.startswith("Definition: ")
    True
    """
    path = Path(path)
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno) from exc
    if not is_superni_task(task):
        raise DataError("not a Super-NaturalInstructions task", file=str(path), field="Definition",
                        hint="a task file is one object with 'Definition' and 'Instances'")
    task.setdefault("Task", path.stem)
    try:
        return superni_conversations(task, k=k, negative=negative, explanation=explanation,
                                     task_name=task_name, max_instances=max_instances,
                                     tk_spacing=tk_spacing, source=path.name)
    except DataError as exc:  # add the file name to the row-level error
        raise DataError(exc.message, file=str(path), index=exc.index, field=exc.field,
                        hint=exc.hint) from exc


def superni_conversations(task: dict[str, Any], k: int = 2, negative: int = 0,
                          explanation: bool = False, task_name: bool = False,
                          max_instances: int | None = None, tk_spacing: bool = False,
                          source: str | None = None) -> list[Conversation]:
    """Render every instance of ``task`` with the same task prefix (definition + examples)."""
    if not is_superni_task(task):
        raise DataError("not a Super-NaturalInstructions task", field="Definition",
                        hint="a task is one object with 'Definition' and 'Instances'")
    prefix = superni_prefix(task, k, negative, explanation, task_name, tk_spacing)
    name = task.get("Task")
    conversations = []
    for index, instance in enumerate(task["Instances"][:max_instances]):
        outputs = instance.get("output") if isinstance(instance, dict) else None
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise DataError(f"an instance needs 'output': a non-empty list of strings, got {outputs!r:.60}",
                            index=index, field=f"Instances[{index}].output",
                            hint='write numbers as strings: "output": ["4"]')
        if not isinstance(instance.get("input"), str):
            raise DataError("an instance needs an 'input' string", index=index, field=f"Instances[{index}].input")
        prompt = prefix + _tk_line("Now complete the following example -\nInput: ", instance["input"])
        conversations.append(Conversation(
            messages=[Message("user", prompt + "\nOutput:"), Message("assistant", outputs[0].strip())],
            id=instance.get("id") or f"{name or 'superni'}-{index}",
            source=source,
            meta={"task": name, "references": outputs, "categories": task.get("Categories"),
                  "num_positive_examples": min(k, len(task.get("Positive Examples") or []))},
        ))
    return conversations


def superni_prefix(task: dict[str, Any], k: int = 2, negative: int = 0, explanation: bool = False,
                   task_name: bool = False, tk_spacing: bool = False) -> str:
    """The text before the instance: ``[Task. ]Definition: ...\\n\\n`` + examples.

    Each sentence gets a full stop when it ends without punctuation, as in Tk-Instruct.
    ``tk_spacing`` adds the single leading space Tk-Instruct puts before "Positive
    Example", "Output:" and "Explanation:" inside examples (an artefact of its f-strings).
    """
    definition = task.get("Definition")
    if isinstance(definition, list):
        definition = definition[0] if definition else ""
    if not isinstance(definition, str) or not definition.strip():
        raise DataError("the task has no definition", field="Definition",
                        hint='give "Definition": ["<what the task asks>"]')
    text = f"{task['Task']}. " if task_name and task.get("Task") else ""
    text += _tk_line("Definition: ", definition) + "\n\n"
    pad = " " if tk_spacing else ""
    for kind, count in (("Positive", k), ("Negative", negative)):
        for number, example in enumerate((task.get(f"{kind} Examples") or [])[:count], start=1):
            text += f"{pad}{kind} Example {number} -\n"
            text += _tk_line("Input: ", example.get("input", "")) + "\n"
            text += pad + _tk_line("Output: ", example.get("output", "")) + "\n"
            if explanation and example.get("explanation"):
                text += pad + _tk_line("Explanation: ", example["explanation"]) + "\n"
            text += "\n"
    return text


# -- helpers -------------------------------------------------------------------------------


def _tk_line(label: str, value: Any) -> str:
    """``label + value.strip()``, with a full stop added when it ends without punctuation."""
    if isinstance(value, list):  # some task files keep an example output as a list
        value = value[0] if value else ""
    line = label + str(value).strip()
    return line if line[-1] in string.punctuation else line + "."


def _instance_answer(instance: dict[str, Any], number: int, options: Any) -> list[Message]:
    """The assistant turn of a seed-task instance; a prompt file may leave ``output`` out or empty."""
    if not getattr(options, "require_assistant", True) and instance.get("output") in (None, ""):
        return []
    output = _required_str(instance, "output", where=f"instances[{number}].output")
    return [Message("assistant", output.strip())]


def _required_str(row: dict[str, Any], key: str, where: str | None = None) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"'{key}' must be a non-empty string", field=where or key,
                        hint=f"add a non-empty '{key}'")
    return value
