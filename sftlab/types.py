"""The types every stage shares: messages, conversations and tokenized examples.

Data flows one way: records -> ``Conversation`` -> ``Tokenized`` -> model. Readers in
``sftlab.data.formats`` produce conversations; ``sftlab.data.chat`` renders them into
token ids with labels; the trainer consumes ``Tokenized``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# Label value of a position that carries no loss (the PyTorch cross-entropy default).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Message:
    """One turn: ``Message("user", "Name three colours.")``.

    ``weight`` is the turn's loss weight: 1 (the default) trains an assistant turn as the
    mask strategy says; 0 keeps it as context only, never trained (OpenAI's ``weight``,
    LLaMA-Factory v1's ``loss_weight``, Axolotl's ``train``). Only assistant turns are
    ever trained: a system or user turn's weight (0 or 1) changes nothing.
    """

    role: Role
    content: str
    weight: int = 1

    def __repr__(self) -> str:
        weight = "" if self.weight == 1 else f", weight={self.weight!r}"
        return f"Message(role={self.role!r}, content={self.content!r}{weight})"

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.weight != 1:
            row["weight"] = self.weight
        return row


@dataclass
class Conversation:
    """An instruction-data record in sftlab's one internal form.

    ``messages`` alternate user/assistant turns after an optional leading system turn.
    ``id`` is stable across conversions; ``source`` names the file or pipeline it came
    from; ``meta`` keeps everything else a format carried (category, task, ranks, ...).

    Canonical JSONL row::

        {"id": "alpaca-0", "source": "alpaca_en_demo.json",
         "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "meta": {}}
    """

    messages: list[Message]
    id: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "messages": [m.to_dict() for m in self.messages],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Conversation":
        return cls(
            messages=[Message(m["role"], m["content"], m.get("weight", 1)) for m in row["messages"]],
            id=row.get("id"),
            source=row.get("source"),
            meta=dict(row.get("meta") or {}),
        )

    @property
    def turns(self) -> int:
        """Number of assistant turns."""
        return sum(m.role == "assistant" for m in self.messages)


@dataclass
class Tokenized:
    """A rendered example: ``labels[t]`` is ``input_ids[t]`` where the model is trained
    to produce that token, else ``IGNORE_INDEX``. Labels are *not* shifted: the loss
    predicts ``labels[t]`` from position ``t - 1`` (the Hugging Face convention).

    >>> Tokenized([1, 5, 6, 2], [-100, -100, 6, 2]).num_trained
    2
    """

    input_ids: list[int]
    labels: list[int]
    id: str | None = None

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(
                f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ in length"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        # position 0 has no previous token, so a label there is never trained
        return sum(label != IGNORE_INDEX for label in self.labels[1:])
