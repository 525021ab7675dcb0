"""Invariants of the fine-tuning methods, on the tiny Llama.

- a freshly prepared LoRA / IA3 / adapter model computes EXACTLY the base model's logits;
  DoRA within 1e-5; BitFit's added zero biases within float rounding;
- each method's optimizer step changes only the parameters it claims to train;
- LOMO updates every parameter during backward, never holds two gradients at once, and
  its step equals a manual SGD step with the same value-clipped gradients.
"""
from __future__ import annotations

import pytest
import torch

from sftlab.config import build_config
from sftlab.models.tiny import tiny_model
from sftlab.train.methods import MethodConfig, prepare_model


def config(name: str, *overrides: str) -> MethodConfig:
    return build_config(MethodConfig, {"name": name},
                        ["lora.rank=4", "prompt.num_virtual_tokens=4",
                         "prefix.num_virtual_tokens=4", "freeze.last_layers=1",
                         "adapter.bottleneck=8", *overrides])


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(seed))


def base_logits(ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny_model()(input_ids=ids).logits


def prepared_logits(name: str, ids: torch.Tensor, *overrides: str) -> torch.Tensor:
    prepared = prepare_model(tiny_model(), config(name, *overrides))
    with torch.no_grad():
        return prepared.model(input_ids=ids).logits


def base_snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def one_adamw_step(prepared, ids: torch.Tensor, lr: float = 1e-2) -> None:
    optimizer = torch.optim.AdamW(prepared.parameters, lr=lr, weight_decay=0.0)
    prepared.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in model.named_parameters()
            if name in before and not torch.equal(p, before[name])}


# -- identity at initialisation --------------------------------------------------------------

@pytest.mark.parametrize("name", ["lora", "ia3", "adapter"])
def test_fresh_method_equals_the_base_model_exactly(name):
    ids = batch()
    assert torch.equal(prepared_logits(name, ids), base_logits(ids))


def test_lora_with_dropout_is_still_exact_in_eval_mode():
    ids = batch()
    prepared = prepare_model(tiny_model(), config("lora", "lora.dropout=0.1"))
    prepared.model.eval()
    with torch.no_grad():
        assert torch.equal(prepared.model(input_ids=ids).logits, base_logits(ids))


def test_fresh_dora_equals_the_base_model_within_1e_5():
    ids = batch()
    assert torch.allclose(prepared_logits("dora", ids), base_logits(ids), atol=1e-5, rtol=0)


def test_bitfit_zero_biases_keep_the_base_model():
    ids = batch()
    assert torch.allclose(prepared_logits("bitfit", ids), base_logits(ids), atol=1e-6, rtol=0)


def test_fresh_prefix_equals_the_base_model_reading_the_init_text(tiny_tokenizer):
    """Prefixes initialised from real tokens' keys/values (Li & Liang's stable init) make
    the prefixed model compute what the base computes on "init tokens + input"."""
    text, ids = "sort the list", batch()
    prepared = prepare_model(tiny_model(), config("prefix", f"prefix.init_text={text}"),
                             tiny_tokenizer)
    prefix = (tiny_tokenizer(text, add_special_tokens=False)["input_ids"] * 4)[:4]
    with_text = torch.cat([torch.tensor([prefix] * len(ids)), ids], dim=1)
    expected = base_logits(with_text)[:, len(prefix):]
    with torch.no_grad():
        got = prepared.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


# -- only what a method trains changes ------------------------------------------------------

def test_prompt_tuning_changes_only_the_virtual_tokens():
    model = tiny_model()
    before = base_snapshot(model)
    prepared = prepare_model(model, config("prompt"))
    embedding = prepared.model.prompt_encoder["default"].embedding.weight
    virtual_before = embedding.detach().clone()
    one_adamw_step(prepared, batch())
    assert changed(model, before) == set()
    assert not torch.equal(embedding, virtual_before)


def test_prefix_tuning_changes_only_the_prefixes():
    model = tiny_model()
    before = base_snapshot(model)
    prepared = prepare_model(model, config("prefix"))
    prefix = prepared.model.prompt_encoder["default"].embedding.weight
    prefix_before = prefix.detach().clone()
    one_adamw_step(prepared, batch())
    assert changed(model, before) == set()
    assert not torch.equal(prefix, prefix_before)


def test_bitfit_step_changes_only_biases():
    model = tiny_model(attention_bias=True, mlp_bias=True)
    prepared = prepare_model(model, config("bitfit"))
    before = base_snapshot(model)
    one_adamw_step(prepared, batch())
    moved = changed(model, before)
    assert moved and all(name.endswith(".bias") for name in moved)
    assert len(moved) == 2 * 7


