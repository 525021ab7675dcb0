"""``objective: kto``: Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on unpaired data.

Each unit is one completion ``y`` of a prompt ``x`` labelled desirable or undesirable
(``sftlab.data.unpaired``: TRL's ``prompt``/``completion``/``label``, LLaMA-Factory's
``kto_tag`` rows). With ``r = log π(y|x) - log π_ref(y|x)`` (sequence log-probs of the
completion tokens) and the reference point ``z0``::

    desirable:    loss = desirable_weight   · (1 - σ(β · (r - z0)))
    undesirable:  loss = undesirable_weight · (1 - σ(β · (z0 - r)))
    z0 = max(0, mean over the step's units of log π(y'|x) - log π_ref(y'|x))   (detached)

``z0`` estimates KL(π || π_ref) from *mismatched* pairs: each unit carries its prompt with
another row's completion ``y'`` (the next row of its file, fixed at load time, as TRL's
KL dataset shifts completions by one). The estimate is taken over the whole optimizer
step, on every process, before the step's micro-batches train (``make_step_data``): the
step's loss is then the same however its units are split into micro-batches or processes
(TRL estimates it per micro-batch, which makes accumulation change the numbers). It is
detached and clamped at 0, as in the paper.

The reference is the initial model (with LoRA and the other methods that start as the
identity: the adapter disabled), its log-probs computed once at setup. The step's loss is
the mean over completions; the log row gets ``completions``, ``kl`` (z0),
``reward_chosen`` and ``reward_rejected`` (means of ``β·r`` over the step's desirable and
undesirable completions). The paper advises ``desirable_weight · n_desirable /
(undesirable_weight · n_undesirable)`` in [1, 4/3].

    losses, metrics = kto_loss(policy, reference, desirable, kl=torch.tensor(0.0), beta=0.1)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from sftlab.data.chat import tokenize_conversations
from sftlab.data.collate import collate_padded
from sftlab.data.unpaired import UnpairedExample, read_unpaired
from sftlab.errors import ConfigError, DataError
from sftlab.train.data import Batch
from sftlab.train.objectives.base import OBJECTIVES, Objective
from sftlab.train.objectives.pair import read_units, score_references, summary_line
from sftlab.train.pairwise import sequence_logps
from sftlab.types import Conversation, Message, Tokenized


# -- the math ---------------------------------------------------------------------------

def kto_loss(policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor,
             kl: torch.Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Per-completion KTO losses ``Tensor[B]`` and the rewards ``β·(policy - reference)``
    (``Tensor[B]``, detached) for sequence log-probs ``policy``/``reference`` ``Tensor[B]``,
    the labels ``desirable`` ``BoolTensor[B]`` and the reference point ``kl`` (a detached
    0-d tensor, already clamped at 0).

    >>> z = torch.zeros(2)
    >>> losses, rewards = kto_loss(z, z, torch.tensor([True, False]), torch.tensor(0.0), 0.1)
    >>> losses.tolist(), rewards.tolist()       # policy == reference: 1 - σ(0) each
    ([0.5, 0.5], [0.0, 0.0])
    """
    ratio = policy - reference
    kl = kl.to(ratio)
    chosen = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    rejected = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, chosen, rejected), beta * ratio.detach()


def reference_point(policy_mismatched: torch.Tensor, reference_mismatched: torch.Tensor) -> tuple:
    """``(sum, count)`` of ``log π(y'|x) - log π_ref(y'|x)`` over mismatched rows (float64,
    detached): summed over the step's micro-batches and processes, then ``z0 =
    max(0, sum / count)``."""
    difference = (policy_mismatched - reference_mismatched.to(policy_mismatched)).detach()
    return difference.double().sum(), difference.shape[0]


# -- units ------------------------------------------------------------------------------

@dataclass
class Completion:
    """One labelled completion, tokenized with only the completion labelled: ``example``
    is its prompt + completion, ``mismatched`` the same prompt with another row's
    completion (for ``z0``); ``ref``/``ref_mismatched`` the reference model's sequence
    log-probs of both (``None`` until setup fills them). ``len()`` is the tokens of both."""

    example: Tokenized
    mismatched: Tokenized
    desirable: bool
    ref: float | None = None
    ref_mismatched: float | None = None
    id: str | None = None

    def __len__(self) -> int:
        return len(self.example) + len(self.mismatched)


