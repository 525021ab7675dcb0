"""Model and tokenizer loading: a Hugging Face directory or id, ``default`` or ``tiny``.

(Minimal first version; the models module owner extends it with ``default``, adapters,
the cache and ``sftlab models``. The two entry points keep their signatures.)
"""
from __future__ import annotations

from pathlib import Path


def load_tokenizer(name_or_path: str):
    """``tiny`` -> the in-process tokenizer; a path or hub id -> ``AutoTokenizer``."""
    if name_or_path == "tiny":
        from sftlab.models.tiny import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path))


def load_model(name_or_path: str, *, adapter: str | Path | None = None, dtype: str = "float32",
               device: str = "cpu"):
    """``tiny`` -> a random tiny Llama; a path or hub id -> ``AutoModelForCausalLM``."""
    import torch

    if name_or_path == "tiny":
        from sftlab.models.tiny import tiny_model

        model = tiny_model()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=getattr(torch, dtype), use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(device)
