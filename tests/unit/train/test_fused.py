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


def test_swiglu_matches_autograd_and_saves_one_tensor_fewer():
    from sftlab.train.fused import SwiGLU, fuse_swiglu

    torch.manual_seed(0)
    gate, up = torch.randn(5, 7, dtype=torch.float64, requires_grad=True), torch.randn(5, 7, dtype=torch.float64,
                                                                                        requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (gate, up))
    model = tiny_model().double()
    reference = copy.deepcopy(model)
    assert fuse_swiglu(model) == 2
    for m in (model, reference):
        m.zero_grad()
        (m(input_ids=IDS).logits ** 2).mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)

    def saved_bytes(m):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel()) or t, lambda t: t):
            m(input_ids=IDS).logits.sum()
        return sum(total)
    assert saved_bytes(reference) - saved_bytes(model) == 2 * IDS.numel() * model.config.intermediate_size