def tokenize_completions(rows: list[UnpairedExample], tokenizer,
                         max_length: int) -> tuple[list[Completion], Counter]:
    """Rows -> ``(Completion units, dropped reasons)``. Row ``i``'s mismatched completion is
    row ``i + 1``'s (the last row takes the first's); a unit either of whose two sequences
    trains nothing within ``max_length`` is dropped and counted."""
    units, dropped = [], Counter()
    for index, row in enumerate(rows):
        other = rows[(index + 1) % len(rows)].completion
        sides = [Conversation(row.prompt + [Message("assistant", text)])
                 for text in (row.completion, other)]
        result = tokenize_conversations(sides, tokenizer, max_length=max_length,
                                        strategy="last_assistant")
        if len(result.examples) != 2:
            dropped[f"completion dropped: {result.dropped_ids[0][1]}"] += 1
            continue
        units.append(Completion(result.examples[0], result.examples[1], row.desirable, id=row.id))
    return units, dropped


def read_completions(path: str | Path, tokenizer, max_length: int,
                     on_error: str = "fail") -> tuple[list[Completion], Counter]:
    """An unpaired file (``sftlab.data.unpaired``) -> ``(Completion units, dropped)``."""
    rows, dropped = read_unpaired(path, on_error)
    units, left_out = tokenize_completions(rows, tokenizer, max_length)
    return units, dropped + left_out


def collate_completions(units: list[Completion], pad_id: int) -> dict:
    """Units -> ``input_ids``/``labels``/``attention_mask`` ``LongTensor[B, T]`` (the
    completions), the same three keys prefixed ``kl_`` (the mismatched rows), ``reference``
    and ``ref_mismatched`` ``Tensor[B]`` (float32; zeros while unset) and ``desirable``
    ``BoolTensor[B]``."""
    batch = collate_padded([u.example for u in units], pad_id)
    mismatched = collate_padded([u.mismatched for u in units], pad_id)
    batch.update({f"kl_{key}": value for key, value in mismatched.items()})
    for key, attribute in (("reference", "ref"), ("ref_mismatched", "ref_mismatched")):
        values = [getattr(u, attribute) for u in units]
        batch[key] = torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32)
    batch["desirable"] = torch.tensor([u.desirable for u in units], dtype=torch.bool)
    return batch


# -- the loss module --------------------------------------------------------------------

class KTOLoss(torch.nn.Module):
    """``kto_loss`` with the loop's contract: ``forward(**batch) -> (loss_sum, completions)``.

    ``kl`` (z0) and ``desirable_share`` come from ``KTOObjective.make_step_data`` (the whole
    step's); without them (evaluation) z0 is estimated from the micro-batch's own ``kl_*``
    rows. ``metrics``: ``kl``, ``reward_chosen``, ``reward_rejected``, scaled so that the
    loop's count-weighted sum over the step is the mean over its desirable (undesirable)
    completions.
    """

    def __init__(self, model, beta: float, desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0, logit_offset: int = 0) -> None:
        super().__init__()
        self.model, self.beta, self.logit_offset = model, beta, logit_offset
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, reference, ref_mismatched, desirable,
                kl=None, desirable_share=None, kl_input_ids=None, kl_labels=None,
                kl_attention_mask=None):
        if kl is None:  # evaluation: the micro-batch's own estimate
            with torch.no_grad():
                mismatched = sequence_logps(self.model, {
                    "input_ids": kl_input_ids, "labels": kl_labels,
                    "attention_mask": kl_attention_mask}, self.logit_offset)
            total, count = reference_point(mismatched, ref_mismatched)
            kl = (total / count).clamp(min=0)
        logps = sequence_logps(self.model, {"input_ids": input_ids, "labels": labels,
                                            "attention_mask": attention_mask}, self.logit_offset)
        losses, rewards = kto_loss(logps, reference.to(logps), desirable, kl, self.beta,
                                   self.desirable_weight, self.undesirable_weight)
        n = losses.shape[0]
        share = desirable.double().mean() if desirable_share is None else desirable_share.double()
        chosen, rejected = rewards[desirable].double().sum(), rewards[~desirable].double().sum()
        self.metrics = {"kl": float(kl),
                        "reward_chosen": float(chosen / (n * share)) if share > 0 else 0.0,
                        "reward_rejected": float(rejected / (n * (1 - share))) if share < 1 else 0.0}
        return losses.sum(), torch.tensor(n, device=logps.device)


