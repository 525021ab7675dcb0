"""The optimizer and the learning rate of each step.

    optimizer = build_optimizer(prepared.parameters, config.optim)    # AdamW or SGD
    optimizer = InBackwardOptimizer(optimizer)   # optim.in_backward: steps inside backward
    lr = lr_at(step, total_steps, config.optim)  # warm-up, then cosine / linear / constant

The loop (``sftlab/train/sft.py``) sets ``lr`` (times the group's ``lr_scale``: a
projector or a tower may have its own peak) into every param group before each step;
no PyTorch scheduler object is kept, so a resumed run needs only the step number.
"""
from __future__ import annotations

import inspect
import math

import torch

from sftlab.errors import ConfigError


def build_optimizer(parameters, optim) -> torch.optim.Optimizer:
    """AdamW or SGD; 1-D tensors (biases, norm weights) get no weight decay.

    ``parameters`` is a list of tensors, or of groups ``{"params": [...], "lr_scale": s}``
    (``lr_scale``: the group's learning rate over ``optim.lr``; the loop's schedule keeps the
    ratio, see ``scheduled_lr``). Each group is split by weight decay the same way.
    """
    if parameters and not isinstance(parameters[0], dict):
        parameters = [{"params": list(parameters)}]
    groups = []
    for given in parameters:
        extra = {k: v for k, v in given.items() if k != "params"}
        decay = [p for p in given["params"] if p.ndim >= 2]
        no_decay = [p for p in given["params"] if p.ndim < 2]
        groups += [{"params": params, "weight_decay": wd, "lr_scale": 1.0, **extra}
                   for params, wd in ((decay, optim.weight_decay), (no_decay, 0.0)) if params]
    kernel = {"auto": {"foreach": True}, "foreach": {"foreach": True},
              "for-loop": {"foreach": False}, "fused": {"fused": True}}[optim.implementation]
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                 **kernel)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, **kernel)


class InBackwardOptimizer:
    """``optim.in_backward``: one optimizer per parameter, stepped by a hook the moment the
    parameter's gradient is complete during backward; the gradient is freed right after.

    Same update as the wrapped optimizer (AdamW is per-parameter math), but peak memory
    holds one parameter's gradient instead of the model's. ``step``/``zero_grad`` are
    no-ops; ``param_groups`` and ``state_dict`` cover every per-parameter optimizer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizers = []
        accepted = inspect.signature(type(optimizer).__init__).parameters
        defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for param in group["params"]:
                single = type(optimizer)([{"params": [param], **settings}], **defaults)
                param.register_post_accumulate_grad_hook(self._hook(single))
                self.optimizers.append(single)

    @staticmethod
    def _hook(single):
        def step_and_free(param):
            single.step()
            param.grad = None
        return step_and_free

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def state_dict(self) -> dict:
        return {"per_parameter": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, saved in zip(self.optimizers, state["per_parameter"], strict=True):
            opt.load_state_dict(saved)


def check_in_backward(config, accelerator, prepared) -> None:
    """``optim.in_backward`` needs one micro-batch, one process, no global clipping and an
    optimizer; ConfigError naming what is missing otherwise."""
    problems = [text for bad, text in [
        (config.grad_accumulation != 1, "grad_accumulation=1"),
        (config.optim.max_grad_norm > 0, "optim.max_grad_norm=0 (no global clipping)"),
        (accelerator.num_processes > 1, "a single process"),
        (prepared.fused_backward is not None, f"an optimizer (method {prepared.method} has none)"),
    ] if bad]
    if problems:
        raise ConfigError(f"optim.in_backward=true needs {', '.join(problems)}")


def scheduled_lr(optimizer, lr: float) -> None:
    """Set every param group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, total_steps: int, optim) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    >>> from sftlab.train.config import OptimSection
    >>> lr_at(0, 100, OptimSection(lr=1.0, warmup_steps=10, schedule="constant"))
    0.1
    """
    warmup = optim.warmup_steps or math.ceil(optim.warmup_ratio * total_steps)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if optim.schedule == "cosine":
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "linear":
        return optim.lr * (1.0 - progress)
    return optim.lr
