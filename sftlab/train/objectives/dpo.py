"""``objective: dpo``: Direct Preference Optimization (Rafailov et al. 2023) on preference pairs.

SPIN's pipeline (``sftlab.train.objectives.pair``) on given chosen/rejected pairs: the data
are preference pairs of ``data.paths`` in TRL's, LLaMA-Factory's or OpenAI's layout
(``sftlab.data.preference``), tokenized with only the final assistant turn labelled; the
reference is the initial model (with LoRA: the adapter disabled) or the records' own
log-probs (``dpo.reference``); the loss is ``PairLoss`` with ``dpo.loss_type`` (``sigmoid``,
``ipo``) and ``dpo.label_smoothing`` (cDPO). The log row gets the pairs, the margin, the
accuracy and ``reward_chosen``/``reward_rejected``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from sftlab.data.preference import read_preference_pairs
from sftlab.errors import ConfigError
from sftlab.train.objectives.base import OBJECTIVES
from sftlab.train.objectives.pair import PairObjective, load_pairs
from sftlab.train.pairwise import Pair, PairLoss, tokenize_pair


@OBJECTIVES.register("dpo")
class DPOObjective(PairObjective):
    name = "dpo"
    metric_names = ("margin", "accuracy", "reward_chosen", "reward_rejected")

    def load_data(self, tokenizer, *, progress: bool = False):
        return load_pairs(self.config.data, tokenizer, self.read, self.config.seed)

    def read(self, path: str, tokenizer, max_length: int, on_error: str):
        """``read_pairs``'s contract for preference files (``dpo.reference=records``: each
        row must carry its reference log-probs)."""
        return read_dpo_pairs(path, tokenizer, max_length, on_error,
                              require_reference=self.config.dpo.reference == "records")

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """``dpo.reference``: ``initial`` recomputes every pair's reference log-probs with
        the initial model, ``records`` refuses pairs without them, ``auto`` fills the
        missing ones."""
        reference = self.config.dpo.reference
        if reference == "records" and any(p.ref_real is None or p.ref_generated is None
                                          for p in units):
            raise ConfigError("dpo.reference=records, but some pairs have no reference "
                              "log-probs; give them, or set dpo.reference=auto")
        if reference == "initial":
            for pair in units:
                pair.ref_real = pair.ref_generated = None
        super().setup(model, units, accelerator=accelerator, pad_id=pad_id)

    def loss_module(self, prepared) -> PairLoss:
        section = self.config.dpo
        return PairLoss(prepared.model, section.beta, prepared.logit_offset,
                        loss_type=section.loss_type, label_smoothing=section.label_smoothing,
                        sides=("chosen", "rejected"))


def read_dpo_pairs(path: str | Path, tokenizer, max_length: int, on_error: str = "fail", *,
                   require_reference: bool = False) -> tuple[list[Pair], Counter]:
    """A preference file (``sftlab.data.preference``) -> ``(pairs, dropped)``: tokenized
    ``Pair``s (``real`` = chosen, ``generated`` = rejected) and a ``Counter`` of the reasons
    of pairs left out (a side trains nothing within ``max_length``; a bad row with
    ``on_error="skip"``). A bad row raises ``DataError`` naming file and line otherwise."""
    preferences, dropped = read_preference_pairs(path, on_error,
                                                 require_reference=require_reference)
    pairs = []
    for preference in preferences:
        pair, reason = tokenize_pair(preference.prompt, preference.chosen, preference.rejected,
                                     tokenizer, max_length, preference.reference, preference.id)
        if pair is None:
            dropped[reason] += 1
        else:
            pairs.append(pair)
    return pairs, dropped
