"""``objective: sft``: token cross-entropy on the labelled tokens of conversations.

Units are ``Tokenized`` examples (``data.load_examples``: read, render, mask), or packed
rows of them with ``data.packing``; a micro-batch is padded rows, packed rows or one
padding-free row (``data.collate``); the loss is ``CausalLMLoss`` (the LM head runs only
where a label is) and the step's loss is the mean over its labelled tokens.
"""
from __future__ import annotations

from sftlab.errors import ConfigError
from sftlab.train import data
from sftlab.train.loss import CausalLMLoss, batch_tokens
from sftlab.train.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("sft")
class SftObjective(Objective):
    name = "sft"

    def load_data(self, tokenizer, *, progress: bool = False):
        return data.load_examples(self.config.data, tokenizer, self.config.seed, progress=progress)

    def check_units(self, train: list, evaluation: list) -> None:
        super().check_units(train, evaluation)
        if not any(example.num_trained for example in train):
            raise ConfigError("no trainable example: every example has all labels masked")

    def make_units(self, examples: list) -> list:
        return data.make_units(examples, self.config.data)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> data.Batch:
        return data.collate(items, pad_id, padding_free)

    def loss_module(self, prepared) -> CausalLMLoss:
        return CausalLMLoss(prepared.model, chunk_size=self.config.loss_chunk_size)

    def count(self, tensors: dict) -> int:
        return batch_tokens(tensors)
