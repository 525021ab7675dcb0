"""Pairwise objectives: sequence log-probabilities, the SPIN loss and a small pair trainer.

SPIN (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models") trains a model ``p_θ`` to tell a human response ``y`` (real) from the
response ``y'`` its previous iterate ``p_θt`` generated for the same prompt ``x``::

    margin = (log p_θ(y|x) - log p_θt(y|x)) - (log p_θ(y'|x) - log p_θt(y'|x))
    loss   = mean( log(1 + exp(-β · margin)) )  =  mean( softplus(-β · margin) )

This is DPO's sigmoid loss (``-log σ(β · margin)``) with "chosen" = real and "rejected" =
generated, and the reference model = the previous iterate. At the first step the policy
equals the reference, the margin is 0 and the loss is ``log 2``.

The pieces, each usable alone::

    logps = sequence_logps(model, batch)                  # Tensor[B]: sum of label log-probs
    loss, metrics = spin_loss(pr, pg, rr, rg, beta=0.1)   # scalar, dict of floats
    loss_sum, n_pairs = PairLoss(model, beta=0.1)(**collate_pairs(pairs, pad_id))
    prepared, history = train_pairs(model, tokenizer, pairs, PairTrainConfig(beta=0.1))

``train_pairs`` is deliberately small: sftlab's one training loop (``sftlab/train/sft.py``)
does not have a pairwise objective yet, so this function reuses its building blocks
(``prepare_model`` from ``methods``, ``build_optimizer`` and ``lr_at`` from ``sft``) and
adds only the pair batching and the loss. It runs on one device, without gradient
accumulation, checkpoints or distributed training; folding it into the main loop needs
one hook: an ``objective: sft | spin`` field that swaps ``CausalLMLoss`` for ``PairLoss``
(same ``(loss_sum, count)`` contract, counted in pairs) and ``collate`` for
``collate_pairs`` (pair units, no packing).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sftlab.errors import ConfigError
from sftlab.train.config import OptimSection
from sftlab.train.methods import MethodConfig
from sftlab.types import IGNORE_INDEX, Tokenized


# -- the math ---------------------------------------------------------------------------

def sequence_logps(model, batch: dict, logit_offset: int = 0) -> torch.Tensor:
    """Sum of ``log p(labels[t] | tokens < t)`` over labelled positions, per row.

    ``batch``: ``input_ids``, ``labels`` (unshifted, HF convention, ``IGNORE_INDEX`` = -100)
    and ``attention_mask``, each ``LongTensor[B, T]``. Returns ``Tensor[B]`` (float32, with
    grad when the model has it). ``logit_offset`` drops positions a method prepends
    (prompt tuning's virtual tokens) so logits line up with labels.

    >>> batch = collate_padded([Tokenized([1, 5, 6], [-100, 5, 6])], pad_id=0)
    >>> sequence_logps(model, batch).shape      # row 0: log p(5 | 1) + log p(6 | 1 5)
    torch.Size([1])
    """
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   use_cache=False).logits[:, logit_offset:]
    # position t predicts labels[t + 1]
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # gather - logsumexp: no second [B, T, vocab] tensor as log_softmax would build
    picked = torch.gather(logits, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1)


def spin_loss(policy_real: torch.Tensor, policy_generated: torch.Tensor, ref_real: torch.Tensor,
              ref_generated: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """SPIN's logistic loss over a batch of pairs (all inputs ``Tensor[B]`` of sequence log-probs).

    ``loss = mean(softplus(-beta * ((policy_real - ref_real) - (policy_generated - ref_generated))))``

    Metrics (floats): ``loss``, ``margin`` (mean of the bracket), ``reward_real`` and
    ``reward_generated`` (mean of ``beta * (policy - ref)``), ``accuracy`` (share of pairs
    whose margin is positive).

    >>> z = torch.zeros(2)
    >>> round(float(spin_loss(z, z, z, z, beta=0.1)[0]), 4)   # policy == reference: log 2
    0.6931
    """
    real = policy_real - ref_real
    generated = policy_generated - ref_generated
    margin = real - generated
    loss = F.softplus(-beta * margin).mean()
    metrics = {"loss": float(loss.detach()), "margin": float(margin.detach().mean()),
               "reward_real": float(beta * real.detach().mean()),
               "reward_generated": float(beta * generated.detach().mean()),
               "accuracy": float((margin.detach() > 0).float().mean())}
    return loss, metrics


# -- pairs ------------------------------------------------------------------------------

@dataclass
class Pair:
    """One training pair: the same prompt with the human (``real``) and the model's
    (``generated``) response, tokenized with only the response labelled, and the
    reference model's sequence log-probs of both (``ref_*``, floats)."""

    real: Tokenized
    generated: Tokenized
    ref_real: float = 0.0
    ref_generated: float = 0.0
    id: str | None = None


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict:
    """Pairs -> one flat batch: ``input_ids``/``labels``/``attention_mask`` ``LongTensor[2B, T]``
    (the B real rows first, then the B generated rows, right-padded) and ``ref_real``/
    ``ref_generated`` ``Tensor[B]``. One forward pass covers both sides; the dict goes
    straight to ``PairLoss(**batch)``, as a token batch goes to ``CausalLMLoss``."""
    from sftlab.data.collate import collate_padded

    batch = collate_padded([p.real for p in pairs] + [p.generated for p in pairs], pad_id)
    batch["ref_real"] = torch.tensor([p.ref_real for p in pairs], dtype=torch.float32)
    batch["ref_generated"] = torch.tensor([p.ref_generated for p in pairs], dtype=torch.float32)
    return batch


class PairLoss(torch.nn.Module):
    """The SPIN loss as a module with ``CausalLMLoss``'s contract: ``forward(**batch) ->
    (loss_sum, count)`` where ``loss_sum`` is the SUM of per-pair losses and ``count`` the
    number of pairs, so the loop normalises once per step (by pairs, not tokens).

    >>> loss_module = PairLoss(model, beta=0.1)
    >>> loss_sum, n = loss_module(**collate_pairs(pairs, pad_id))
    >>> (loss_sum / n).backward(); loss_module.metrics["margin"]
    """

    def __init__(self, model, beta: float, logit_offset: int = 0) -> None:
        super().__init__()
        self.model, self.beta, self.logit_offset = model, beta, logit_offset
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, ref_real, ref_generated):
        logps = sequence_logps(self.model, {"input_ids": input_ids, "labels": labels,
                                            "attention_mask": attention_mask}, self.logit_offset)
        half = logps.shape[0] // 2
        loss, self.metrics = spin_loss(logps[:half], logps[half:], ref_real.to(logps.device),
                                       ref_generated.to(logps.device), self.beta)
        return loss * half, torch.tensor(half, device=logps.device)


