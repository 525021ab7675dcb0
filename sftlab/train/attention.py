"""Attention for packed rows that computes only what the block-diagonal mask lets through.

A packed (or padding-free) row holds several examples; each token may attend only to
earlier tokens of its own example. ``collate_packed`` expresses that as a ``[B, 1, L, L]``
mask, which every attention implementation understands, but SDPA with a mask computes all
``L x L`` scores. With ``k`` examples of about ``L / k`` tokens, attending within each
example is ``k`` causal blocks of ``(L / k)^2 / 2``: for the 4 examples of a step on the
training benchmark, about 8x less attention work, forward and backward.

``enable(model)`` switches a model that uses ``sdpa`` to ``sftlab_packed_sdpa``: when a call
carries ``segments`` (``LongTensor[B, S + 1]``: each row's block boundaries from 0 to the
row length, the padding at a row's end being a block of its own as in the mask; rows with
fewer blocks repeat their last boundary), attention runs block by block with ``is_causal``;
every other call (no ``segments``: padded batches, generation) goes to transformers' own
SDPA with the mask transformers builds, unchanged. ``disable(model)`` switches back.

    enable(model)
    hidden = model.model(input_ids=ids, position_ids=pos, attention_mask=mask4d,
                         segments=torch.tensor([[0, 5, 9, 16]])).last_hidden_state
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sftlab_packed_sdpa"
_registered = False


def enable(model) -> bool:
    """Use per-example attention for packed calls; True when switched (the model used
    ``sdpa``), False when left as it was (eager, flash attention, ...)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    _set(model, NAME)
    return True


def disable(model) -> None:
    """Back to transformers' ``sdpa`` (before saving, so nothing sftlab-only is written)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME:
        _set(model, "sdpa")


def _set(model, name: str) -> None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


def _register() -> None:
    global _registered
    if _registered:
        return
    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # calls without segments: as sdpa
    _registered = True


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                segments=None, **kwargs):
    """``query [B, heads, L, D]``, ``key``/``value [B, kv_heads, L, D]`` -> ``[B, L, heads, D]``
    (transformers' attention-function contract), attending within each segment only."""
    if segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    length = query.shape[2]
    rows = []
    # split, not slices: a slice's backward writes its gradient into a zero-filled tensor of
    # the whole input, once per block and row; split's backward is one concatenation
    for bounds, *row in zip(segments.tolist(), *(torch.split(x, 1) for x in (query, key, value))):
        sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])] + [length - bounds[-1]]
        blocks = zip(*(torch.split(x, sizes, dim=2) for x in row))
        parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                  is_causal=True, enable_gqa=gqa)
                 for (q, k, v), size in zip(blocks, sizes[:-1]) if size > 0]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None
