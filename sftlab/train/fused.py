"""Leaner forward passes for three hot spots of training: PEFT's LoRA linear layers, the
SwiGLU of Llama-style MLPs and their RMSNorms.

**LoRA.** 
PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: the scaling multiplies
the ``[tokens, out]`` product and a separate addition writes another ``[tokens, out]``
tensor, in the forward pass and again in the backward. ``lora_forward`` scales the
``[tokens, rank]`` product instead (rank 16 columns, not hundreds) and lets the GEMM add
the low-rank term into the base output in place (``addmm_``; the base layer's backward
needs its input, not its output): the same sum, two full-size elementwise passes fewer
per layer and direction, and no copy of the base output. Where the base layer is a plain
``nn.Linear`` (no hooks, not quantized), the whole layer is one autograd function
(``LoRALinear``) whose backward also lets the GEMM add the low-rank path's input gradient
into the base one (``dx = g W + (s g B) A``, one ``addmm_``): one node instead of seven,
no ``[tokens, in]`` gradient addition. On the LoRA training benchmark that is 210 layers
per step.

    fuse_lora(peft_model)     # -> number of layers switched; the rest keep PEFT's forward

Only plain LoRA layers switch: one active adapter, no dropout, no DoRA or other variant,
no LoRA bias. A layer that is merged or has its adapters disabled later falls back to
PEFT's own forward at call time, so merging, exporting and ``disable_adapter()`` behave
as before.

**SwiGLU.** ``down(silu(gate(x)) * up(x))`` through autograd keeps ``gate``, ``silu(gate)``,
``up`` and their product (the down projection's input) for the backward pass: four
``[tokens, intermediate]`` tensors per layer, the largest activations of the model.
``fuse_swiglu`` computes ``silu(gate) * up`` in one autograd function that keeps ``gate`` and
``up`` and recomputes the sigmoid in backward (one such tensor fewer per layer; measured on
the LoRA benchmark: 40-80 MiB less peak RSS, about 1% slower). Where ``down_proj`` is a plain
``nn.Linear`` without bias or hooks (full fine-tuning), the down projection joins that
function too and the product is recomputed in backward from ``silu(gate)``, which the
gradients need anyway (one multiplication): two such tensors fewer per layer.

    fuse_swiglu(model)        # -> number of MLPs switched (gate_proj/up_proj/down_proj + SiLU)

**RMSNorm.** ``weight * (x * rsqrt(mean(x^2) + eps))`` through autograd is six small
operations each way, and keeps ``x``, the normalised ``x`` and more for the backward pass.
``RMSNorm`` computes it in one autograd function that keeps ``x`` and the per-token
``rsqrt`` ([tokens, 1]) and writes the gradient in closed form (with ``n = x * inv``):
``dx = inv * (g - n * mean(g * n))``, ``g = grad * weight``; ``dweight = sum(grad * n)``.
Only norms whose forward is Llama's (Llama, Mistral, Qwen2, ... copy it) switch.

    fuse_rmsnorm(model)       # -> number of norms switched
"""
from __future__ import annotations

import inspect
import types
from functools import cache

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear


def fuse_lora(model) -> int:
    """Give every plain LoRA ``Linear`` of ``model`` the lean forward; returns how many."""
    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear and _plain(module):
            module.forward = types.MethodType(lora_forward, module)
            switched += 1
    return switched


def _plain(layer) -> bool:
    names = list(layer.lora_A.keys())
    if len(names) != 1:
        return False
    name = names[0]
    return (isinstance(layer.lora_dropout[name], torch.nn.Identity)
            and name not in getattr(layer, "lora_variant", {})
            and layer.lora_B[name].bias is None)


def lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``base(x) + (x A^T · scaling) B^T``, the addition done by the GEMM (``addmm_``)."""
    active = self.active_adapters
    if args or kwargs or self.merged or self.disable_adapters or len(active) != 1 \
            or active[0] not in self.lora_A:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    flat_x = x.reshape(-1, x.shape[-1])
    base = self.base_layer
    if _unhooked_linear(base) and x.dtype == base.weight.dtype == a.dtype == b.dtype \
            and not torch.is_autocast_enabled(x.device.type):
        result = LoRALinear.apply(flat_x, base.weight, base.bias, a, b, self.scaling[name])
        return result.view(*x.shape[:-1], result.shape[-1])
    result = base(flat_x)                                             # [tokens, out]
    low = (F.linear(flat_x.to(a.dtype), a) * self.scaling[name]).to(b.dtype)  # [tokens, rank]
    if result.dtype == b.dtype:
        # into the base output itself (its backward needs only x): no [tokens, out] copy
        result = result.addmm_(low, b.t())
    else:
        result = torch.addmm(result.to(b.dtype), low, b.t()).to(result.dtype)
    return result.view(*x.shape[:-1], result.shape[-1])


class LoRALinear(torch.autograd.Function):
    """``x W^T + b0 + s (x A^T) B^T`` for 2-D ``x``, saving ``x`` and the ``[tokens, rank]``
    product ``s x A^T``; each GEMM of the backward adds into its output where two paths meet."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scaling: float):
        low = F.linear(x, a).mul_(scaling)                           # [tokens, rank]
        ctx.save_for_backward(x, weight, a, b, low)
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        return F.linear(x, weight, bias).addmm_(low, b.t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, a, b, low = ctx.saved_tensors
        want_x, want_w, want_bias, want_a, want_b = ctx.needs_input_grad[:5]
        grad_low = (grad @ b).mul_(ctx.scaling)                      # [tokens, rank]
        grad_x = (grad @ weight).addmm_(grad_low, a) if want_x else None
        grad_w = grad.t() @ x if want_w else None
        grad_bias = grad.sum(0) if want_bias and ctx.has_bias else None
        grad_a = grad_low.t() @ x if want_a else None
        grad_b = grad.t() @ low if want_b else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


class SwiGLU(torch.autograd.Function):
    """``silu(gate) * up``, saving only ``gate`` and ``up``. With ``s = sigmoid(gate)``:
    ``d/dup = silu(gate) = gate * s`` and ``d/dgate = up * s * (1 + gate * (1 - s))``."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        # aten's fused silu derivative: one pass computes grad * s * (1 + gate * (1 - s))
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


class SwiGLUDown(torch.autograd.Function):
    """``(silu(gate) * up) @ weight.T``, saving only ``gate``, ``up`` and ``weight``: the
    product is recomputed in backward (``weight``'s gradient needs it)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up, weight)
        return F.linear(F.silu(gate) * up, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up, weight = ctx.saved_tensors
        activated = F.silu(gate)
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ (activated * up).reshape(-1, up.shape[-1])
        grad_hidden = grad @ weight
        grad_gate = torch.ops.aten.silu_backward(grad_hidden * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad_hidden.mul_(activated) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up, grad_weight


def fuse_swiglu(model) -> int:
    """Give every Llama-style MLP (``gate_proj``, ``up_proj``, ``down_proj``, SiLU) the
    ``SwiGLU`` forward; returns how many. Other MLPs keep their own."""
    switched = 0
    for module in model.modules():
        if all(hasattr(module, k) for k in ("gate_proj", "up_proj", "down_proj", "act_fn")) \
                and type(module.act_fn).__name__ in ("SiLU", "SiLUActivation"):  # F.silu
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            switched += 1
    return switched


def _swiglu_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    down = self.down_proj
    if _unhooked_linear(down) and down.bias is None and not torch.is_autocast_enabled(x.device.type):
        return SwiGLUDown.apply(gate, up, down.weight)
    return self.down_proj(SwiGLU.apply(gate, up))


def _unhooked_linear(module) -> bool:
    """An ``nn.Linear`` whose call is its own ``forward``: no hooks (HINT, accelerate
    offload, ZeRO-3 gathering) and no replaced ``forward`` would be skipped by using its
    weight directly."""
    return (type(module) is torch.nn.Linear and "forward" not in vars(module)
            and not any(getattr(module, name) for name in _HOOKS)
            and not any(getattr(torch.nn.modules.module, f"_global{name}") for name in _HOOKS))


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class RMSNorm(torch.autograd.Function):
    """Llama's RMSNorm (float32 statistics, the result cast back before the weight), saving
    only the input and its per-token inverse root mean square."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        wide = _statistics_dtype(x)
        inv = torch.rsqrt(x.to(wide).pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, inv)
        return weight * (x.to(wide) * inv).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inv = ctx.saved_tensors
        normed = x.to(inv.dtype) * inv
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = (grad * weight).to(inv.dtype)
            dot = (g * normed).mean(-1, keepdim=True)
            grad_x = g.sub_(normed.mul_(dot)).mul_(inv).to(x.dtype)
        return grad_x, grad_weight, None


def _statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """Float32 for float32 and narrower inputs, as Llama's; float64 stays float64 (Llama's
    own norm would round it to float32)."""
    return torch.promote_types(x.dtype, torch.float32)


def fuse_rmsnorm(model) -> int:
    """Give every RMSNorm of ``model`` whose forward is Llama's the ``RMSNorm`` forward;
    returns how many. Other norms keep their own."""
    switched = 0
    for module in model.modules():
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter) \
                and hasattr(module, "variance_epsilon") and _llama_rmsnorm(type(module)):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            switched += 1
    return switched


@cache
def _llama_rmsnorm(cls: type) -> bool:
    """Whether ``cls.forward`` is, line for line, transformers' ``LlamaRMSNorm.forward``."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    try:
        return inspect.getsource(cls.forward) == inspect.getsource(LlamaRMSNorm.forward)
    except (OSError, TypeError):
        return False


def _rmsnorm_forward(self, x: torch.Tensor) -> torch.Tensor:
    return RMSNorm.apply(x, self.weight, self.variance_epsilon)
