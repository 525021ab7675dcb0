"""Fine-tuning methods on the tiny Llama: what trains, that training lowers the loss, saving.

The harness is a deliberately simple manual loop (AdamW or LOMO's fused SGD, the model's own
causal-LM loss); the real loop lives in sftlab/train/sft.py.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from sftlab.config import build_config
from sftlab.errors import ConfigError
from sftlab.models.tiny import tiny_model
from sftlab.models.adapters import AdaptedLinear, load_adapter
from sftlab.train import quantize
from sftlab.train.config import MethodConfig, QLoraSection
from sftlab.train.methods import (METHODS, check_method_supported, describe_methods,
                                  model_load_kwargs, prepare_model, trainable_summary)

ALL_METHODS = ["full", "freeze", "lora", "dora", "qlora", "prompt", "prefix", "ia3",
               "adapter", "bitfit", "lomo", "intrinsic"]
PEFT_METHODS = ["lora", "dora", "prompt", "prefix", "ia3"]


def small_config(name: str, **sections) -> MethodConfig:
    """Method config sized for the tiny model (rank 4, 4 virtual tokens, 1 trained layer)."""
    overrides = ["lora.rank=4", "lora.alpha=8", "prompt.num_virtual_tokens=4",
                 "prefix.num_virtual_tokens=4", "freeze.last_layers=1", "adapter.bottleneck=8"]
    overrides += [f"{key}={value}" for key, value in sections.items()]
    return build_config(MethodConfig, {"name": name}, overrides)


def batch(seed: int = 0) -> torch.Tensor:
    """4 sequences of 16 token ids (no special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 500, (4, 16), generator=generator)


def train(prepared, ids: torch.Tensor, steps: int, lr: float) -> list[float]:
    """``steps`` updates on one batch; returns the loss before each update."""
    optimizer = None if prepared.fused_backward else torch.optim.AdamW(prepared.parameters, lr=lr)
    losses = []
    for _ in range(steps):
        loss = prepared.model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        if prepared.fused_backward is not None:
            prepared.fused_backward(loss, lr)
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return losses


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


# -- config and registry ------------------------------------------------------------------

def test_every_method_name_is_registered_and_allowed_in_the_config():
    # hint trains on rows whose system turn is the instruction: tests/unit/train/test_hint.py
    assert sorted(METHODS.names()) == sorted(ALL_METHODS + ["hint"])
    assert build_config(MethodConfig, {"name": "dora"}, ["lora.rank=8"]).lora.rank == 8
    help_lines = describe_methods().splitlines()
    assert [line.split()[0] for line in help_lines] == METHODS.names()
    assert all(len(line.split()) > 3 for line in help_lines)  # each has a description


def test_config_typos_are_errors_with_suggestions():
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        build_config(MethodConfig, {"name": "lroa"})
    with pytest.raises(ConfigError, match="did you mean 'lora.rank'"):
        build_config(MethodConfig, {}, ["lora.rnak=4"])


def test_trainable_summary_counts_parameters():
    layer = torch.nn.Linear(4, 2)
    layer.bias.requires_grad_(False)
    assert trainable_summary(layer) == (8, 10, 80.0)


# -- every method trains ------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_METHODS)
def test_each_method_lowers_the_loss_on_the_tiny_model(name, tiny_tokenizer):
    prepared = prepare_model(tiny_model(), small_config(name), tiny_tokenizer)
    lr = {"full": 1e-3, "freeze": 1e-3, "lomo": 0.5, "ia3": 0.1, "prefix": 0.1}.get(name, 1e-2)
    losses = train(prepared, batch(), steps=6, lr=lr)
    assert losses[-1] < losses[0] - 0.01, losses
    trainable, total, pct = prepared.summary
    assert 0 < trainable <= total and pct == pytest.approx(100 * trainable / total)
    assert sum(p.numel() for p in prepared.parameters) == trainable


def test_peft_methods_train_only_their_own_parameters():
    markers = {"lora": ["lora_"], "dora": ["lora_"], "prompt": ["prompt_encoder"],
               "prefix": ["prompt_encoder"], "ia3": ["ia3_"]}
    for name, parts in markers.items():
        prepared = prepare_model(tiny_model(), small_config(name))
        names = trainable_names(prepared.model)
        assert names and all(any(part in n for part in parts) for n in names), (name, names)
        assert prepared.kind == "peft"
    dora = prepare_model(tiny_model(), small_config("dora")).model
    assert any("lora_magnitude_vector" in n for n in trainable_names(dora))


