"""IFEval (Zhou et al. 2023): verifiable instructions, checked by code.

- ``checkers``: one class per instruction id (25), ``describe()`` and ``check(response)``
- ``registry``: ``CHECKERS`` (instruction id -> checker class)
- ``checkers``' ``build_checker(instruction_id, kwargs)``: a checker for one prompt's instruction
- ``sentences``: NLTK's Punkt with its English model (shipped as data, offline) and the reference word counters
- ``score``: strict/loose, prompt- and instruction-level accuracy;
  ``score_ifeval_responses(input_rows, response_rows)`` scores an authors'-format file
"""
from sftlab.eval.ifeval.checkers import build_checker, instruction_ids
from sftlab.eval.ifeval.registry import CHECKERS
from sftlab.eval.ifeval.score import (
    METRICS,
    aggregate,
    loose_variants,
    score_ifeval_responses,
    score_prompt,
    score_responses_file,
)

__all__ = [
    "CHECKERS", "METRICS", "aggregate", "build_checker", "instruction_ids", "loose_variants",
    "score_ifeval_responses", "score_prompt", "score_responses_file",
]
