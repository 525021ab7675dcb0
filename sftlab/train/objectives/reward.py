"""``objective: reward``: a Bradley-Terry reward model (InstructGPT's stage 2) on preference pairs.

A scalar head ``w`` on the language model's body reads the hidden state of each sequence's
last real token (right padding: position ``attention_mask.sum() - 1``)::

    r(x, y) = w · h_last(x, y)                        (w: Linear(hidden, 1), zero at start)
    loss    = -log σ(r(x, y_chosen) - r(x, y_rejected))   mean over pairs

The pairs are DPO's (``sftlab.data.preference``: TRL, LLaMA-Factory and OpenAI layouts;
``sftlab.train.objectives.pair``: ``Pair`` units, no packing, per-pair normalisation); no
reference model is needed. The head starts at zero, so step 1's loss is ``log 2``; it is a
module of the model (``reward_head``), so it trains with every method (after the method
froze the rest, ``prepare`` makes it trainable) and is in every checkpoint. The log row gets
``margin`` (mean ``r_chosen - r_rejected``) and ``accuracy`` (share of pairs ranked right),
the eval rows ``eval_margin`` and ``eval_accuracy`` (held-out pair accuracy).

The saved ``model/`` or ``adapter/`` directory holds ``reward_head.safetensors`` beside the
model's files, so the reward model reloads as a scorer::

    reward_model = load_reward_model("runs/reward-tiny")      # a run, model/ or adapter/ dir
    reward_model.score([[{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}]])     # -> [float]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sftlab.data.chat import render
from sftlab.data.collate import collate_padded
from sftlab.data.formats import parse_messages
from sftlab.errors import ConfigError, SftlabError
from sftlab.models import load_model, load_tokenizer, pad_id, split_model
from sftlab.train.methods import Prepared, trainable_summary
from sftlab.train.objectives.base import OBJECTIVES
from sftlab.train.objectives.dpo import read_dpo_pairs
from sftlab.train.objectives.pair import PairObjective, load_pairs
from sftlab.types import Conversation, Message, Tokenized

HEAD_FILE = "reward_head.safetensors"
HEAD_CONFIG = "reward_head.json"


# -- the head and the scores -------------------------------------------------------------

def base_model(model):
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def attach_head(model) -> torch.nn.Linear:
    """Add a zero ``Linear(hidden, 1, bias=False)`` as ``reward_head`` of ``model`` (under
    any PEFT wrapper), in the model's dtype and device; returns it. Idempotent."""
    inner = base_model(model)
    head = getattr(inner, "reward_head", None)
    if head is None:
        weight = next(inner.parameters())
        head = torch.nn.Linear(inner.config.hidden_size, 1, bias=False,
                               dtype=weight.dtype, device=weight.device)
        torch.nn.init.zeros_(head.weight)
        inner.add_module("reward_head", head)
    return head


