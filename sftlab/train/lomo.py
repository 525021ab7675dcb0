"""LOMO: LOw-Memory Optimization (Lv et al. 2023, "Full Parameter Fine-tuning for Large
Language Models with Limited Resources").

Plain SGD fused into the backward pass: as soon as a parameter's gradient is complete
(``register_post_accumulate_grad_hook``), the parameter is updated and its gradient freed.
So there is no optimizer state and at most one parameter's gradient alive at a time,
instead of a full copy of the model in gradients.

Consequences the loop must respect:
- no gradient accumulation (the update happens inside every backward), no data-parallel
  processes (each would update with its own gradients before any all-reduce) and no fp16
  (no loss scaler): ``check_method_supported`` rejects all three;
- the loop calls ``fused_backward(loss, lr)`` instead of ``loss.backward()`` +
  ``optimizer.step()``, and creates no optimizer; ``p.grad`` is None afterwards;
- clipping: each gradient element is clamped to ``[-clip_value, clip_value]`` (value clipping,
  free). Global-norm clipping needs the norm before the first update, which the paper gets
  with a second backward pass: the first pass only accumulates the squared norm, the second
  updates with ``scale = min(1, clip_grad_norm / norm)``. That costs one extra backward and
  keeps the graph alive between passes (``retain_graph=True``). The norm is taken of the
  value-clipped gradients.

Example::

    fused = FusedSGD(list(model.parameters()), clip_value=1.0)
    loss = model(input_ids=ids, labels=ids).loss
    fused(loss, lr=1e-3)          # parameters are updated, no .grad is kept
"""
from __future__ import annotations

import math

import torch

from sftlab.errors import ConfigError


class FusedSGD:
    """SGD applied inside backward via per-parameter post-accumulate-grad hooks.

    Update per parameter ``p`` with gradient ``g`` (after clipping):
    ``p <- p * (1 - lr * weight_decay) - lr * scale * g``.
    """

    def __init__(self, params: list[torch.nn.Parameter], *, clip_value: float | None = 1.0,
                 clip_grad_norm: float | None = None, weight_decay: float = 0.0) -> None:
        self.params = params
        self.clip_value = clip_value
        self.clip_grad_norm = clip_grad_norm
        self.weight_decay = weight_decay
        self.lr = 0.0
        self._mode = "idle"  # "norm": accumulate the squared norm; "update": apply SGD
        self._scale = 1.0
        self._squared_norm = 0.0
        self.last_grad_norm: float | None = None
        """global norm of the (value-clipped) gradients of the last step, when computed."""
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def __call__(self, loss: torch.Tensor, lr: float) -> None:
        """Backward ``loss`` and update every parameter with learning rate ``lr``."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError("method 'lomo' runs in one process only (each process would "
                              "update with its own gradients)")
        self.lr = lr
        self._scale = 1.0
        if self.clip_grad_norm is not None:
            self._mode, self._squared_norm = "norm", 0.0
            loss.backward(retain_graph=True)
            self.last_grad_norm = math.sqrt(float(self._squared_norm))
            self._scale = min(1.0, self.clip_grad_norm / (self.last_grad_norm + 1e-6))
        self._mode = "update"
        try:
            loss.backward()
        finally:
            self._mode = "idle"

    @torch.no_grad()
    def _on_grad(self, param: torch.Tensor) -> None:
        grad, param.grad = param.grad, None  # free it: never more than one grad alive
        if self._mode == "idle":
            raise RuntimeError("LOMO: backward was called outside fused_backward; the loop "
                               "must call prepared.fused_backward(loss, lr)")
        if self.clip_value is not None:
            grad = grad.clamp(-self.clip_value, self.clip_value)
        if self._mode == "norm":
            self._squared_norm += grad.float().pow(2).sum()
            return
        if self.weight_decay:
            param.mul_(1.0 - self.lr * self.weight_decay)
        param.add_(grad.to(param.dtype), alpha=-self.lr * self._scale)

    def remove(self) -> None:
        """Detach the hooks (the model then trains with an ordinary optimizer again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
