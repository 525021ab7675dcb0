"""`sftlab data` commands (stub: filled in by the module's owner)."""
from __future__ import annotations


def register(subparsers) -> None:
    pass
