"""The pairwise objectives (SPIN, DPO): sequence log-probabilities, the loss, pair records.

SPIN (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models") trains a model ``p_θ`` to tell a human response ``y`` (real) from the
response ``y'`` its previous iterate ``p_θt`` generated for the same prompt ``x``::

    margin = (log p_θ(y|x) - log p_θt(y|x)) - (log p_θ(y'|x) - log p_θt(y'|x))
    loss   = mean( log(1 + exp(-β · margin)) )  =  mean( softplus(-β · margin) )

This is DPO's sigmoid loss (``-log σ(β · margin)``) with "chosen" = real and "rejected" =
generated, and the reference model = the previous iterate. At the first step the policy
equals the reference, the margin is 0 and the loss is ``log 2``. ``objective: dpo`` trains
the same ``Pair``s and ``PairLoss`` on given preference pairs (``preference_loss``: DPO's
sigmoid, cDPO's label smoothing, IPO), the reference being the initial model.

The pieces, each usable alone::

    logps = sequence_logps(model, batch)                  # Tensor[B]: sum of label log-probs
    loss, metrics = spin_loss(pr, pg, rr, rg, beta=0.1)   # scalar, dict of floats
    loss_sum, n_pairs = PairLoss(model, beta=0.1)(**collate_pairs(pairs, pad_id))
    pairs, dropped = read_pairs("pairs.jsonl", tokenizer, max_length=1024)

How it is wired: there is no separate trainer. sftlab's one training loop
(``sftlab/train/sft.py``) trains it when ``objective: spin`` (``TrainConfig``), through the
objective ``sftlab.train.objectives.spin``: the training units are ``Pair``s
(``read_pairs`` of ``data.paths``, or passed in-process), collated by ``collate_pairs`` (no
packing), the loss module is ``PairLoss`` (the same ``(loss_sum, count)`` contract as
``CausalLMLoss``, counted in pairs: ``count_pairs``), and the loop normalises by the pairs
of the whole optimizer step exactly as it does by tokens
(``sftlab.train.loss.step_token_count``). Missing reference log-probs are filled once at
setup by ``reference_logps`` with the initial model. ``sftlab synth spin``
(``sftlab/synth/spin.py``) runs that loop once per iteration.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from sftlab.data.chat import tokenize_conversations
from sftlab.data.collate import collate_padded
from sftlab.data.formats import parse_messages
from sftlab.errors import DataError
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized


# -- the math ---------------------------------------------------------------------------

def sequence_logps(model, batch: dict, logit_offset: int = 0) -> torch.Tensor:
    """Sum of ``log p(labels[t] | tokens < t)`` over labelled positions, per row.

    ``batch``: ``input_ids``, ``labels`` (unshifted, HF convention, ``IGNORE_INDEX`` = -100)
    and ``attention_mask``, each ``LongTensor[B, T]``. Returns ``Tensor[B]`` (float32, float64
    for a float64 model; with grad when the model has it). ``logit_offset`` drops positions
    a method prepends (prompt tuning's virtual tokens) so logits line up with labels.

    >>> batch = collate_padded([Tokenized([1, 5, 6], [-100, 5, 6])], pad_id=0)
    >>> sequence_logps(model, batch).shape      # row 0: log p(5 | 1) + log p(6 | 1 5)
    torch.Size([1])
    """
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   use_cache=False).logits[:, logit_offset:]
    # position t predicts labels[t + 1]; float32 at least, float64 stays float64 (the
    # exact normalisation tests compare float64 runs)
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # gather - logsumexp: no second [B, T, vocab] tensor as log_softmax would build
    picked = torch.gather(logits, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1)


LossType = Literal["sigmoid", "ipo"]


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
                    loss_type: LossType = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The pairwise preference loss over a batch of pairs (inputs ``Tensor[B]`` of sequence
    log-probs), with ``margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``:

    - ``sigmoid`` (DPO, Rafailov et al. 2023; SPIN): ``-log σ(β·margin)``; with
      ``label_smoothing`` ε (conservative DPO, the labels flipped with probability ε):
      ``(1 - ε)·(-log σ(β·margin)) + ε·(-log σ(-β·margin))``;
    - ``ipo`` (Azar et al. 2023): ``(margin - 1/(2β))²`` (on sequence sums, as in the paper;
      TRL averages the log-probs per token first).

    Returns the mean over pairs and metrics (floats): ``loss``, ``margin`` (mean),
    ``reward_chosen`` and ``reward_rejected`` (means of ``β·(policy - ref)``), ``accuracy``
    (share of pairs whose margin is positive).

    >>> z = torch.zeros(2)
    >>> round(float(preference_loss(z, z, z, z, beta=0.1)[0]), 4)   # policy == reference: log 2
    0.6931
    """
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    margin = chosen - rejected
    if loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:  # softplus(-x) = -log σ(x), stable for any margin
        losses = (1 - label_smoothing) * F.softplus(-beta * margin)
        if label_smoothing:
            losses = losses + label_smoothing * F.softplus(beta * margin)
    loss = losses.mean()
    metrics = {"loss": float(loss.detach()), "margin": float(margin.detach().mean()),
               "reward_chosen": float(beta * chosen.detach().mean()),
               "reward_rejected": float(beta * rejected.detach().mean()),
               "accuracy": float((margin.detach() > 0).float().mean())}
    return loss, metrics


def spin_loss(policy_real: torch.Tensor, policy_generated: torch.Tensor, ref_real: torch.Tensor,
              ref_generated: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """SPIN's logistic loss: ``preference_loss``'s ``sigmoid`` with chosen = real and
    rejected = generated, its rewards named ``reward_real`` and ``reward_generated``.

    >>> z = torch.zeros(2)
    >>> round(float(spin_loss(z, z, z, z, beta=0.1)[0]), 4)   # policy == reference: log 2
    0.6931
    """
    loss, metrics = preference_loss(policy_real, policy_generated, ref_real, ref_generated, beta)
    return loss, rename_rewards(metrics, ("real", "generated"))


def rename_rewards(metrics: dict, sides: tuple[str, str]) -> dict:
    """``reward_chosen``/``reward_rejected`` -> ``reward_<sides[0]>``/``reward_<sides[1]>``."""
    names = {"reward_chosen": f"reward_{sides[0]}", "reward_rejected": f"reward_{sides[1]}"}
    return {names.get(key, key): value for key, value in metrics.items()}


# -- pairs ------------------------------------------------------------------------------

@dataclass
class Pair:
    """One preference pair: the same prompt with the preferred and the dispreferred
    response, tokenized with only the response labelled, and the reference model's
    sequence log-probs of both (``ref_*``, floats; ``None`` until ``reference_logps`` fills
    them). The fields carry SPIN's names: ``real`` is DPO's chosen, ``generated`` its
    rejected (``objective: dpo`` and ``objective: spin`` train the same type).
    ``len(pair)`` is the tokens of both sides."""

    real: Tokenized
    generated: Tokenized
    ref_real: float | None = None
    ref_generated: float | None = None
    id: str | None = None

    def __len__(self) -> int:
        return len(self.real) + len(self.generated)


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict:
    """Pairs -> one flat batch: ``input_ids``/``labels``/``attention_mask`` ``LongTensor[2B, T]``
    (the B real rows first, then the B generated rows, right-padded) and ``ref_real``/
    ``ref_generated`` ``Tensor[B]`` (float32, which every device has; ``PairLoss`` casts
    them to the log-prob dtype; zeros while unset: ``reference_logps`` reads none). One
    forward pass covers both sides; the dict goes straight to ``PairLoss(**batch)``, as a
    token batch goes to ``CausalLMLoss``."""
    batch = collate_padded([p.real for p in pairs] + [p.generated for p in pairs], pad_id)
    for key in ("ref_real", "ref_generated"):
        values = [getattr(p, key) for p in pairs]
        batch[key] = torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32)
    return batch


def count_pairs(batch: dict) -> int:
    """Pairs in a ``collate_pairs`` batch: the unit the loop normalises the SPIN loss by
    (``sftlab.train.loss.step_token_count(batches, count=count_pairs)``)."""
    return int(batch["ref_real"].shape[0])


class PairLoss(torch.nn.Module):
    """The pairwise loss (``preference_loss``) as a module with ``CausalLMLoss``'s contract:
    ``forward(**batch) -> (loss_sum, count)`` where ``loss_sum`` is the SUM of per-pair
    losses and ``count`` the number of pairs, so the loop normalises once per step (by
    pairs, not tokens). ``metrics`` holds the last call's metrics (means over its pairs),
    the rewards named after ``sides`` (SPIN's ``real``/``generated`` by default).

    >>> pairs = [Pair(Tokenized([1, 5, 6], [-100, 5, 6]), Tokenized([1, 7, 8], [-100, 7, 8]),
    ...               ref_real=-12.0, ref_generated=-12.0)]
    >>> loss_module = PairLoss(model, beta=0.1)
    >>> loss_sum, n = loss_module(**collate_pairs(pairs, pad_id=0))
    >>> (loss_sum / n).backward(); sorted(loss_module.metrics)
    ['accuracy', 'loss', 'margin', 'reward_generated', 'reward_real']
    """

    def __init__(self, model, beta: float, logit_offset: int = 0, *,
                 loss_type: LossType = "sigmoid", label_smoothing: float = 0.0,
                 sides: tuple[str, str] = ("real", "generated")) -> None:
        super().__init__()
        self.model, self.beta, self.logit_offset = model, beta, logit_offset
        self.loss_type, self.label_smoothing, self.sides = loss_type, label_smoothing, sides
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, ref_real, ref_generated):
        logps = sequence_logps(self.model, {"input_ids": input_ids, "labels": labels,
                                            "attention_mask": attention_mask}, self.logit_offset)
        half = logps.shape[0] // 2
        loss, metrics = preference_loss(logps[:half], logps[half:], ref_real.to(logps),
                                        ref_generated.to(logps), self.beta, self.loss_type,
                                        self.label_smoothing)
        self.metrics = rename_rewards(metrics, self.sides)
        return loss * half, torch.tensor(half, device=logps.device)


