"""Where a causal LM keeps its transformer blocks, for code that works layer by layer.

    layers = decoder_layers(model)     # nn.ModuleList [n_layers], or None

Used by the ``freeze`` and ``bitfit`` methods (which layers train) and by
``sftlab.train.memory`` (a hook every few layers). Found structurally, not by attribute
name, so it works for any architecture and through PEFT wrappers.
"""
from __future__ import annotations

import torch


def decoder_layers(model) -> torch.nn.ModuleList | None:
    """The model's list of transformer blocks: the longest ``nn.ModuleList`` in it (through
    PEFT wrappers); None when it has none.

    >>> from sftlab.models.tiny import tiny_model
    >>> model = tiny_model()
    >>> decoder_layers(model) is model.model.layers
    True
    """
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len, default=None)