def test_adapter_step_changes_only_adapters_and_norms():
    model = tiny_model()
    before = base_snapshot(model)
    prepared = prepare_model(model, config("adapter"))
    one_adamw_step(prepared, batch())
    # a wrapped layer's weight is now named "...o_proj.base.weight"
    after = {n.replace(".base.", "."): p for n, p in model.named_parameters()
             if ".adapter." not in n}
    assert set(after) == set(before)
    moved = {n for n in before if not torch.equal(after[n], before[n])}
    assert moved == {n for n in before if "norm" in n}
    up = model.model.layers[0].self_attn.o_proj.adapter.up.weight
    assert up.abs().sum() > 0  # the zero-initialised up-projection took its first step


def test_freeze_step_changes_only_the_last_layer():
    model = tiny_model()
    prepared = prepare_model(model, config("freeze"))
    before = base_snapshot(model)
    one_adamw_step(prepared, batch())
    moved = changed(model, before)
    assert moved == {n for n in before if n.startswith("model.layers.1.")}


def test_lora_step_leaves_the_base_weights_alone():
    model = tiny_model()
    before = base_snapshot(model)
    prepared = prepare_model(model, config("lora"))
    one_adamw_step(prepared, batch())
    base_names = {n.replace("base_model.model.", "").replace(".base_layer", "")
                  for n, _ in prepared.model.named_parameters() if "lora_" not in n}
    assert base_names == set(before)
    assert changed(model, before) == set()


# -- LOMO ------------------------------------------------------------------------------------

def test_lomo_updates_during_backward_one_gradient_at_a_time():
    model = tiny_model()
    prepared = prepare_model(model, config("lomo"))
    params = prepared.parameters
    before = [p.detach().clone() for p in params]
    seen = []

    def monitor(param):  # runs right after LOMO's own hook on the same parameter
        index = next(i for i, p in enumerate(params) if p is param)
        alive = sum(p.grad is not None for p in params)
        seen.append((index, alive, torch.equal(param, before[index])))

    for p in params:
        p.register_post_accumulate_grad_hook(monitor)
    prepared.fused_backward(model(input_ids=batch(), labels=batch()).loss, 0.1)
    assert sorted(i for i, _, _ in seen) == list(range(len(params)))  # every one, once
    assert max(alive for _, alive, _ in seen) == 0  # each grad freed as soon as used
    assert not any(unchanged for _, _, unchanged in seen)  # updated inside backward
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("tied", [False, True])
def test_lomo_step_equals_manual_sgd_with_value_clipped_gradients(tied):
    """Also with tied input/output embeddings: the shared weight is updated once, with the
    sum of both uses' gradients (its hook fires after both have accumulated)."""
    ids, lr, clip = batch(), 0.1, 0.01
    reference = tiny_model(tie_word_embeddings=tied)
    reference(input_ids=ids, labels=ids).loss.backward()
    assert max(p.grad.abs().max() for p in reference.parameters()) > clip  # clipping bites
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(p.grad.clamp(-clip, clip), alpha=-lr)
    model = tiny_model(tie_word_embeddings=tied)
    prepared = prepare_model(model, config("lomo", f"lomo.clip_value={clip}"))
    prepared.fused_backward(model(input_ids=ids, labels=ids).loss, lr)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["full", "freeze", "lora", "dora", "qlora", "prompt", "ia3",
                                  "adapter", "bitfit", "lomo"])
def test_gradient_checkpointing_gives_the_same_step(name):
    """Recomputing activations in backward must not see weights LOMO already updated, and
    frozen early layers must not cut the gradient to later ones (non-reentrant checkpoints,
    enabled before ``prepare_model`` as the loop does)."""
    ids = batch()
    results = []
    for checkpointing in (False, True):
        model = tiny_model()
        if checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(0)  # LoRA's A, the prompt init are random: the same in both runs
        prepared = prepare_model(model, config(name))
        if prepared.fused_backward is not None:
            prepared.fused_backward(model(input_ids=ids, labels=ids).loss, 0.1)
        else:
            torch.optim.SGD(prepared.parameters, lr=0.1).zero_grad()
            prepared.model(input_ids=ids, labels=ids).loss.backward()
            torch.optim.SGD(prepared.parameters, lr=0.1).step()
        results.append([p.detach().clone() for p in prepared.parameters])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(results[0], base_parameters(name)))


def base_parameters(name: str) -> list[torch.Tensor]:
    """The trainable parameters of a freshly prepared model (to see that the step moved them)."""
    torch.manual_seed(0)
    return [p.detach().clone() for p in prepare_model(tiny_model(), config(name)).parameters]
