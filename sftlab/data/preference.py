"""Preference pairs: one prompt with a chosen and a rejected response (``objective: dpo``).

Three layouts, recognised per row (a JSON array or JSONL, as every data file)::

    # TRL: explicit prompt; each field a string or OpenAI-style messages
    {"prompt": [{"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5"}]}
    # TRL: implicit prompt: two whole conversations; the prompt is their shared prefix
    {"chosen": [{"role": "user", ...}, {"role": "assistant", "content": "4"}],
     "rejected": [{"role": "user", ...}, {"role": "assistant", "content": "5"}]}
    # LLaMA-Factory ranking rows (ShareGPT keys from/value; optional "system")
    {"conversations": [{"from": "human", "value": "2+2?"}],
     "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}
    # OpenAI preference fine-tuning
    {"input": {"messages": [{"role": "user", "content": "2+2?"}]},
     "preferred_output": [{"role": "assistant", "content": "4"}],
     "non_preferred_output": [{"role": "assistant", "content": "5"}]}

Multi-turn pairs keep their whole context: the prompt is every turn before the final
assistant turn, and the two sides differ only in that turn. Reference log-probs, when the
records carry them, are ``meta.ref_logp_chosen``/``meta.ref_logp_rejected`` (what ``sftlab
synth spin`` writes) or TRL's ``ref_chosen_logps``/``ref_rejected_logps``.

    pairs, skipped = read_preference_pairs("pairs.jsonl")   # [PreferencePair], Counter
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.formats import parse_messages, parse_turns, sharegpt_message, sharegpt_turns
from sftlab.data.io import parse_records
from sftlab.errors import DataError
from sftlab.types import Message

REFERENCE_KEYS = (("meta.ref_logp_chosen", "meta.ref_logp_rejected"),
                  ("ref_chosen_logps", "ref_rejected_logps"))
HINT = ("a preference pair has prompt/chosen/rejected (TRL), conversations/chosen/rejected "
        "(LLaMA-Factory) or input/preferred_output/non_preferred_output (OpenAI)")


@dataclass
class PreferencePair:
    """``prompt``: every turn before the final assistant turn (system and earlier turns
    included); ``chosen``/``rejected``: the two final assistant turns' text;
    ``reference``: the reference model's sequence log-probs of both, or ``(None, None)``."""

    prompt: list[Message]
    chosen: str
    rejected: str
    reference: tuple[float | None, float | None] = (None, None)
    id: str | None = None


def read_preference_pairs(path: str | Path, on_error: str = "fail", *,
                          require_reference: bool = False) -> tuple[list[PreferencePair], Counter]:
    """Every row of a JSON/JSONL(.gz) file as a ``PreferencePair``, and a ``Counter`` of the
    reasons of rows left out. A bad row (with ``require_reference``: one without reference
    log-probs too) raises ``DataError`` naming the file, its line (JSONL) or record index,
    and the field; with ``on_error="skip"`` it is counted instead."""
    def parse(row: dict) -> PreferencePair:
        pair = parse_preference(row)
        if require_reference and None in pair.reference:
            raise DataError("no reference log-probs", field="meta.ref_logp_chosen",
                            hint="add meta.ref_logp_chosen and meta.ref_logp_rejected, or "
                            "let the initial model compute them (dpo.reference=auto)",
                            reason="no reference log-probs")
        return pair

    return parse_records(path, parse, on_error)


def parse_preference(row: dict) -> PreferencePair:
    """One row in any of the three layouts -> ``PreferencePair``."""
    if "preferred_output" in row or "non_preferred_output" in row:
        chosen, rejected = _openai(row)
    elif ("chosen" in row or "rejected" in row) and "conversations" in row:
        chosen, rejected = _llamafactory(row)
    elif "chosen" in row or "rejected" in row:
        chosen, rejected = _trl(row)
    else:
        raise DataError(f"not a preference pair (keys: {', '.join(sorted(row)) or 'none'})",
                        hint=HINT + _unpaired_hint(row), reason="not a pair")
    prompt, chosen_text, rejected_text = split_final_turn(chosen, rejected)
    id = row.get("id")
    return PreferencePair(prompt, chosen_text, rejected_text, _reference(row),
                          id if isinstance(id, str) else None)


