"""IFEval instruction ids -> checker classes, and building a checker from a prompt's kwargs.

>>> checker = build_checker("punctuation:no_comma", {})
>>> checker.check("No commas here."), checker.check("One, two.")
(True, False)
"""
from __future__ import annotations

from typing import Any

from sftlab.registry import Registry

CHECKERS: Registry = Registry("IFEval instruction")


def build_checker(instruction_id: str, kwargs: dict[str, Any] | None = None):
    """A checker for one instruction of one prompt.

    ``kwargs`` is the prompt's kwargs entry for that instruction, e.g.
    ``{"relation": "at least", "num_words": 300}``; ``None`` values are dropped (some
    releases of input_data.jsonl list every argument name with null for unused ones).
    """
    from sftlab.eval.ifeval import checkers  # noqa: F401  (fills CHECKERS)

    cls = CHECKERS.get(instruction_id)
    arguments = {key: value for key, value in (kwargs or {}).items() if value is not None}
    return cls(**arguments)


def instruction_ids() -> list[str]:
    """Every registered instruction id, sorted."""
    from sftlab.eval.ifeval import checkers  # noqa: F401

    return sorted(CHECKERS.names())
