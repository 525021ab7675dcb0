"""``objective: spin``: SPIN's pairwise loss (Chen et al. 2024) on ``Pair`` units.

The math, the pair type and the pair records are ``sftlab.train.pairwise``; the hooks every
pairwise objective shares (no packing, reference log-probs of the initial model at setup,
per-pair normalisation) are ``sftlab.train.objectives.pair``. This file adds SPIN's data
(pair records of ``data.paths``, ``read_pairs``, as ``sftlab synth spin`` writes them) and
its loss (``PairLoss`` with ``spin.beta``; the rewards are named ``reward_real`` and
``reward_generated``).
"""
from __future__ import annotations

from sftlab.train.objectives.base import OBJECTIVES
from sftlab.train.objectives.pair import PairObjective, load_pairs
from sftlab.train.pairwise import PairLoss, read_pairs


@OBJECTIVES.register("spin")
class SpinObjective(PairObjective):
    name = "spin"
    metric_names = ("margin", "accuracy", "reward_real", "reward_generated")

    def load_data(self, tokenizer, *, progress: bool = False):
        return load_pairs(self.config.data, tokenizer, read_pairs, self.config.seed)

    def loss_module(self, prepared) -> PairLoss:
        return PairLoss(prepared.model, self.config.spin.beta, prepared.logit_offset)