def split_final_turn(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """Two whole conversations -> ``(shared prompt, chosen text, rejected text)``: they must
    share every turn but the final assistant one, and that one must differ."""
    if chosen == rejected:
        raise DataError("chosen and rejected are identical: the pair teaches nothing",
                        field="rejected", hint="drop the row or give a different rejected response",
                        reason="identical pair")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        tail = side[shared:]
        if len(tail) != 1 or tail[0].role != "assistant":
            raise DataError("chosen and rejected must share every turn but the final assistant "
                            f"turn ({key} differs in {len(tail)} turns from message {shared})",
                            field=key, hint="put the shared turns in the prompt; each side ends "
                            "with one assistant turn", reason=f"bad {key}")
    prompt = chosen[:shared]
    if not prompt or prompt[-1].role != "user":
        raise DataError("the prompt must end with a user turn", field="prompt",
                        hint="give the user message the responses answer", reason="bad prompt")
    return prompt, chosen[-1].content, rejected[-1].content


def _trl(row: dict) -> tuple[list[Message], list[Message]]:
    prompt = _turns(row, "prompt", "user") if "prompt" in row else []
    return (prompt + _turns(row, "chosen", "assistant"),
            prompt + _turns(row, "rejected", "assistant"))


def _llamafactory(row: dict) -> tuple[list[Message], list[Message]]:
    prompt = sharegpt_turns(row)
    return prompt + [sharegpt_message(row.get("chosen"), "chosen")], \
        prompt + [sharegpt_message(row.get("rejected"), "rejected")]


def _openai(row: dict) -> tuple[list[Message], list[Message]]:
    source = row.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise DataError("missing or malformed: expected {\"messages\": [...]}", field="input",
                        hint=HINT, reason="bad input")
    prompt = parse_messages(source["messages"], "input.messages")
    return (prompt + _turns(row, "preferred_output", "assistant"),
            prompt + _turns(row, "non_preferred_output", "assistant"))


def _turns(row: dict, key: str, role: str) -> list[Message]:
    """``row[key]``: a non-empty string (one turn of ``role``) or OpenAI-style messages."""
    return parse_turns(present(row, key, HINT), key, role)


def present(row: dict, key: str, hint: str) -> Any:
    """``row[key]``, which must be a non-empty string or list (``hint`` says what a row holds)."""
    value = row.get(key)
    if value is None or value == "" or value == []:
        raise DataError("missing or empty", field=key, hint=hint, reason=f"missing {key}")
    if not isinstance(value, (str, list)):
        raise DataError(f"must be a string or a list of messages, got {type(value).__name__}",
                        field=key, hint=hint, reason=f"bad {key}")
    return value


def _reference(row: dict) -> tuple[float | None, float | None]:
    """Both reference log-probs under one of ``REFERENCE_KEYS``, or ``(None, None)``."""
    meta = row.get("meta")
    for keys in REFERENCE_KEYS:
        values = [_lookup(row, meta, key) for key in keys]
        if values == [None, None]:
            continue
        for key, value in zip(keys, values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"must be a number (got {value!r}); give both reference "
                                "log-probs or neither", field=key, reason=f"bad {key}")
        return float(values[0]), float(values[1])
    return None, None


def _lookup(row: dict, meta: Any, key: str) -> Any:
    if key.startswith("meta."):
        return meta.get(key[len("meta."):]) if isinstance(meta, dict) else None
    return row.get(key)


def _unpaired_hint(row: dict) -> str:
    if "label" in row:
        return "; rows with a 'label' are unpaired (KTO) data, not pairs"
    if {"messages", "instruction", "conversations", "completion"} & set(row):
        return "; this looks like SFT data: train it with objective=sft"
    return ""
