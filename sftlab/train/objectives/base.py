"""The ``Objective`` contract: what the one training loop asks of the thing being trained.

A method (``sftlab.train.methods``) decides *which parameters* train; an objective decides
*what they are trained to do*: which data units it reads, how a micro-batch of them is
collated, the loss module that scores it, the unit the step's loss is a mean over, and any
setup that must see the model before the method changes it. The loop
(``sftlab/train/sft.py``) picks the objective once, ``OBJECTIVES.get(config.objective)(config)``,
and then only calls these hooks; it never asks which objective it holds::

    objective = OBJECTIVES.get("spin")(config)      # the class is registered; one per run
    objective.check(config)                          # settings it cannot train with
    train, evaluation, summary = objective.load_data(tokenizer, progress=True)
    objective.check_units(train, evaluation)         # right type, something to train
    objective.setup(model, train + evaluation, accelerator=acc, pad_id=pad)  # before the method
    loss_module = objective.loss_module(prepared)    # forward(**batch.tensors) -> (loss_sum, count)
    units = objective.make_units(train)              # examples, packed rows, pairs
    batch = objective.collate(units[:8], pad, padding_free=False)   # -> data.Batch
    count = objective.count(batch.tensors)           # what loss_sum is a sum over
    loss_module.metrics                              # means over the last call's units

The loss contract (``sftlab.train.loss``): ``loss_module(**batch.tensors)`` returns the SUM
of the per-unit losses and the number of units, both 0-d tensors; the loop counts the
units of the whole optimizer step first (``objective.count`` per micro-batch, summed over
processes) and scales every micro-batch's sum by ``processes / step_count``, so gradient
accumulation and data parallelism never change the numbers. ``metric_names`` lists the
extra per-unit means a loss module leaves in ``.metrics`` after each call; the loop weights
them by ``count``, sums them over micro-batches and processes and writes their means over
the log window into the log row (SPIN's margin, accuracy, rewards).

**DPO** (and IPO, cDPO) is SPIN's pipeline with "chosen"/"rejected" preference pairs: both
are ``pair.PairObjective``s (``Pair`` units, ``collate_pairs``, reference log-probs filled in
``setup`` with the initial model or read from the records, ``count`` = pairs, ``PairLoss``
with the variant's loss). **KTO** (``kto.py``) trains unpaired ``Completion`` units, each
with its prompt's *mismatched* row (another row's completion); its ``make_step_data``
estimates the KL reference point over the whole step before the step's micro-batches train,
so the estimate does not depend on how the step is split. How the next objectives plug in:

- **Reward modelling** (``reward.py``): ``Pair`` units of chosen/rejected responses; the
  loss module puts a scalar head on the model body (``sftlab.models.split_model``) and
  returns the sum of ``-log sigmoid(r_chosen - r_rejected)``; the head trains and is saved
  through ``prepare(prepared)``, which adds it to the method's parameters and ``save``.
- **PPO / GRPO**: the units are prompts; the data of a step is generated *during* the
  step by the current policy. Such an objective's ``make_step_data(run, batches) ->
  list[Batch]`` turns the step's prompt batches into trained ones (generate completions
  with ``sftlab.infer``, score them with the reward, compute advantages, collate);
  ``count`` = completion tokens (or sequences for GRPO's sequence mean), and the reward,
  KL and clip fraction are its ``metric_names``.

An objective class is registered with ``@OBJECTIVES.register("name")``; the name is the
value of ``TrainConfig.objective``, whose allowed values (``train.config.ObjectiveName``)
a unit test keeps equal to ``OBJECTIVES.names()``.
"""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from sftlab.errors import ConfigError
from sftlab.registry import Registry
from sftlab.train.data import Batch
from sftlab.types import Tokenized


class Objective:
    """Base class of the registered objectives; the defaults suit token-level objectives.

    Class attributes: ``name`` (the registry key), ``unit_type`` (the type of a training
    unit as loaded: ``Tokenized``, ``Pair``), ``unit_name`` (what the loss is a mean over,
    for the loss plot: ``"labelled token"``, ``"pair"``), ``count_key`` (the log row's key
    for the window's count: ``labelled_tokens``, ``pairs``) and ``metric_names``.
    """

    name: ClassVar[str]
    unit_type: ClassVar[type] = Tokenized
    unit_name: ClassVar[str] = "labelled token"
    count_key: ClassVar[str] = "labelled_tokens"
    metric_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config) -> None:
        self.config = config  # the run's TrainConfig

    @classmethod
    def check(cls, config) -> None:
        """Raise ``ConfigError`` for settings this objective cannot train with (called first
        in setup, before the model or data load)."""

    def load_data(self, tokenizer, *, progress: bool = False) -> tuple[list, list, str]:
        """``config.data`` -> ``(train units, eval units, summary line)``."""
        raise NotImplementedError

    def check_units(self, train: list, evaluation: list) -> None:
        """Every unit is a ``unit_type``, and there is something to train."""
        for name, items in (("train_examples", train), ("eval_examples", evaluation)):
            wrong = next((type(x).__name__ for x in items if not isinstance(x, self.unit_type)),
                         None)
            if wrong is not None:
                raise ConfigError(f"objective={self.name} trains {self.unit_type.__name__} "
                                  f"units; {name} holds a {wrong}")
        if not train:
            raise ConfigError("no training unit: nothing to train on")

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """Work on the initial model before the method prepares it (reference log-probs)."""

    def prepare(self, prepared):
        """The method's ``Prepared`` with what the objective trains besides (the reward
        model's scalar head: attached, trainable, saved). Default: unchanged."""
        return prepared

    def make_units(self, examples: list) -> list:
        """What a batch is made of (``data.make_units``: examples, or packed rows)."""
        raise NotImplementedError

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> Batch:
        """Units -> one micro-batch whose ``tensors`` go to ``loss_module(**tensors)``."""
        raise NotImplementedError

    def loss_module(self, prepared) -> nn.Module:
        """The module the loop trains: ``forward(**tensors) -> (loss_sum, count)``."""
        raise NotImplementedError

    def count(self, tensors: dict) -> int:
        """Units the loss of one collated micro-batch is a sum over."""
        raise NotImplementedError

    def make_step_data(self, run, batches: list) -> list:
        """The micro-batches the step trains on, given this process's ``batches`` of the
        step's units (``data.step_batches`` with ``collate``); called by the loop before
        the step counts them. For data that depend on the policy as it is now: KTO's
        reference point, PPO/GRPO's rollouts. Default: ``batches`` unchanged."""
        return batches

    def unit_key(self, unit) -> Any:
        """What identifies a unit's data, for the run's data fingerprint."""
        return (unit.input_ids, unit.labels)

    def preview(self, unit) -> Tokenized:
        """The example shown in the mask preview at setup."""
        return unit


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