def sequence_rewards(model, input_ids, attention_mask, logit_offset: int = 0) -> torch.Tensor:
    """``Tensor[B]`` (float32 at least): the head on the hidden state of each row's last
    real token. Rows are right-padded; ``logit_offset`` skips positions a method prepends."""
    head = base_model(model).reward_head
    body, _ = split_model(model)
    if body is not None:  # no [B, T, vocab] logits
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      use_cache=False).last_hidden_state
    else:  # prompt learning prepends virtual tokens inside the PEFT forward
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       output_hidden_states=True).hidden_states[-1]
    last = attention_mask.sum(-1) - 1 + logit_offset
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    dtype = torch.promote_types(head.weight.dtype, torch.float32)
    return F.linear(picked.to(dtype), head.weight.to(dtype)).squeeze(-1)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       center_rewards: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Per-pair ``-log σ(r_chosen - r_rejected) + center_rewards · (r_chosen + r_rejected)²``
    (``Tensor[B]``) and the metrics (means over the pairs): ``margin``, ``accuracy``.

    >>> losses, metrics = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    >>> [round(x, 4) for x in losses.tolist()], metrics["accuracy"]
    ([0.3133, 0.6931], 0.5)
    """
    margin = chosen - rejected
    losses = F.softplus(-margin)
    if center_rewards:
        losses = losses + center_rewards * (chosen + rejected) ** 2
    return losses, {"margin": float(margin.detach().mean()),
                                 "accuracy": float((margin.detach() > 0).float().mean())}


class RewardLoss(torch.nn.Module):
    """The Bradley-Terry loss with the loop's contract on ``collate_pairs`` batches (the B
    chosen rows first, then the B rejected rows): ``forward(**batch) -> (loss_sum, pairs)``;
    ``metrics``: ``margin``, ``accuracy`` of the last call."""

    def __init__(self, model, logit_offset: int = 0, center_rewards: float = 0.0) -> None:
        super().__init__()
        self.model, self.logit_offset, self.center_rewards = model, logit_offset, center_rewards
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, ref_real=None, ref_generated=None):
        rewards = sequence_rewards(self.model, input_ids, attention_mask, self.logit_offset)
        half = rewards.shape[0] // 2
        losses, self.metrics = bradley_terry_loss(rewards[:half], rewards[half:],
                                                  self.center_rewards)
        return losses.sum(), torch.tensor(half, device=rewards.device)


@dataclass
class RewardPrepared(Prepared):
    """A ``Prepared`` whose ``save`` also writes the reward head beside the model/adapter."""

    def save(self, path: str | Path) -> Path:
        path = super().save(path)
        weight = base_model(self.model).reward_head.weight.detach().float().cpu().contiguous()
        save_file({"weight": weight}, str(path / HEAD_FILE))
        (path / HEAD_CONFIG).write_text(json.dumps({"hidden_size": weight.shape[1],
                                                    "kind": self.kind, "pooling": "last_token"}))
        return path


# -- the objective ----------------------------------------------------------------------

@OBJECTIVES.register("reward")
class RewardObjective(PairObjective):
    name = "reward"
    metric_names = ("margin", "accuracy")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.method.name in ("prompt", "prefix"):
            raise ConfigError(f"objective=reward reads the last token's hidden state; "
                              f"method.name={config.method.name} changes the sequence: use "
                              "full, lora or another weight method")

    def load_data(self, tokenizer, *, progress: bool = False):
        return load_pairs(self.config.data, tokenizer, read_dpo_pairs, self.config.seed)

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """No reference model: the head is attached in ``prepare``."""

    def prepare(self, prepared: Prepared) -> RewardPrepared:
        """Attach the zero head (after the method froze the model) and train it too."""
        head = attach_head(prepared.model)
        head.weight.requires_grad_(True)
        values = {f.name: getattr(prepared, f.name) for f in fields(Prepared)}
        values["parameters"] = list(prepared.parameters) + [head.weight]
        result = RewardPrepared(**values)
        result.summary = trainable_summary(result.model)
        return result

    def loss_module(self, prepared) -> RewardLoss:
        return RewardLoss(prepared.model, prepared.logit_offset, self.config.reward.center_rewards)


# -- the reward model as a scorer -------------------------------------------------------

class RewardModel:
    """A trained reward model: ``score(items)`` -> one float per item (higher: preferred)."""

    def __init__(self, model, tokenizer, max_length: int = 2048, batch_size: int = 8) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    def tokenize(self, item) -> Tokenized:
        """A conversation (``Conversation``, ``Message`` list or OpenAI-style message dicts,
        ending with the assistant turn to score) through the chat template, as in training;
        a string as it is (no template)."""
        if isinstance(item, str):
            ids = self.tokenizer(item, add_special_tokens=False)["input_ids"][:self.max_length]
            return Tokenized(ids, ids)
        if isinstance(item, Conversation):
            conversation = item
        else:
            messages = item if all(isinstance(m, Message) for m in item) else parse_messages(item)
            conversation = Conversation(list(messages))
        example = render(conversation, self.tokenizer, strategy="last_assistant")
        ids = example.input_ids[:self.max_length]
        return Tokenized(ids, ids)

    @torch.no_grad()
    def score(self, items: list) -> list[float]:
        """One reward per item (``tokenize`` says what an item may be)."""
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(items), self.batch_size):
            rows = [self.tokenize(item) for item in items[start:start + self.batch_size]]
            batch = collate_padded(rows, pad_id(self.tokenizer))
            rewards = sequence_rewards(self.model, batch["input_ids"].to(device),
                                       batch["attention_mask"].to(device))
            scores += [float(r) for r in rewards.cpu()]
        return scores


def load_reward_model(path: str | Path, *, device: str = "cpu", dtype: str = "float32",
                      max_length: int = 2048) -> RewardModel:
    """A run directory of ``objective: reward`` (or its ``model/`` or ``adapter/``) -> a
    ``RewardModel``. Raises ``SftlabError`` when no ``reward_head.safetensors`` is there."""
    path = Path(path)
    saved = next((d for d in (path, path / "model", path / "adapter") if (d / HEAD_FILE).is_file()),
                 None)
    if saved is None:
        raise SftlabError(f"{path}: no {HEAD_FILE} here or in model/ or adapter/: not a reward "
                          "model; train one with objective=reward")
    from transformers.utils import logging as hf_logging  # the head is an unknown weight to HF

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = load_model(str(saved), dtype=dtype, device=device)
    finally:
        hf_logging.set_verbosity(level)
    head = attach_head(model)
    weight = load_file(str(saved / HEAD_FILE))["weight"]
    if weight.shape != head.weight.shape:
        raise SftlabError(f"{saved / HEAD_FILE}: a head of shape {tuple(weight.shape)} does not fit "
                          f"the model's hidden size {head.weight.shape[1]}")
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
    return RewardModel(model, load_tokenizer(str(saved)), max_length=max_length)
