"""Continuous batching: decode many prompts with a KV cache, refilling the batch as rows finish.

``generate_continuously`` keeps up to ``batch_size`` sequences in flight. Each step feeds
one token per sequence through the model; a sequence that finishes leaves the batch at
once and the next waiting prompt takes its place. So no step computes a finished row, and
no step waits for the longest completion of a fixed batch, which is where padded batched
``model.generate`` loses most of its speed-up when completions differ in length.

How one prompt joins:

1. it is prefilled ALONE and unpadded (one forward over its tokens), so its first new
   token is computed as one-prompt-at-a-time generation computes it; the token prefix
   all prompts of the call share (a chat template's system prompt) is prefilled once;
2. its KV cache joins the batch's: every layer's keys/values ``[B, heads, T, head_dim]``
   are LEFT padded to a common width ``T`` and concatenated on the batch axis;
3. every step passes explicit ``position_ids`` (each row's own length) and a 2-D
   attention mask that hides each row's left padding.

When rows leave, the cache keeps the other rows and drops the columns that have become
padding for every remaining row.

    def pick(logits, indices):       # logits [n, vocab] for the sequences `indices`
        return logits.argmax(-1).tolist()

    def on_token(index, token):      # True when sequence `index` is finished
        out[index].append(token)
        return token == eos or len(out[index]) == 64

    generate_continuously(model, [ids_a, ids_b, ids_c], batch_size=2, pick=pick, on_token=on_token)

Models whose cache is not a plain full-attention ``DynamicCache`` (sliding windows, linear
attention, PEFT prompt learning) are refused by ``supports_continuous``; callers then use
``model.generate``.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sftlab.models import split_model

Pick = Callable[[torch.Tensor, list[int]], list[int]]
OnToken = Callable[[int, int], bool]


def supports_continuous(model) -> bool:
    """True when every layer of the model's cache is a plain full-attention ``DynamicLayer``
    and no PEFT prompt-learning adapter prepends virtual tokens inside ``generate``."""
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config transformers cannot map to cache layers
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class _Layer(DynamicLayer):
    """One layer's keys and values in preallocated buffers ``[B, heads, capacity, head_dim]``.
    A step writes its column in place; ``DynamicLayer.update`` would concatenate, copying the
    layer's whole cache on every step. ``keys``/``values`` are views of the used columns."""

    HEADROOM = 64  # columns allocated ahead: one reallocation every 64 steps

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.key_buffer, self.value_buffer = _with_headroom(keys, self.HEADROOM), _with_headroom(values, self.HEADROOM)
        self.used = keys.shape[-2]
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[..., :self.used, :]
        self.values = self.value_buffer[..., :self.used, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.used + new > self.key_buffer.shape[-2]:
            self.key_buffer = _with_headroom(self.keys, self.HEADROOM + new)
            self.value_buffer = _with_headroom(self.values, self.HEADROOM + new)
        self.key_buffer[..., self.used:self.used + new, :] = key_states
        self.value_buffer[..., self.used:self.used + new, :] = value_states
        self.used += new
        self._views()
        return self.keys, self.values


class KVBatch:
    """The KV cache of the sequences in flight. Every layer holds keys and values
    ``[B, heads, T, head_dim]``, left padded: row ``r`` holds its ``lengths[r]`` tokens in the
    last ``lengths[r]`` columns."""

    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self.lengths: list[int] = []

    @property
    def width(self) -> int:
        return self.layers[0].used if self.layers else 0

    def add(self, cache) -> None:
        """Append the rows of a prefilled ``DynamicCache`` (unpadded, all rows full length)."""
        rows, width = cache.layers[0].keys.shape[0], cache.get_seq_length()
        if not self.layers:
            self.layers = [_Layer(layer.keys, layer.values) for layer in cache.layers]
        else:
            common = max(self.width, width)
            self.layers = [_Layer(torch.cat([_pad_left(mine.keys, common), _pad_left(theirs.keys, common)]),
                                  torch.cat([_pad_left(mine.values, common), _pad_left(theirs.values, common)]))
                           for mine, theirs in zip(self.layers, cache.layers)]
        self.lengths += [width] * rows

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop columns no remaining row uses."""
        self.lengths = [self.lengths[r] for r in rows]
        if not rows:
            self.layers = []
            return
        start = self.width - max(self.lengths)
        index = torch.tensor(rows, device=self.layers[0].key_buffer.device)
        self.layers = [_Layer(layer.keys[index, :, start:], layer.values[index, :, start:])
                       for layer in self.layers]

    def step(self, model, split, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; returns next-token logits ``[B, vocab]``; the cache grows
        by one column. ``split``: ``sftlab.models.split_model(model)``."""
        device = self.layers[0].key_buffer.device
        width = self.width
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(width + 1, device=device)
        inputs = dict(input_ids=torch.tensor(tokens, device=device)[:, None], position_ids=lengths[:, None],
                      attention_mask=(columns[None, :] >= (width - lengths)[:, None]).long(),
                      past_key_values=self._cache(), use_cache=True)
        self.lengths = [n + 1 for n in self.lengths]
        with _FewRowsLinear() if _few_rows_helps(device) else contextlib.nullcontext():
            return next_token_logits(model, split, inputs)

    def _cache(self):
        cache = DynamicCache()
        cache.layers = list(self.layers)
        return cache


def next_token_logits(model, split, inputs: dict) -> torch.Tensor:
    """Logits ``[B, vocab]`` at the last position. With a plain linear head the decoder runs
    without it and the head is applied as ``weight @ hidden.T`` (vocab rows times a few
    columns), which MKL runs about 1.6x faster on this CPU than ``F.linear``'s
    ``hidden @ weight.T`` for a handful of rows: the head is a fifth of a decode step.
    ``split``: ``(body, head)`` from ``sftlab.models.split_model(model)``."""
    body, head = split
    if body is None or head.bias is not None:
        return model(**inputs).logits[:, -1]
    hidden = body(**inputs).last_hidden_state[:, -1]
    return torch.mm(head.weight, hidden.t()).t()


def _few_rows_helps(device) -> bool:
    return device.type == "cpu" and torch.get_num_threads() > 1


class _FewRowsLinear(TorchFunctionMode):
    """``F.linear(x, W)`` for a few rows of ``x`` computed as ``(W @ x.T).T``.

    On CPU, MKL splits ``x @ W.T`` over the rows of ``x``: with a decode step's 8 rows most
    threads idle. ``W @ x.T`` has W's hundreds of rows to split. Measured on the 2-core
    development machine (SmolLM2-135M, 8 rows): a decode step 157 -> 133 ms with 2 threads;
    with 1 thread it is slower (177 -> 210 ms), so it is used only with several threads.
    """

    MAX_ROWS = 16

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dim() >= 2 and x.numel() <= self.MAX_ROWS * x.shape[-1]:
                out = torch.mm(weight, x.reshape(-1, x.shape[-1]).t()).t()
                out = out if bias is None else out + bias
                return out.reshape(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


def prefill(model, prompt: Sequence[int], prefix=None):
    """One unpadded forward over a prompt: ``(next-token logits [1, vocab], DynamicCache)``.

    ``prefix``: a ``(length, DynamicCache)`` pair holding the keys and values of the prompt's
    first ``length`` tokens; only the rest is computed (the prefix cache is not modified).
    """
    device = model.device
    cache, start = None, 0
    if prefix is not None:
        start, shared = prefix
        cache = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in shared.layers])
    out = model(input_ids=torch.tensor([list(prompt[start:])], device=device), past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


def shared_prefix(model, prompts: Sequence[Sequence[int]], min_tokens: int = 16):
    """Prefill the token prefix every prompt starts with (a chat template's system prompt,
    few-shot examples) once: ``(length, DynamicCache)``, or ``None`` when there are fewer
    than two prompts or the prefix is shorter than ``min_tokens``. Each prompt keeps at
    least one token of its own, whose logits pick its first new token."""
    length = common_prefix(prompts, min_tokens)
    return (length, prefill(model, prompts[0][:length])[1]) if length else None


def common_prefix(prompts: Sequence[Sequence[int]], min_tokens: int = 16) -> int:
    """How many leading tokens every prompt shares, leaving each at least one of its own; 0
    when there are fewer than two prompts or fewer than ``min_tokens`` shared tokens.

    >>> common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3]], min_tokens=2)
    2
    """
    if len(prompts) < 2:
        return 0
    length = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for other in prompts[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return length if length >= min_tokens else 0


def generate_continuously(model, prompts: Sequence[Sequence[int]], batch_size: int, pick: Pick,
                          on_token: OnToken) -> int:
    """Decode every prompt until ``on_token`` says it is finished; returns the number of
    batched decode steps. Prompts are admitted in the order given (index = position in
    ``prompts``). Call under ``torch.inference_mode()``."""
    split = split_model(model)   # once per call, not per step
    prefix = shared_prefix(model, prompts)
    waiting = deque(range(len(prompts)))
    batch, active, pending = KVBatch(), [], []   # row r of the cache is sequence active[r]
    steps = 0
    while waiting or active:
        while waiting and len(active) < batch_size:
            index = waiting.popleft()
            logits, cache = prefill(model, prompts[index], prefix)
            token = pick(logits, [index])[0]
            if not on_token(index, token):
                batch.add(cache)
                active.append(index)
                pending.append(token)
        if not active:
            continue
        logits = batch.step(model, split, pending)
        steps += 1
        chosen = pick(logits, active)
        stay = [r for r, (index, token) in enumerate(zip(active, chosen)) if not on_token(index, token)]
        if len(stay) < len(active):
            batch.keep(stay)
        active, pending = [active[r] for r in stay], [chosen[r] for r in stay]
    return steps


def _with_headroom(filled: torch.Tensor, extra: int) -> torch.Tensor:
    """A buffer with ``extra`` free columns after a copy of ``filled`` ``[B, heads, T, D]``."""
    buffer = filled.new_empty(*filled.shape[:-2], filled.shape[-2] + extra, filled.shape[-1])
    buffer[..., :filled.shape[-2], :] = filled
    return buffer


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros(*tensor.shape[:-2], missing, tensor.shape[-1])
    return torch.cat([pad, tensor], dim=-2)
