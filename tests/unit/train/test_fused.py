"""The lean LoRA forward computes what PEFT's does: outputs and gradients, merged and disabled."""
from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model

from sftlab.models.tiny import tiny_model
from sftlab.train.fused import fuse_lora

IDS = torch.tensor([[5, 9, 13, 200, 7, 31]])


def lora_model(dropout: float = 0.0):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model().double(), LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:   # B = 0 at init would hide a wrong low-rank term
            torch.nn.init.normal_(param, std=0.1)
    return model


def logits_and_grads(model):
    model.zero_grad()
    logits = model(input_ids=IDS).logits
    (logits ** 2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_same_outputs_and_gradients_as_peft():
    peft_model = lora_model()
    fused = copy.deepcopy(peft_model)
    assert fuse_lora(fused) == 7 * 2   # 7 projections x 2 layers
    expected, expected_grads = logits_and_grads(peft_model)
    got, grads = logits_and_grads(fused)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-10, atol=1e-12)


def test_merged_and_disabled_fall_back_to_peft():
    fused = lora_model()
    fuse_lora(fused)
    with torch.no_grad():
        adapted = fused(input_ids=IDS).logits
        with fused.disable_adapter():
            base = fused(input_ids=IDS).logits
        fused.merge_adapter()
        merged = fused(input_ids=IDS).logits
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(merged, adapted, rtol=1e-10, atol=1e-10)


def test_layers_with_dropout_keep_peft_forward():
    assert fuse_lora(lora_model(dropout=0.1)) == 0


def test_swiglu_matches_autograd_and_saves_two_tensors_fewer():
    from sftlab.train.fused import SwiGLU, SwiGLUDown, fuse_swiglu

    torch.manual_seed(0)
    gate, up = (torch.randn(5, 7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (gate, up))
    assert torch.autograd.gradcheck(SwiGLUDown.apply, (gate, up, weight))
    model = tiny_model().double()
    reference = copy.deepcopy(model)
    assert fuse_swiglu(model) == 2
    assert_same_gradients(model, reference, rtol=1e-10, atol=1e-12)
    # silu(gate) and the down projection's input are recomputed in backward: two fewer per layer
    layers, size = model.config.num_hidden_layers, model.config.intermediate_size
    assert saved_numel(reference) - saved_numel(model) == 2 * layers * IDS.numel() * size


def test_swiglu_keeps_the_down_projection_that_is_not_a_plain_linear():
    from sftlab.train.fused import fuse_swiglu

    model = tiny_model().double()
    reference = copy.deepcopy(model)
    fuse_swiglu(model)
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert_same_gradients(model, reference, rtol=1e-10, atol=1e-12)
    assert len(seen) == 1   # the hook ran: that layer's down projection was called as a module
    layers, size = model.config.num_hidden_layers, model.config.intermediate_size
    assert saved_numel(reference) - saved_numel(model) == (2 * layers - 1) * IDS.numel() * size


def assert_same_gradients(model, reference, rtol: float, atol: float) -> None:
    for m in (model, reference):
        m.zero_grad()
        (m(input_ids=IDS).logits ** 2).mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol, msg=name)


def saved_numel(model) -> int:
    """Elements of the activations autograd saves in one forward pass of ``model``: each
    storage once (views of one tensor share it), parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=IDS).logits.sum()
    return sum(saved.values())


def test_rmsnorm_matches_llamas_forward_and_gradients_and_saves_less():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from sftlab.train.fused import RMSNorm, fuse_rmsnorm

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: RMSNorm.apply(a, w, 1e-6), (x, weight))
    # float32 and bfloat16 as Llama's own (float32 statistics, cast back before the weight)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 0.0)):
        norm = LlamaRMSNorm(8).to(dtype)
        norm.weight.data.normal_()
        xs = torch.randn(4, 8).to(dtype)
        torch.testing.assert_close(RMSNorm.apply(xs, norm.weight, norm.variance_epsilon), norm(xs),
                                   rtol=tolerance, atol=tolerance)

    model = tiny_model()  # float32, as trained here: both sides round their statistics alike
    reference = copy.deepcopy(model)
    layers = model.config.num_hidden_layers
    assert fuse_rmsnorm(model) == 2 * layers + 1  # two per layer and the final norm
    assert_same_gradients(model, reference, rtol=1e-4, atol=1e-6)
    assert saved_numel(reference) - saved_numel(model) >= (2 * layers + 1) * IDS.numel() * model.config.hidden_size


def test_norms_that_are_not_llamas_keep_their_forward():
    from sftlab.train.fused import fuse_rmsnorm

    class ScaledNorm(torch.nn.Module):  # Gemma-style (1 + weight): another formula
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.zeros(4)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    assert fuse_rmsnorm(torch.nn.Sequential(ScaledNorm())) == 0


def test_swiglu_under_autocast_calls_the_down_projection(monkeypatch):
    from sftlab.train import fused

    model = tiny_model()
    fused.fuse_swiglu(model)
    joined = []
    apply = fused.SwiGLUDown.apply
    monkeypatch.setattr(fused.SwiGLUDown, "apply", lambda *args: joined.append(1) or apply(*args))
    model(input_ids=IDS).logits.sum().backward()
    assert len(joined) == model.config.num_hidden_layers
    joined.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the module casts; the function would not
        logits = model(input_ids=IDS).logits
    logits.float().sum().backward()
    assert joined == [] and logits.dtype == torch.bfloat16


def test_lora_linear_function_gradients(monkeypatch):
    from sftlab.train import fused

    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    a, b = torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    for trained in ((x, a, b), (x, weight, bias, a, b)):   # frozen base, and a trained one
        for t in trained:
            t.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda *t: fused.LoRALinear.apply(*t, 0.5), (x, weight, bias, a, b))
    used = []
    apply = fused.LoRALinear.apply
    monkeypatch.setattr(fused.LoRALinear, "apply", lambda *args: used.append(1) or apply(*args))
    model = lora_model()
    fuse_lora(model)
    model(input_ids=IDS).logits.sum().backward()
    assert len(used) == 7 * 2   # every projection of the plain model went through it


def test_lora_over_a_hooked_base_adds_into_the_base_output():
    model = lora_model()
    fuse_lora(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    seen = {}
    layer.base_layer.register_forward_hook(lambda module, args, out: seen.update(base=out.data_ptr()))
    out = layer(torch.randn(2, 3, layer.in_features, dtype=torch.float64, requires_grad=True))
    assert out.shape == (2, 3, layer.out_features)
    assert out.data_ptr() == seen["base"]   # the hook ran; no [tokens, out] copy of its output