def test_lora_all_linear_adapts_every_projection_but_not_the_head():
    config = small_config("lora", **{"lora.target_modules": "[all-linear]"})
    prepared = prepare_model(tiny_model(), config)
    adapted = {n.split(".")[-4] for n in trainable_names(prepared.model)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_wrapping_with_peft_and_loading_the_adapter_do_not_warn_about_peft_internals(tmp_path):
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` while wrapping; that
    FutureWarning (about PEFT's code) is silenced, other warnings are not."""
    import warnings

    from sftlab.models import apply_adapter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_model(tiny_model(), small_config("lora"))
        prepared.model.save_pretrained(tmp_path / "adapter")
        apply_adapter(tiny_model(), tmp_path / "adapter")
        warnings.warn("a warning of the caller's own", FutureWarning)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert "a warning of the caller's own" in messages


def test_lora_target_that_matches_nothing_is_a_config_error():
    with pytest.raises(ConfigError, match="method 'lora'"):
        prepare_model(tiny_model(), small_config("lora", **{"lora.target_modules": "[qkv]"}))


def test_prefix_tuning_with_gradient_checkpointing_is_a_config_error():
    model = tiny_model()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(ConfigError, match="method 'prefix': .*gradient checkpointing"):
        prepare_model(model, small_config("prefix"))


def test_prompt_tuning_offsets_logits_by_the_virtual_tokens():
    prepared = prepare_model(tiny_model(), small_config("prompt"))
    out = logits(prepared.model, batch())
    assert prepared.logit_offset == 4 and out.shape == (4, 16 + 4, 512)


def test_prompt_init_text_copies_the_text_embeddings(tiny_tokenizer):
    config = small_config("prompt", **{"prompt.init_text": "sort the list"})
    prepared = prepare_model(tiny_model(), config, tiny_tokenizer)
    ids = tiny_tokenizer("sort the list", add_special_tokens=False)["input_ids"]
    expected_ids = (ids * 4)[:4]
    words = prepared.model.get_input_embeddings().weight
    virtual = prepared.model.prompt_encoder["default"].embedding.weight
    assert torch.equal(virtual, words[expected_ids])
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        prepare_model(tiny_model(), config)
    with pytest.raises(ConfigError, match="prefix.init_text needs the tokenizer"):
        prepare_model(tiny_model(), small_config("prefix", **{"prefix.init_text": "sort"}))


# -- freeze and bitfit ----------------------------------------------------------------------

def test_freeze_trains_the_last_layers_and_named_modules():
    prepared = prepare_model(tiny_model(), small_config("freeze"))
    assert {n.split(".")[2] for n in trainable_names(prepared.model)} == {"1"}
    extra = small_config("freeze", **{"freeze.modules": "[lm_head.*, model.norm.*]"})
    names = trainable_names(prepare_model(tiny_model(), extra).model)
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert not any(n.startswith("model.layers.0.") for n in names)
    tied = tiny_model(tie_word_embeddings=True)  # lm_head.weight IS embed_tokens.weight
    prepare_model(tied, small_config("freeze", **{"freeze.modules": "[lm_head.*]"}))
    assert tied.lm_head.weight.requires_grad


def test_freeze_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="no trainable parameter"):
        prepare_model(tiny_model(), small_config("freeze", **{"freeze.last_layers": 0}))
    with pytest.raises(ConfigError, match="2 decoder layers"):
        prepare_model(tiny_model(), small_config("freeze", **{"freeze.last_layers": 3}))
    with pytest.raises(ConfigError, match="matches no parameter"):
        prepare_model(tiny_model(), small_config("freeze", **{"freeze.modules": "[head*]"}))


def test_bitfit_adds_zero_biases_to_a_bias_free_llama_and_saves_loadable(tmp_path):
    from transformers import AutoModelForCausalLM

    prepared = prepare_model(tiny_model(), small_config("bitfit"))
    names = trainable_names(prepared.model)
    assert len(names) == 2 * 7 and all(n.endswith(".bias") for n in names)
    train(prepared, batch(), steps=2, lr=1e-2)
    prepared.save(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    q_bias = loaded.model.layers[0].self_attn.q_proj.bias
    assert q_bias.abs().sum() > 0  # the trained biases came back, not fresh zeros
    assert torch.allclose(logits(loaded, batch()), logits(prepared.model, batch()), atol=1e-5)


def test_bitfit_on_a_model_with_biases_trains_exactly_those():
    model = tiny_model(attention_bias=True)  # q/k/v/o have biases, the MLP has none
    prepared = prepare_model(model, small_config("bitfit"))
    names = trainable_names(prepared.model)
    assert len(names) == 2 * 4 and all("self_attn" in n and n.endswith("bias") for n in names)
    assert model.model.layers[0].mlp.up_proj.bias is None


def test_bitfit_without_biases_and_without_adding_is_an_error():
    with pytest.raises(ConfigError, match="no bias terms"):
        prepare_model(tiny_model(), small_config("bitfit", **{"bitfit.add_missing": "false"}))


# -- saving and loading ----------------------------------------------------------------------

@pytest.mark.parametrize("name", PEFT_METHODS)
def test_peft_methods_save_a_dir_that_peft_loads(name, tmp_path):
    from peft import PeftModel

    prepared = prepare_model(tiny_model(), small_config(name))
    train(prepared, batch(), steps=2, lr=1e-2)
    prepared.save(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    loaded = PeftModel.from_pretrained(tiny_model(), str(tmp_path))
    assert torch.allclose(logits(loaded, batch(1)), logits(prepared.model, batch(1)), atol=1e-6)


def test_peft_save_looks_nothing_up_on_the_hub(tmp_path, monkeypatch):
    """The base's portable name ("default") is no local path: PEFT's "auto" embedding check
    would ask the hub about it (a DNS failure and a warning offline). sftlab decides itself."""
    from peft.utils import save_and_load

    def no_hub(*args, **kwargs):
        raise AssertionError(f"hub lookup {args}")

    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", no_hub)
    prepared = prepare_model(tiny_model(), small_config("lora"))
    prepared.model.peft_config["default"].base_model_name_or_path = "default"
    prepared.save(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_adapter_saves_its_own_format_and_loads_back(tmp_path):
    prepared = prepare_model(tiny_model(), small_config("adapter"))
    assert prepared.kind == "sftlab_adapter"
    names = trainable_names(prepared.model)
    norms = [n for n in names if "norm" in n]
    assert len(norms) == 2 * 2 + 1  # input/post-attention norm per layer + the final norm
    assert all(".adapter." in n for n in names if n not in norms)
    train(prepared, batch(), steps=2, lr=1e-2)
    prepared.save(tmp_path)
    config = json.loads((tmp_path / "sftlab_adapter.json").read_text())
    assert config["bottleneck"] == 8 and config["after"] == ["o_proj", "down_proj"]
    assert config["train_norms"] is True
    loaded = load_adapter(tiny_model(), tmp_path)
    trained_norm = prepared.model.model.norm.weight
    assert not torch.equal(trained_norm, torch.ones_like(trained_norm))  # norms did train
    assert torch.equal(loaded.model.norm.weight, trained_norm)
    assert sum(isinstance(m, AdaptedLinear) for m in loaded.modules()) == 4
    assert torch.equal(logits(loaded, batch(1)), logits(prepared.model, batch(1)))
    with pytest.raises(ConfigError, match="shape"):
        load_adapter(tiny_model(hidden_size=32, intermediate_size=64), tmp_path)


def test_full_methods_save_a_whole_model(tmp_path):
    from transformers import AutoModelForCausalLM

    prepared = prepare_model(tiny_model(), small_config("lomo"))
    train(prepared, batch(), steps=1, lr=0.5)
    prepared.save(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(logits(loaded, batch(1)), logits(prepared.model, batch(1)))


# -- QLoRA -------------------------------------------------------------------------------------

def test_qlora_quantises_the_base_to_nf4_with_double_quant_and_trains_only_lora(tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel

    prepared = prepare_model(tiny_model(), small_config("qlora"))
    q_proj = prepared.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert isinstance(q_proj.weight, bnb.nn.Params4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantisation of the absmax constants
    assert q_proj.weight.dtype == torch.uint8  # packed two 4-bit codes per byte
    assert all("lora_" in n for n in trainable_names(prepared.model))
    # 4-bit weights count at their logical size: same total as LoRA on the fp32 model
    lora_total = prepare_model(tiny_model(), small_config("lora")).summary[1]
    assert prepared.summary[1] == lora_total
    prepared.save(tmp_path)
    base = tiny_model()
    quantize.quantize_linear_4bit(base, QLoraSection())
    loaded = PeftModel.from_pretrained(base, str(tmp_path))
    # both in eval mode: on CPUs with AVX-512, bitsandbytes repacks 4-bit weights for its
    # inference kernel (absmax in bf16) in eval mode only, so the two modes differ by ~1e-3
    loaded.eval(), prepared.model.eval()
    assert torch.allclose(logits(loaded, batch(1)), logits(prepared.model, batch(1)), atol=1e-6)


def test_qlora_from_pretrained_with_the_load_kwargs(tiny_model_dir):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    config = small_config("qlora")
    kwargs = model_load_kwargs(config)
    assert kwargs["quantization_config"].bnb_4bit_use_double_quant is True
    assert model_load_kwargs(small_config("lora")) == {}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs)
    assert isinstance(model.model.layers[1].mlp.down_proj, bnb.nn.Linear4bit)
    prepared = prepare_model(model, config)
    losses = train(prepared, batch(), steps=4, lr=1e-2)
    assert losses[-1] < losses[0]


def test_check_method_supported_names_the_missing_backend(monkeypatch):
    quantize.check_bitsandbytes.cache_clear()
    rng = torch.random.get_rng_state()
    check_method_supported(small_config("qlora"), "cpu")  # bitsandbytes runs 4-bit on CPU
    assert torch.equal(torch.random.get_rng_state(), rng)  # the probe leaves the seed alone
    check_method_supported(small_config("full"), "meta")  # no backend needed
    with pytest.raises(ConfigError, match="bitsandbytes .* device 'meta'"):
        check_method_supported(small_config("qlora"), "meta")
    with pytest.raises(ConfigError, match="grad_accumulation=4"):
        check_method_supported(small_config("lomo"), "cpu", grad_accumulation=4)
    with pytest.raises(ConfigError, match="2 processes"):
        check_method_supported(small_config("lomo"), "cpu", num_processes=2)
    with pytest.raises(ConfigError, match="bf16"):
        check_method_supported(small_config("lomo"), "cpu", mixed_precision="fp16")
    check_method_supported(small_config("lomo"), "cpu", mixed_precision="bf16")
    for name in ("prompt", "prefix"):
        with pytest.raises(ConfigError, match="packed rows"):
            check_method_supported(small_config(name), "cpu", packed=True)
    check_method_supported(small_config("lora"), "cpu", packed=True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    quantize.check_bitsandbytes.cache_clear()
    try:
        with pytest.raises(ConfigError, match="needs bitsandbytes"):
            check_method_supported(small_config("qlora"), "cpu")
    finally:
        quantize.check_bitsandbytes.cache_clear()


# -- LOMO ----------------------------------------------------------------------------------

def test_lomo_refuses_a_plain_backward():
    prepared = prepare_model(tiny_model(), small_config("lomo"))
    assert prepared.max_grad_accumulation == 1
    with pytest.raises(RuntimeError, match="fused_backward"):
        prepared.model(input_ids=batch(), labels=batch()).loss.backward()


def test_lomo_norm_clipping_equals_sgd_with_clipped_gradients():
    ids, lr, max_norm = batch(), 0.1, 0.5
    reference = tiny_model()
    loss = reference(input_ids=ids, labels=ids).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    assert norm > max_norm  # so the clipping is exercised
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(p.grad, alpha=-lr)
    config = small_config("lomo", **{"lomo.clip_value": "null", "lomo.clip_grad_norm": max_norm})
    prepared = prepare_model(tiny_model(), config)
    prepared.fused_backward(prepared.model(input_ids=ids, labels=ids).loss, lr)
    assert prepared.fused_backward.last_grad_norm == pytest.approx(norm.item(), rel=1e-5)
    for p, q in zip(prepared.model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-7)
        assert p.grad is None


# -- through the real training loop (slow: the loop's setup per method) --------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_runs_through_the_training_loop(name, tmp_path, shared_data):
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    data = str(shared_data / "formats" / "alpaca_en_demo.json")
    config = build_config(TrainConfig, {
        "model": {"name": "tiny"}, "method": {"name": name}, "max_steps": 4,
        "data": {"paths": [data], "max_length": 128, "limit": 32},
        "output_dir": str(tmp_path), "progress": False, "plot": False},
        ["method.lora.rank=4", "method.prompt.num_virtual_tokens=4",
         "method.prefix.num_virtual_tokens=4", "method.freeze.last_layers=1",
         "method.adapter.bottleneck=8"])
    result = train(config)
    assert math.isfinite(result.final_loss)
    saved = tmp_path / ("model" if name in ("full", "freeze", "bitfit", "lomo") else "adapter")
    assert saved.is_dir() and any(saved.iterdir())
