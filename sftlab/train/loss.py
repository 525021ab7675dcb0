"""Token-level cross-entropy on labelled positions only, normalised in one place.

Three decisions live here, each tested in ``tests/unit/train/test_loss.py`` and
``tests/invariants/test_train_invariants.py``:

1. **The LM head runs only where a label is.** The model body returns hidden states
   ``[batch, seq, hidden]``; we gather the positions whose *next* label is not
   ``IGNORE_INDEX`` (``[n_labelled, hidden]``) and project them through the output
   embedding in chunks of ``chunk_size`` rows. A full ``[tokens x vocab]`` logits tensor
   is never built: each chunk's softmax gradient is folded into the hidden-state and
   weight gradients during the forward pass (``_LinearCrossEntropy``), so the peak
   extra memory is one ``[chunk_size x vocab]`` block, not ``[tokens x vocab]`` twice.
2. **Labels are unshifted** (Hugging Face convention): position ``t`` predicts
   ``labels[t + 1]``. In packed rows a label at the first position of an example
   (``position_ids == 0``) is never trained: the previous token belongs to another example.
3. **Normalisation is by the total number of labelled tokens in the whole optimizer
   step**, across gradient-accumulation micro-batches and processes
   (``step_token_count``), so batch 8 x accumulation 1 equals batch 1 x accumulation 8 and
   two processes equal one. Each micro-batch returns the *sum* of its token losses;
   ``normaliser`` divides by the step's count once. Another objective counts other units
   through the same code (``count=objective.count``, ``sftlab.train.objectives``): SPIN
   counts pairs, so its loss is the mean over the step's pairs.

Example::

    loss_module = CausalLMLoss(model)            # wraps any causal LM, PEFT or not
    loss_sum, n = loss_module(input_ids, labels)  # sum over labelled tokens, count
    (loss_sum * normaliser(total_tokens_in_step, world_size)).backward()
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sftlab.models import split_model
from sftlab.types import IGNORE_INDEX


def next_token_targets(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T]`` unshifted labels -> ``[B, T]`` targets for each position (what it predicts).

    ``targets[b, t] = labels[b, t + 1]``; the last position predicts nothing. In a packed
    row the first token of each example (``position_ids == 0``) is not a target.

    >>> next_token_targets(torch.tensor([[-100, 5, 6, -100]])).tolist()
    [[5, 6, -100, -100]]
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        starts = position_ids[:, 1:] == 0
        targets[:, :-1] = targets[:, :-1].masked_fill(starts, IGNORE_INDEX)
    return targets


def count_labelled(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> int:
    """Number of positions that carry a loss (the same rule the loss itself applies)."""
    return int((next_token_targets(labels, position_ids) != IGNORE_INDEX).sum())


def batch_tokens(batch: dict) -> int:
    """Labelled tokens of one collated micro-batch (the token loss's unit)."""
    return count_labelled(batch["labels"], batch.get("position_ids"))


def step_token_count(micro_batches: list[dict], accelerator=None, count=batch_tokens) -> int:
    """Labelled tokens in one optimizer step: over all its micro-batches and all processes.

    The count is all-reduced *before* any backward pass, so every process divides by the
    same global number and the step's gradient is the mean over every labelled token.
    ``count(batch) -> int`` is the loss's unit per micro-batch: ``batch_tokens`` (default),
    or an objective's ``count`` (pairs for SPIN: the step's mean over pairs).
    """
    local = sum(count(b) for b in micro_batches)
    if accelerator is None or accelerator.num_processes == 1:
        return local
    count = torch.tensor([local], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(count, reduction="sum").item())


def normaliser(step_tokens: int, world_size: int = 1) -> float:
    """Factor that turns a micro-batch's loss *sum* into its share of the step's mean.

    Data-parallel wrappers (DDP, FSDP, DeepSpeed) *average* gradients over processes,
    so the factor carries ``world_size`` to turn their average back into a sum.
    """
    return world_size / max(step_tokens, 1)


class CausalLMLoss(nn.Module):
    """Wraps a causal LM; ``forward`` returns ``(sum of token losses, labelled tokens)``.

    The wrapper is what accelerate prepares (DDP/FSDP wrap *it*), so distributed hooks see
    the forward pass even though we call the model body and the output embedding
    separately. Shapes: ``input_ids``/``labels``/``position_ids``/``attention_mask``
    ``[B, T]``; outputs are 0-d tensors.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.body, self.head = split_model(model)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, segments=None):
        """``segments``: packed rows' block boundaries, for ``sftlab.train.attention``
        (ignored by other attention implementations, which use the mask)."""
        targets = next_token_targets(labels, position_ids)
        keep = targets != IGNORE_INDEX
        if self.body is None:  # a model whose head cannot be split off (prompt tuning)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids).logits
            logits = logits[:, -targets.shape[1]:]  # drop virtual-token positions
            loss = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
            return loss, keep.sum()
        extra = {} if segments is None else {"segments": segments}
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, use_cache=False, **extra).last_hidden_state
        loss = linear_cross_entropy(hidden[keep], self.head.weight, targets[keep],
                                    bias=self.head.bias, chunk_size=self.chunk_size)
        return loss, keep.sum()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """``sum_i CE(hidden[i] @ weight.T + bias, targets[i])`` without a ``[N, V]`` tensor.

    ``hidden [N, H]``, ``weight [V, H]``, ``targets [N]`` -> 0-d float32 (or 64) sum. Numerically
    the same as ``F.cross_entropy(hidden @ weight.T, targets, reduction="sum")`` (logits
    and softmax in float32).
    """
    if hidden.shape[0] == 0:  # keep the graph connected so every process runs backward
        return hidden.sum() * 0.0 + weight.view(-1)[0] * 0.0
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size,
                                     torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked projection + cross-entropy whose gradients are computed in the forward.

    For each chunk: ``logits = h @ W.T`` (float32), ``p = softmax(logits)``,
    ``dlogits = p - onehot(target)``; then ``dh = dlogits @ W`` and ``dW += dlogits.T @ h``.
    Only ``dh [N, H]`` and ``dW [V, H]`` (if ``W`` trains) are kept for backward, which
    scales them by the incoming gradient (the loss normaliser).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, build_grads):
        want_h = build_grads and hidden.requires_grad
        want_w = build_grads and weight.requires_grad
        want_b = build_grads and bias is not None and bias.requires_grad
        # softmax in float32 at least (float64 when the model is: exact invariant tests)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = None  # the first chunk's product writes it: no [V, H] zero fill
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = (h @ weight.T).to(acc)
            if bias is not None:
                logits += bias.to(acc)
            picked = logits.gather(1, t[:, None]).squeeze(1)
            lse, sums = _logsumexp_(logits)
            total += (lse - picked).sum()
            if want_h or want_w or want_b:
                dlogits = logits.div_(sums[:, None])  # softmax, in place
                dlogits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                if want_h:
                    grad_h[start:start + chunk_size] = dlogits.to(weight.dtype) @ weight
                if want_w and grad_w is None:
                    grad_w = dlogits.T @ h.to(acc)
                elif want_w:
                    grad_w.addmm_(dlogits.T, h.to(acc))
                if want_b:
                    grad_b += dlogits.sum(0)
                del dlogits
            # freed before the next chunk's product, else two [chunk, V] blocks are alive
            # at once (384 MiB at 1024 x 49152 float32: the peak of a long LoRA step)
            del logits
        if want_w and grad_w is None:  # no labelled position
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        # scaled in place: a second [V, H] buffer would raise peak memory by a vocab x hidden
        # tensor (this backward runs once; the graph is not retained)
        out_h = grad_h.mul_(grad_output.to(grad_h.dtype)) if grad_h is not None else None
        out_w = grad_w.mul_(grad_output).to(ctx.dtypes[0]) if grad_w is not None else None
        out_b = grad_b.mul_(grad_output).to(ctx.dtypes[1]) if grad_b is not None else None
        return out_h, out_w, out_b, None, None, None


def _logsumexp_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logsumexp`` over the last dim of ``[N, V]`` ``logits``, which it overwrites with
    ``exp(logits - rowmax)``; returns ``(lse [N], row sums of that [N])`` so the caller's
    softmax is one in-place division. ``torch.logsumexp`` computes the same (max-shifted)
    but allocates an ``[N, V]`` temporary: one more LM-head chunk (192 MiB at 1024 x 49152
    float32), the peak of a long LoRA step."""
    rowmax = logits.amax(dim=-1, keepdim=True)
    sums = logits.sub_(rowmax).exp_().sum(dim=-1)
    return sums.log() + rowmax.squeeze(1), sums


def reference_loss_sum(model: nn.Module, input_ids, labels, attention_mask=None,
                       position_ids=None) -> torch.Tensor:
    """The plain way (full logits), for tests and the memory comparison in the benchmark."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids).logits
    targets = next_token_targets(labels, position_ids)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")
