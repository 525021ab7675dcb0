"""Unpaired completions: one prompt, one completion and whether it is desirable (``objective: kto``).

Three layouts, recognised per row (a JSON array or JSONL, as every data file)::

    # TRL unpaired preference: prompt and completion, each a string or OpenAI-style messages
    {"prompt": [{"role": "user", "content": "2+2?"}],
     "completion": [{"role": "assistant", "content": "4"}], "label": true}
    # LLaMA-Factory KTO (``formatting: sharegpt`` with role/content tags, as kto_en_demo):
    # a whole conversation; the tag column is ``label`` there, ``kto_tag`` in the docs
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
     "label": false}
    # LLaMA-Factory ShareGPT rows (from/value turns; optional "system")
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
     "kto_tag": true}

The completion is the final assistant turn; the prompt is every turn before it (system and
earlier turns included) and must end with a user turn. The label must be a JSON boolean:
``"true"`` or ``1`` are refused, since a misread label flips what the row teaches.

    examples, skipped = read_unpaired("kto.jsonl")   # [UnpairedExample], Counter
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.formats import parse_messages, parse_turns, sharegpt_turns
from sftlab.data.io import parse_records
from sftlab.data.preference import present
from sftlab.errors import DataError
from sftlab.types import Message

LABEL_KEYS = ("label", "kto_tag")
HINT = ("an unpaired row has prompt/completion/label (TRL), or messages or conversations "
        "with a boolean label or kto_tag (LLaMA-Factory)")


@dataclass
class UnpairedExample:
    """``prompt``: every turn before the final assistant turn; ``completion``: that turn's
    text; ``desirable``: the row's label (True: a completion to make more likely)."""

    prompt: list[Message]
    completion: str
    desirable: bool
    id: str | None = None


def read_unpaired(path: str | Path, on_error: str = "fail") -> tuple[list[UnpairedExample], Counter]:
    """Every row of a JSON/JSONL(.gz) file as an ``UnpairedExample``, and a ``Counter`` of the
    reasons of rows left out. A bad row raises ``DataError`` naming the file, its line
    (JSONL) or record index, and the field; with ``on_error="skip"`` it is counted instead.

    >>> examples, _ = read_unpaired(shared_data / "formats" / "lf_kto_sample.json")
    >>> len(examples), examples[0].desirable, examples[0].prompt[-1].role
    (20, False, 'user')
    """
    return parse_records(path, parse_unpaired, on_error)


def parse_unpaired(row: dict) -> UnpairedExample:
    """One row in any of the three layouts -> ``UnpairedExample``."""
    if "completion" in row:
        prompt = parse_turns(present(row, "prompt", HINT), "prompt", "user")
        turns = prompt + parse_turns(present(row, "completion", HINT), "completion", "assistant")
        completion_field = "completion"
    elif "messages" in row:
        turns, completion_field = parse_messages(present(row, "messages", HINT), "messages"), "messages"
    elif "conversations" in row:
        turns, completion_field = sharegpt_turns(row), "conversations"
    else:
        hint = HINT + ("; rows with chosen/rejected are preference pairs: train them with "
                       "objective=dpo" if "chosen" in row or "rejected" in row else "")
        raise DataError(f"not an unpaired row (keys: {', '.join(sorted(row)) or 'none'})",
                        hint=hint, reason="not unpaired")
    prompt, completion = split_completion(turns, completion_field)
    id = row.get("id")
    return UnpairedExample(prompt, completion, _label(row), id if isinstance(id, str) else None)


def split_completion(turns: list[Message], field: str) -> tuple[list[Message], str]:
    """A whole conversation -> ``(prompt, completion text)``: the last turn is the
    assistant's completion and the turn before it the user's."""
    if not turns or turns[-1].role != "assistant":
        raise DataError("the last turn must be the assistant's completion", field=field,
                        hint="end the row with one assistant turn", reason=f"bad {field}")
    prompt = turns[:-1]
    if not prompt or prompt[-1].role != "user":
        raise DataError("the prompt must end with a user turn", field=field,
                        hint="give the user message the completion answers", reason="bad prompt")
    return prompt, turns[-1].content


def _label(row: dict) -> bool:
    key = next((k for k in LABEL_KEYS if k in row), None)
    if key is None:
        raise DataError("missing: every unpaired row needs a boolean label", field="label",
                        hint="add \"label\": true (desirable) or false (undesirable)",
                        reason="missing label")
    if not isinstance(row[key], bool):
        raise DataError(f"must be true or false, got {row[key]!r}", field=key,
                        hint="write the label as a JSON boolean", reason=f"bad {key}")
    return row[key]
