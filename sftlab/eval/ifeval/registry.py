"""The IFEval checker registry: instruction id -> checker class.

Filled by ``sftlab.eval.ifeval.checkers`` (each class registers itself); build checkers
with ``checkers.build_checker``.
"""
from __future__ import annotations

from sftlab.registry import Registry

CHECKERS: Registry = Registry("IFEval instruction")
