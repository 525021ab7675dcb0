"""Synthetic instruction data: distillation from a teacher and self-improvement pipelines.

Importing this package registers every pipeline in ``PIPELINES``.
"""
from sftlab.synth import back_translate, distill, evol, self_chat, self_instruct, spin  # noqa: F401  (registration)
from sftlab.synth.base import PIPELINES, SynthReport

__all__ = ["PIPELINES", "SynthReport"]
