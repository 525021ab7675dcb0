"""Every sftlab method on the delta-tuning taxonomy, with its trainable-parameter count.

The taxonomy is the survey's delta-tuning section (Ding et al. 2023, "Parameter-efficient
fine-tuning of large-scale pre-trained language models"): *addition* methods add new
trainable modules or inputs, *specification* methods train a chosen part of the existing
parameters, *reparameterisation* methods train a low-dimensional form of the weight change.

Counts are measured by running each method's own ``prepare_model`` (default settings of
``MethodConfig``) on the default model's architecture built from its ``config.json`` on
PyTorch's ``meta`` device: shapes only, no weights read, nothing allocated. Two exceptions,
said in the table: QLoRA's 4-bit quantisation cannot run on ``meta`` (its trainable
parameters are LoRA's, on a 4-bit base), and intrinsic's Fastfood diagonals would be drawn
for real (O(D) memory), so its count is ``dimension`` plus one SAID scale per target tensor,
with the targets found on the meta model as ``add_intrinsic`` finds them.

    .venv/bin/python scripts/delta_tuning_table.py            # the default model's config
    .venv/bin/python scripts/delta_tuning_table.py --model tiny
"""
from __future__ import annotations

import argparse

CATEGORY = {
    "full": ("none (baseline)", "every parameter"),
    "lomo": ("none (baseline)", "every parameter; SGD fused into backward, no optimizer state"),
    "adapter": ("addition", "Houlsby bottleneck adapters after attention and MLP, plus the norms"),
    "prompt": ("addition", "virtual-token input embeddings"),
    "prefix": ("addition", "per-layer key/value prefixes"),
    "ia3": ("addition (rescaling vectors; also read as reparameterisation)",
            "per-channel scales of keys, values, MLP input"),
    "bitfit": ("specification", "bias terms (zero biases added to a bias-free model)"),
    "freeze": ("specification", "the last `freeze.last_layers` decoder layers"),
    "lora": ("reparameterisation", "low-rank B·A per linear layer"),
    "dora": ("reparameterisation", "low-rank B·A + a magnitude per output"),
    "qlora": ("reparameterisation", "LoRA on a 4-bit NF4 base"),
    "intrinsic": ("reparameterisation", "d numbers, Fastfood-projected onto every tensor (+ SAID scales)"),
    "hint": ("addition (generated: the hypernetwork's output is the added modules)",
             "a hypernetwork that writes per-layer bottleneck adapters and a gated prefix from the instruction"),
}
ORDER = ["full", "lomo", "adapter", "prompt", "prefix", "ia3", "bitfit", "freeze", "lora", "dora",
         "qlora", "intrinsic", "hint"]


def meta_model(name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.models import resolve_model
    from sftlab.models.tiny import tiny_config

    config = tiny_config() if name == "tiny" else AutoConfig.from_pretrained(resolve_model(name))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count(name: str, model_name: str) -> tuple[int, int, str]:
    """(trainable, total, how it was counted) for method ``name`` with default settings."""
    from sftlab.models.intrinsic import _target_tensors
    from sftlab.train.config import MethodConfig
    from sftlab.train.methods import prepare_model, trainable_summary

    config = MethodConfig(name=name)
    model = meta_model(model_name)
    if name == "qlora":  # the same adapter as lora; the 4-bit base cannot be built on meta
        config = MethodConfig(name="lora")
    if name == "intrinsic":
        section = config.intrinsic
        targets = _target_tensors(model, list(section.targets))
        total = trainable_summary(model)[1]
        trained = section.dimension + (len(targets) if section.said else 0)
        return trained, total + trained, f"d={section.dimension} + {len(targets)} scales"
    tokenizer = None
    if name == "hint":  # HINT cuts the system turn by the chat template's markers
        from sftlab.models import load_tokenizer

        tokenizer = load_tokenizer(model_name)
    prepared = prepare_model(model, config, tokenizer)
    trained, total, _ = prepared.summary
    return trained, total, "as lora" if name == "qlora" else "prepare_model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    print("| method | taxonomy | what trains | trainable | % of the prepared model |")
    print("|---|---|---|---:|---:|")
    for name in ORDER:
        trained, total, how = count(name, args.model)
        category, what = CATEGORY[name]
        note = f" ({how})" if how != "prepare_model" else ""
        print(f"| `{name}` | {category} | {what}{note} | {trained:,} | {100 * trained / total:.4f} |")


if __name__ == "__main__":
    main()