@torch.no_grad()
def reference_logps(model, pairs: list[Pair], pad_id: int, batch_size: int = 8) -> None:
    """Fill ``ref_real``/``ref_generated`` of every pair with ``model``'s log-probs (frozen:
    eval mode, no grad). Called once per SPIN iteration, before training; the loop calls
    it at setup for pairs whose record had none."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate_pairs(chunk, pad_id)
        logps = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}).cpu()
        for i, pair in enumerate(chunk):
            pair.ref_real, pair.ref_generated = float(logps[i]), float(logps[len(chunk) + i])
    model.train(was_training)




# -- pair records (what ``sftlab synth spin`` writes, what ``objective: spin`` reads) ----------

def read_pairs(path: str | Path, tokenizer, max_length: int, on_error: str = "fail"):
    """A JSONL file of pair records -> ``(pairs, dropped)``: tokenized ``Pair``s and a
    ``Counter`` of reasons for records left out (too long, or bad with ``on_error="skip"``).

    One record per line, the layout ``sftlab synth spin`` writes (``meta`` optional;
    without reference log-probs the loop computes them with the initial model)::

        {"id": "9c0f", "prompt": [{"role": "user", "content": "Describe ..."}],
         "chosen": [{"role": "assistant", "content": "human answer"}],
         "rejected": [{"role": "assistant", "content": "model answer"}],
         "meta": {"ref_logp_chosen": -812.4, "ref_logp_rejected": -95.1}}

    ``prompt`` may also be a string (one user turn) and ``chosen``/``rejected`` strings.
    A malformed record raises ``DataError`` naming file, line and field (or is counted
    and skipped with ``on_error="skip"``).
    """
    pairs, dropped = [], Counter()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = _parse_record(line)
                pair, reason = pair_from_record(record, tokenizer, max_length)
            except DataError as exc:
                if on_error != "skip":  # the same error, now with its place
                    raise DataError(exc.message, file=str(path), line=number, field=exc.field,
                                    hint=exc.hint, reason=exc.reason) from None
                dropped[f"bad record: {exc.reason}"] += 1
                continue
            if pair is None:
                dropped[reason] += 1
            else:
                pairs.append(pair)
    return pairs, dropped


def pair_from_record(record: dict, tokenizer, max_length: int) -> tuple[Pair | None, str | None]:
    """One pair record -> ``(Pair, None)``, or ``(None, reason)`` when a side trains nothing
    after truncation to ``max_length``. Both sides are the prompt + that response, with
    only the response labelled; ``meta.ref_logp_*`` become ``ref_real``/``ref_generated``."""
    prompt = _messages(record, "prompt")
    return tokenize_pair(prompt, _response(record, "chosen"), _response(record, "rejected"),
                         tokenizer, max_length, _reference(record), record.get("id"))


def tokenize_pair(prompt: list[Message], chosen: str, rejected: str, tokenizer, max_length: int,
                  reference: tuple[float | None, float | None] = (None, None),
                  id: str | None = None) -> tuple[Pair | None, str | None]:
    """``prompt`` (every turn before the final assistant turn) + each response -> ``(Pair,
    None)``, only the final response labelled; or ``(None, reason)`` when a side trains
    nothing after truncation to ``max_length``."""
    sides = [Conversation(prompt + [Message("assistant", text)]) for text in (chosen, rejected)]
    result = tokenize_conversations(sides, tokenizer, max_length=max_length,
                                    strategy="last_assistant")
    if len(result.examples) != 2:  # one reason per pair: the first dropped side's
        return None, f"pair dropped: {result.dropped_ids[0][1]}"
    return Pair(result.examples[0], result.examples[1], *reference, id=id), None


def _parse_record(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", reason="invalid JSON",
                        hint="pair records are JSONL: one JSON object per line") from None
    if not isinstance(record, dict):
        raise DataError("a pair record must be a JSON object", reason="not an object")
    return record


def _messages(record: dict, key: str) -> list[Message]:
    """``record[key]``: a non-empty string (one user turn) or OpenAI-style messages, parsed
    by sftlab's one message parser (``data.formats.parse_messages``)."""
    value = record.get(key)
    if isinstance(value, str) and value:
        return [Message("user", value)]
    hint = f"'{key}': a string or a list of {{role, content}} messages"
    if not isinstance(value, list) or not value:
        raise DataError("missing or malformed" if value is None else "malformed", field=key,
                        hint=hint, reason=f"bad {key}")
    try:
        return parse_messages(value, key)
    except DataError as exc:  # a pair error names the record's key, as every reason counts it
        raise DataError(exc.message, field=key, hint=hint, reason=f"bad {key}") from None


def _response(record: dict, key: str) -> str:
    """``chosen``/``rejected``: a string, or messages whose last one is the assistant's."""
    value = record.get(key)
    if isinstance(value, str):
        return value
    last = _messages(record, key)[-1]
    if last.role != "assistant":
        raise DataError(f"the last message is {last.role!r}, not 'assistant'", field=key,
                        reason=f"bad {key}")
    return last.content


def _reference(record: dict) -> tuple[float | None, float | None]:
    """``meta.ref_logp_chosen`` / ``meta.ref_logp_rejected``: both numbers, or both absent."""
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError("must be an object", field="meta", reason="bad meta")
    keys = ("ref_logp_chosen", "ref_logp_rejected")
    values = [meta.get(k) for k in keys]
    if values == [None, None]:
        return None, None
    for key, value in zip(keys, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"must be a number (got {value!r}); give both reference log-probs "
                            "or neither", field=f"meta.{key}", reason=f"bad meta.{key}")
    return float(values[0]), float(values[1])