@torch.no_grad()
def reference_logps(model, pairs: list[Pair], pad_id: int, batch_size: int = 8) -> None:
    """Fill ``ref_real``/``ref_generated`` of every pair with ``model``'s log-probs (frozen:
    eval mode, no grad). Called once per SPIN iteration, before training."""
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


# -- the trainer --------------------------------------------------------------------------

@dataclass
class PairTrainConfig:
    """Settings of ``train_pairs`` (the ``train`` section of a SPIN config)."""

    beta: float = 0.1
    """Inverse temperature of the logistic loss (SPIN's λ^-1; the paper uses 0.1)."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """``full`` or a PEFT method (``lora``, ...); LOMO is not supported here."""
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=5e-7, schedule="linear",
                                                                     warmup_ratio=0.1))
    """The SPIN paper trains at lr 5e-7 (RMSProp) with a linear schedule and 10% warm-up;
    sftlab's optimizers are AdamW or SGD, so tune ``lr`` for yours."""
    epochs: int = 2
    batch_size: int = 8
    """Pairs per optimizer step."""
    max_length: int = 1024
    """Prompt + response tokens; longer examples are truncated (a pair losing all of a
    response's labels is dropped)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be at least 1")


def train_pairs(model, tokenizer, pairs: list[Pair], config: PairTrainConfig,
                progress: bool = False):
    """Train ``model`` on ``pairs`` with the SPIN loss against their stored ``ref_*`` log-probs.

    Uses the main loop's parts: ``prepare_model`` (the method), ``build_optimizer`` and
    ``lr_at`` (schedule). Each optimizer step takes ``batch_size`` pairs (seeded shuffle per
    epoch; a last partial batch is kept); gradient norm clipped at ``optim.max_grad_norm``.
    Returns ``(prepared, history)``: the ``Prepared`` model (``.model`` trained in place) and
    one dict of ``spin_loss`` metrics + ``step``, ``lr``, ``grad_norm`` per step.
    """
    from tqdm.auto import tqdm

    from sftlab.train.methods import prepare_model
    from sftlab.train.sft import build_optimizer, lr_at

    if not pairs:
        raise ConfigError("no training pair: nothing to train on")
    torch.manual_seed(config.seed)
    prepared = prepare_model(model, config.method, tokenizer)
    if prepared.fused_backward is not None:
        raise ConfigError(f"method '{config.method.name}' updates weights inside backward; "
                          "pairwise training needs an optimizer method (full, lora, ...)")
    optimizer = build_optimizer(prepared.parameters, config.optim)
    loss_module = PairLoss(prepared.model, config.beta, prepared.logit_offset)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(prepared.model.parameters()).device
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total = steps_per_epoch * config.epochs
    history: list[dict] = []
    prepared.model.train()
    for step in tqdm(range(total), desc="spin", unit="step", disable=not progress):
        epoch, index = divmod(step, steps_per_epoch)
        if index == 0:
            order = list(range(len(pairs)))
            random.Random(f"{config.seed}:{epoch}").shuffle(order)
        chunk = [pairs[i] for i in order[index * config.batch_size:(index + 1) * config.batch_size]]
        lr = lr_at(step, total, config.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        loss_sum, count = loss_module(**batch)
        (loss_sum / count).backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        max_norm = config.optim.max_grad_norm if config.optim.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "epoch": epoch, "lr": lr, "grad_norm": grad_norm,
                        **loss_module.metrics})
    return prepared, history
