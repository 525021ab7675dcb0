"""The settings of ``sftlab quickstart``: a plain dataclass, light to import.

``sftlab --help`` builds the quickstart's options from these fields (their docstrings are
the help text), so this module imports nothing heavy; the pipeline that runs them is
``sftlab.quickstart.pipeline``.

    config = QuickstartConfig(model="tiny", fast=True)
    config.train_per_task, config.eval_per_task    # (4, 2): ``fast`` shrinks the run
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class QuickstartConfig:
    """Settings of ``sftlab quickstart``, saved as quickstart_config.json in the run directory."""

    model: str = "default"
    """The model to tune: ``default`` (SmolLM2-135M-Instruct), ``tiny`` or a directory."""
    output_dir: str = ""
    """Run directory; empty: ``runs/quickstart-<date>-<time>``."""
    seed: int = 0
    """Seeds the data build (which instances and templates), training and the bootstrap."""
    train_per_task: int = 64
    """Training instances per seen task (13 seen tasks)."""
    eval_per_task: int = 12
    """Held-out instances per task for evaluation."""
    epochs: int = 1
    """Passes over the training data."""
    batch_size: int = 4
    """Packed rows of ``max_length`` tokens per optimizer step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule, 10% warm-up)."""
    lora_rank: int = 16
    """LoRA rank (alpha is twice the rank)."""
    max_length: int = 256
    """Tokens per packed training row; longer examples are truncated."""
    max_new_tokens: int = 24
    """Answer length limit at evaluation (answers are short: exact match)."""
    eval_batch_size: int = 16
    """Prompts generated together at evaluation."""
    vision: bool = False
    """LLaVA-style visual instruction tuning instead (``sftlab.quickstart.vision``): generated
    shape images, a small random CLIP tower, stage 1 (projector on captions) then stage 2
    (projector + LoRA), exact match on held-out images, templates and colour-shape pairs.
    Per question type (4 types): 3 x ``train_per_task`` training questions and
    ``eval_per_task`` questions in each held-out split; 4 x ``train_per_task`` captions."""
    objective: Literal["sft", "dpo", "grpo", "ppo"] = "sft"
    """What the text quickstart trains. ``sft``: instruction tuning on the built data.
    ``dpo``, ``grpo``, ``ppo`` (``sftlab.quickstart.preference``): on ``train_per_task // 8``
    training prompts per seen task, ``dpo`` trains on preference pairs (chosen: the gold
    answer; rejected: the base model's own wrong answer, or where it is right another
    instance's answer), ``grpo`` with an exact-match reward (plus a short-answer term), ``ppo`` against a reward model
    first trained on those pairs; each reports held-out exact match and answer length
    before and after, and its reward curve."""
    threads: int = 0
    """torch threads (0: all cores)."""
    fast: bool = False
    """A tiny version for tests: few instances, a few steps."""

    def __post_init__(self) -> None:
        if self.fast:
            self.train_per_task, self.eval_per_task = min(self.train_per_task, 4), min(self.eval_per_task, 2)
            self.max_new_tokens = min(self.max_new_tokens, 8)