# -- the objective ----------------------------------------------------------------------

@OBJECTIVES.register("kto")
class KTOObjective(Objective):
    name = "kto"
    unit_type = Completion
    unit_name = "completion"
    count_key = "completions"
    metric_names = ("kl", "reward_chosen", "reward_rejected")

    @classmethod
    def check(cls, config) -> None:
        if config.method.name == "lomo":
            raise ConfigError("objective=kto needs an optimizer method (full, lora, ...): "
                              "'lomo' updates the weights inside backward")

    def load_data(self, tokenizer, *, progress: bool = False):
        """``data.paths`` -> ``(train, eval, summary)`` lists of ``Completion``; ``data.limit``
        keeps the first N; the eval split and ``eval_path`` work as for examples."""
        train, evaluation, dropped = read_units(self.config.data, tokenizer, read_completions, self.config.seed,
                                                unit="completion")
        desirable = sum(u.desirable for u in train)
        detail = f" ({desirable} desirable, {len(train) - desirable} undesirable)"
        return train, evaluation, summary_line(train, evaluation, dropped, "completions", detail)

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """Reference log-probs of every unit's two sequences, from ``model`` as it is now
        (the initial model, frozen, under the run's autocast: step 1 has r = z0 = 0)."""
        missing = [u for u in units if u.ref is None or u.ref_mismatched is None]
        score_references(model, missing, reference_logps, f"kto: reference log-probs of {len(missing)} completions",
                         accelerator=accelerator, pad_id=pad_id, batch_size=self.config.batch_size)

    def make_units(self, examples: list) -> list:
        return list(examples)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> Batch:
        """``padding_free`` never applies: ``TrainConfig`` refuses it."""
        tensors = collate_completions(items, pad_id)
        tokens = int(tensors["attention_mask"].sum() + tensors["kl_attention_mask"].sum())
        return Batch(tensors, tokens, 2 * tensors["input_ids"].numel())

    def make_step_data(self, run, batches: list) -> list:
        """z0 of the whole step (its mismatched rows on every process, the current policy,
        no grad) and its share of desirable completions, put into every micro-batch in
        place of the ``kl_*`` rows."""
        acc, model = run.accelerator, run.prepared.model
        totals = torch.zeros(3, dtype=torch.float64, device=acc.device)
        with torch.no_grad(), acc.autocast():
            for batch in batches:
                tensors = batch.tensors
                rows = {key: tensors.pop(f"kl_{key}").to(acc.device)
                        for key in ("input_ids", "labels", "attention_mask")}
                logps = sequence_logps(model, rows, run.prepared.logit_offset)
                total, count = reference_point(logps, tensors["ref_mismatched"].to(acc.device))
                desirable = tensors["desirable"].sum().to(acc.device)
                totals += torch.stack([total, torch.tensor(count, device=acc.device).double(),
                                       desirable.double()])
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="sum")
        kl = (totals[0] / totals[1]).clamp(min=0).cpu()  # float64: kto_loss casts it
        share = (totals[2] / totals[1]).cpu()
        for batch in batches:
            batch.tensors["kl"], batch.tensors["desirable_share"] = kl, share
        return batches

    def loss_module(self, prepared) -> KTOLoss:
        section = self.config.kto
        return KTOLoss(prepared.model, section.beta, section.desirable_weight,
                       section.undesirable_weight, prepared.logit_offset)

    def count(self, tensors: dict) -> int:
        return int(tensors["desirable"].shape[0])

    def unit_key(self, unit: Completion):
        return [(s.input_ids, s.labels) for s in (unit.example, unit.mismatched)] + \
            [unit.desirable, unit.ref, unit.ref_mismatched]

    def preview(self, unit: Completion):
        return unit.example


@torch.no_grad()
def reference_logps(model, units: list[Completion], pad_id: int, batch_size: int = 8) -> None:
    """Fill ``ref``/``ref_mismatched`` of every unit with ``model``'s log-probs (frozen:
    eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(units), batch_size):
        chunk = units[start:start + batch_size]
        batch = collate_padded([u.example for u in chunk] + [u.mismatched for u in chunk], pad_id)
        logps = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}).cpu()
        for i, unit in enumerate(chunk):
            unit.ref, unit.ref_mismatched = float(logps[i]), float(logps[len(chunk) + i])
    model.train(was_training)
