"""The generation protocol every backend implements; synthesis and evaluation use only this.

A prompt is a list of messages (the chat template is applied), a ``Conversation`` (the
same, with its ``tools`` rendered too) or a raw string (used as is, for base models and
few-shot text prompts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, Union, runtime_checkable

from sftlab.errors import ConfigError
from sftlab.types import Conversation, Message

Prompt = Union[str, Sequence[Message], Conversation]


@dataclass
class SamplingConfig:
    """How to decode. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 256
    """Completion length limit in tokens."""
    temperature: float = 0.0
    """Softmax temperature; 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the likeliest tokens holding this probability mass
    (1.0 = off)."""
    top_k: int = 0
    """Sample among the k likeliest tokens (0 = off)."""
    seed: int = 0
    """Sampling seed: the same prompts, settings and seed give the same text; -1 draws fresh
    randomness (the server's default for requests without a seed, as OpenAI's API does)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the output ends before the first one it produces (repeat `--stop`)."""

    def __post_init__(self) -> None:
        """Out-of-range values are refused when the settings are built, naming the key (the
        server checks its own request fields first, as OpenAI's API does)."""
        for key, ok, rule in (
                ("max_new_tokens", _integer(self.max_new_tokens) and self.max_new_tokens >= 1, "an integer >= 1"),
                ("temperature", _number(self.temperature) and self.temperature >= 0, "a number >= 0 (0: greedy)"),
                ("top_p", _number(self.top_p) and 0 <= self.top_p <= 1, "a number in [0, 1] (1: off)"),
                ("top_k", _integer(self.top_k) and self.top_k >= 0, "an integer >= 0 (0: off)")):
            if not ok:
                raise ConfigError(f"sampling.{key} must be {rule}, got {getattr(self, key)!r}")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Generation:
    """One completion: the text (stop string excluded), token counts and why it ended."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    token_ids: list[int] | None = None
    """The completion's token ids as sampled (the end-of-sequence token included when it
    ended on one; ``completion_tokens`` of them), where the backend reports them
    (``HFGenerator`` does); ``None`` otherwise. Re-tokenising ``text`` need not give them
    back."""


@runtime_checkable
class Generator(Protocol):
    """Anything that turns a batch of prompts into completions, in order."""

    name: str

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[Generation]:
        ...
