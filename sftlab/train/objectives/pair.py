"""What the pairwise objectives (``spin``, ``dpo``) share: ``Pair`` units, no packing,
reference log-probs of the initial model filled at setup, the loss normalised per pair.

- data: ``batch_size`` counts pairs; no packing (a pair's two sides are compared with each
  other, and the sequence log-probs assume one example per row);
- setup: reference log-probs the pairs lack are computed once with the *initial* model,
  before the method changes it (on resume too: the checkpoint loads after setup). With
  LoRA and the other additive methods that start at zero this is the adapter disabled;
- loss: ``PairLoss`` (sum of per-pair losses, pairs), normalised per pair over the step;
  the log row gets the pairs and the objective's ``metric_names`` (margin, accuracy,
  both rewards).
"""
from __future__ import annotations

from collections import Counter

from sftlab.errors import ConfigError, DataError
from sftlab.train.data import Batch, split_eval
from sftlab.train.objectives.base import Objective
from sftlab.train.pairwise import Pair, collate_pairs, count_pairs, reference_logps


class PairObjective(Objective):
    """Base of the objectives trained on ``Pair`` units; subclasses supply ``load_data``
    and ``loss_module``."""

    unit_type = Pair
    unit_name = "pair"
    count_key = "pairs"

    @classmethod
    def check(cls, config) -> None:
        """``TrainConfig`` itself refuses packing and padding-free rows for pairs (a pair's
        two sides are compared with each other, so one packed row would mix pairs)."""
        if config.method.name == "lomo":
            raise ConfigError(f"objective={cls.name} needs an optimizer method (full, lora, ...): "
                              "'lomo' updates the weights inside backward")

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """Reference log-probs for the pairs that lack them, from ``model`` as it is now
        (frozen, under the run's autocast so step 1's margin is 0). Every process scores
        the same pairs (same numbers everywhere; nothing to gather)."""
        missing = [p for p in units if p.ref_real is None or p.ref_generated is None]
        score_references(model, missing, reference_logps, f"{self.name}: reference log-probs of {len(missing)} pairs",
                         accelerator=accelerator, pad_id=pad_id, batch_size=self.config.batch_size)

    def make_units(self, examples: list) -> list:
        return list(examples)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> Batch:
        """``padding_free`` never applies: ``TrainConfig`` refuses it."""
        tensors = collate_pairs(items, pad_id)
        return Batch(tensors, int(tensors["attention_mask"].sum()), tensors["input_ids"].numel())

    def count(self, tensors: dict) -> int:
        return count_pairs(tensors)

    def unit_key(self, unit: Pair):
        sides = [(s.input_ids, s.labels) for s in (unit.real, unit.generated)]
        return sides + [unit.ref_real, unit.ref_generated]

    def preview(self, unit: Pair):
        return unit.real


def score_references(model, missing: list, score, what: str, *, accelerator, pad_id: int, batch_size: int) -> None:
    """``score(model, missing, pad_id, batch_size)`` (which fills in each unit's reference
    log-probs) with ``model`` as it is now: on the run's device, under its autocast, so step
    1 starts at a zero margin. ``what`` is printed once; nothing happens when none is missing."""
    if not missing:
        return
    if getattr(model, "hf_quantizer", None) is None:  # 4-bit weights are placed at load
        model.to(accelerator.device)
    if accelerator.is_main_process:
        print(f"{what} with the initial model", flush=True)
    with accelerator.autocast():
        score(model, missing, pad_id, batch_size)


def load_pairs(section, tokenizer, read, seed: int = 0):
    """Pairs of ``section.paths`` (``read(path, tokenizer, max_length, on_error) -> (pairs,
    dropped)``) -> ``(train, eval, summary_line)``, lists of ``Pair``. ``data.limit`` keeps
    the first N pairs; the eval split and ``eval_path`` work as for examples."""
    train, evaluation, dropped = read_units(section, tokenizer, read, seed, unit="pair")
    return train, evaluation, summary_line(train, evaluation, dropped, "pairs")


def read_units(section, tokenizer, read, seed: int = 0, *, unit: str,
               hint: str = "check data.max_length") -> tuple[list, list, Counter]:
    """``(train, eval, dropped)`` units of ``section.paths`` read by ``read(path, tokenizer,
    max_length, on_error) -> (units, dropped)``: what every objective with its own units
    (pairs, completions, prompts) shares. ``DataError`` naming the files (and ``hint``)
    when no ``unit`` is left."""
    if not section.paths:
        raise DataError("no training data: set data.paths", hint=f"data.paths=[{unit}s.jsonl]")
    train, dropped = [], Counter()
    for path in section.paths:
        units, left_out = read(path, tokenizer, section.max_length, section.on_error)
        train += units
        dropped += left_out
    train = train[:section.limit] if section.limit is not None else train
    if not train:
        reasons = ", ".join(f"{r}: {n}" for r, n in dropped.most_common()) or "no records"
        raise DataError(f"no trainable {unit} in the data set (dropped: {reasons})",
                        file=", ".join(section.paths), hint=hint)
    evaluation: list = []
    if section.eval_path:
        evaluation, _ = read(section.eval_path, tokenizer, section.max_length, section.on_error)
    elif section.eval_split > 0:
        train, evaluation = split_eval(train, section.eval_split, seed)
    return train, evaluation, dropped


def summary_line(train: list, evaluation: list, dropped: Counter, units: str, detail: str = "") -> str:
    """``data: 12 train pairs (1 dropped: {...}); 3 eval pairs`` (``detail`` after the count)."""
    left_out = f" ({sum(dropped.values())} dropped: {dict(dropped)})" if dropped else ""
    return f"data: {len(train)} train {units}{detail}{left_out}; {len(evaluation)} eval {units}"
