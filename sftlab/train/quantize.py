"""4-bit weights (QLoRA's base): the loading config, in-memory quantisation, the device probe.

    kwargs = {"quantization_config": quantization_config(section)}   # from_pretrained loads 4-bit
    quantize_linear_4bit(model, section)     # a model built in memory (``tiny``), in place
    is_quantized_4bit(model)                 # True once any layer is a bitsandbytes Linear4bit
    check_bitsandbytes("cuda", "bfloat16")   # ConfigError when this device cannot run 4-bit

``section`` is the config's ``method.qlora`` (``QLoraSection``). bitsandbytes is optional
(the ``dev`` extras): it is imported only inside these functions.
"""
from __future__ import annotations

import functools

import torch
from transformers import BitsAndBytesConfig

from sftlab.errors import ConfigError
from sftlab.train.config import QLoraSection


def quantization_config(section: QLoraSection) -> BitsAndBytesConfig:
    """The ``from_pretrained(quantization_config=...)`` that loads the weights in 4 bits."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=section.quant_type,
        bnb_4bit_use_double_quant=section.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, section.compute_dtype),
    )


def quantize_linear_4bit(model, section: QLoraSection, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` (except ``skip`` names) by a bitsandbytes ``Linear4bit``.

    The weights are quantised (NF4 by default, 64-value blocks, absmax constants quantised
    again when ``double_quant``) on the model's current device. Returns how many layers
    were replaced. This is what ``from_pretrained(quantization_config=...)`` does while
    loading; it is here for models built in memory (``tiny``).
    """
    import bitsandbytes as bnb  # optional: only QLoRA needs it (pip install bitsandbytes)

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child_name in skip:
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=getattr(torch, section.compute_dtype),
                compress_statistics=section.double_quant, quant_type=section.quant_type,
                device="meta")
            weight = child.weight.data
            quantized.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, compress_statistics=section.double_quant,
                quant_type=section.quant_type)
            if child.bias is not None:
                quantized.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            # moving a Params4bit to a real device is what quantises it
            quantized = quantized.to(weight.device)
            setattr(parent, child_name, quantized)
            replaced += 1
    if replaced == 0:
        raise ConfigError("method 'qlora': the model has no nn.Linear layer to quantise")
    model.is_loaded_in_4bit = True  # what PEFT and transformers look at
    return replaced


def is_quantized_4bit(model) -> bool:
    """True if any module is a bitsandbytes ``Linear4bit``."""
    try:
        import bitsandbytes as bnb  # optional: without it nothing can be 4-bit
    except ImportError:
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


@functools.lru_cache(maxsize=8)
def check_bitsandbytes(device: str, compute_dtype: str) -> None:
    """ConfigError unless bitsandbytes is installed and runs a 4-bit layer on ``device``
    (cached per device and dtype: the probe costs a quantised 64x64 matmul)."""
    try:
        import bitsandbytes as bnb  # optional: only QLoRA needs it
    except ImportError as exc:
        raise ConfigError(f"method 'qlora' needs bitsandbytes (pip install bitsandbytes): {exc}")
    try:  # a real 4-bit round trip: the cheapest reliable answer to "is this device supported"
        # fork_rng: the probe layer's random init must not shift the run's seeded RNG stream
        with torch.random.fork_rng(devices=[]):
            layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4",
                                      compute_dtype=getattr(torch, compute_dtype))
        layer = layer.to(device)
        x = torch.ones(2, 64, device=device, dtype=getattr(torch, compute_dtype))
        layer(x).sum().item()
    except Exception as exc:  # noqa: BLE001 - any failure means "not supported here"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"method 'qlora': bitsandbytes {bnb.__version__} cannot run 4-bit "
                          f"layers on device '{device}' ({first_line})") from exc
