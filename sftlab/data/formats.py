"""Instruction-data formats: one pure reader function per format, into ``Conversation``.

(Skeleton holding the registry contract; the formats owner fills it in.)

A reader takes one parsed row (a dict) and the read options, and returns the
conversations it holds (usually one; an Open Assistant tree holds many). It raises
``DataError(message, field=..., hint=...)`` for a bad row; the driver adds file and line.
"""
from __future__ import annotations

from sftlab.registry import Registry

FORMATS: Registry = Registry("format")
