"""Facts about a loaded model or tokenizer that several stages need, each answered once.

    pad_id(tokenizer)          # the id that pads a batch: pad token, else EOS, else 0
    context_length(model)      # positions the model can attend over, or None
    library_versions()         # {"python": "3.11.9", "torch": "2.5.1", ...} for run files

Training, generation and evaluation call these instead of reading tokenizer or config
attributes themselves, so a model whose config names its context differently (GPT-2's
``n_positions``) is handled in one place. Nothing here imports torch: light layers
(remote evaluation, ``--help``) use them too. The decoder layers are ``sftlab.models.layers``.
"""
from __future__ import annotations

import importlib.metadata
import platform

# config attributes that hold the context length, in the order architectures use them
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")

# the libraries whose versions decide a run's numbers (``None`` when not installed)
_VERSIONED = ("sftlab", "torch", "transformers", "peft", "accelerate", "tokenizers", "numpy",
              "trl", "llama-cpp-python")


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the pad token, else EOS (padding is never trained or
    attended to, so any id works), else 0.

    >>> from sftlab.models.tiny import tiny_tokenizer
    >>> pad_id(tiny_tokenizer()) == tiny_tokenizer().pad_token_id
    True
    """
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def context_length(model_or_config) -> int | None:
    """Positions the model can attend over (``max_position_embeddings``, ``n_positions``,
    ...), from a model or its config; None when the config names none.

    >>> from sftlab.models.tiny import tiny_model
    >>> context_length(tiny_model())
    1024
    """
    config = getattr(model_or_config, "config", model_or_config)
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def library_versions() -> dict[str, str | None]:
    """Python's and the numerically relevant libraries' versions (``None``: not installed),
    written into ``run.json`` and evaluation results."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
