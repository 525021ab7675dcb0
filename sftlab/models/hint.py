"""HINT (Ivison et al. 2023, "HINT: Hypernetwork Instruction Tuning for Efficient Zero- &
Few-Shot Generalisation") for decoder-only LMs: the instruction is read ONCE per task.

A hypernetwork turns the instruction (a task definition, optionally with few-shot examples)
into parameter-efficient modules for the frozen base model; the model then reads only the
instance. Many instances of one task therefore skip re-reading the long instruction: the
instruction costs one encoding pass per task instead of one per instance.

**Data.** The instruction is the conversation's leading system turn; the instance is the
rest (user turn, answer). The rows are rendered exactly as for plain instruction
concatenation, and ``InstructionSplit`` cuts each row's token ids after the system turn. The
split is learnt from the chat template (two probe renderings give the turn's opening and
closing tokens), so the same data and the same training loop serve both: a concatenation
baseline reads the whole row, HINT reads ``instance`` and generates modules from
``instruction``. A row that does not start with a system turn is a ``DataError``.

**Hypernetwork** (``HyperNetwork``; the only trained part, the base stays frozen)::

    S   = the frozen base model's last hidden states over the instruction's tokens
    e   = mean of S (``pooling: mean``), or Q learned queries attending over LayerNorm(S),
          concatenated (``pooling: attention``, Q = ``pooling_queries``)
    h   = MLP(LayerNorm(e))                           (hyper_dim)
    z_l = GELU(mix(h + layer_embedding_l))            one code per decoder layer l
    z_l -> down_l,s (d x r), up_l,s (r x d)           a bottleneck adapter after each
                                                      ``after`` linear s of layer l
    z_l -> K_l, V_l (P prefix slots per head), g_l    a gated prefix per attention layer

Each adapter maps the linear's output ``x`` to ``x + act(x down) up``. The prefix is read
with its own softmax and a tanh gate per head, added to the heads' outputs before the
frozen ``o_proj`` (the layer's own queries, before rotary embedding, are reused)::

    o_proj(heads(x) + tanh(g) * softmax(q K^T / sqrt(d_head)) V),  q = q_proj(x)

That is the zero-init-attention form of LLaMA-Adapter (Zhang et al. 2023) rather than
prefix tuning's shared softmax: with ``g = 0`` the prefix adds an exact zero, and it needs
no key/value cache, no position offset and no change to the attention kernel, so it works
the same in training, in cached generation and for any attention implementation. The
generator's output layers for ``up`` and ``g`` start at exactly zero (weights and bias):
a fresh HINT model computes the base model's logits bit for bit, for every instruction.

**Encoding once.** ``HintModel.generate_modules`` encodes each *distinct* instruction of a
batch once (rows with equal instruction ids share one encoding; the encoding runs without
gradients, the base being frozen). ``compile_task`` does it once for a task and returns
plain tensors (``HintTask``) that run on the bare base model without the hypernetwork
(``apply_task``, also under ``generate``), saved as their own small file set.

**Output layout.** In training the one loop's ``CausalLMLoss`` calls ``model.decoder_view``
(the ``base_model_prefix`` body) with the concatenated rows. It returns hidden states in
the rows' own layout: the instance's HINT states at the instance's positions, the frozen
base model's states at the instruction's positions (which is what the base computes there:
a causal model's instruction states do not depend on the instance; they carry no
gradient) and zeros at padding. Labels, the loss and its normalisation (sum over labelled
tokens / count, ``sftlab.train.loss``) are therefore untouched: the loop never learns that
HINT dropped the instruction from the instance's forward pass. Packed rows are refused
(``check_method_supported``): one row would hold several instructions.

**Saving** (sftlab's adapter file names, its own format)::

    sftlab_adapter.json          {"format": "sftlab_hint", "version": 1, "bottleneck": 16,
                                  "after": [...], "activation": "gelu", "prefix_tokens": 4,
                                  "hyper_dim": 128, "init_std": 0.01, "pooling": "mean",
                                  "pooling_queries": 4,
                                  "split": {"header": [...], "end": [...]}, "base_model": ...}
    sftlab_adapter.safetensors   "hypernetwork.encode.1.weight", ...

    hint = load_hint(base_model, "runs/hint/adapter")
    task = compile_task(hint, tokenizer=tok, instruction="Definition: ...")
    apply_task(base_model, task); base_model.generate(instance_ids)   # no hypernetwork

A compiled task is saved by ``HintTask.save`` (``"format": "sftlab_hint_task"``: the
generated tensors) and read by ``HintTask.load``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

from sftlab.data.chat import apply_template
from sftlab.errors import ConfigError, DataError
from sftlab.models.layers import decoder_layers
from sftlab.types import IGNORE_INDEX, Message

FORMAT = "sftlab_hint"
TASK_FORMAT = "sftlab_hint_task"
FORMAT_VERSION = 1
CONFIG_FILE = "sftlab_adapter.json"
WEIGHTS_FILE = "sftlab_adapter.safetensors"
# the settings a saved hypernetwork records (all required)
SETTINGS = ("bottleneck", "after", "activation", "prefix_tokens", "hyper_dim", "init_std",
            "pooling", "pooling_queries")

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}


# -- where the instruction ends --------------------------------------------------------------

@dataclass(frozen=True)
class InstructionSplit:
    """The token ids that open (``header``) and close (``end``) the leading system turn.

    ``boundary(ids)`` is the length of the instruction part of a rendered row: the header,
    the system text and the first ``end`` after it.

    >>> split = InstructionSplit(header=(1, 9), end=(2, 7))
    >>> split.boundary([1, 9, 40, 41, 2, 7, 1, 5, 50]), split.boundary([1, 5, 50])
    (6, None)
    """

    header: tuple[int, ...]
    end: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "InstructionSplit":
        """Learn the split from the chat template: two system turns with different texts
        share exactly the turn's opening and closing tokens. ConfigError for a template
        that does not render the system turn first and on its own (Llama-2 folds it into
        the first user turn)."""
        probes = [_ids(tokenizer, [Message("system", text)]) for text in ("Alpha", "Beta gamma 7")]
        header = _common_prefix(*probes)
        end = _common_prefix(probes[0][::-1], probes[1][::-1])[::-1]
        full = _ids(tokenizer, [Message("system", "Alpha"), Message("user", "Delta")])
        if not header or not end or full[:len(probes[0])] != probes[0] \
                or len(header) + len(end) >= len(probes[0]):
            raise ConfigError("method 'hint': the chat template does not render the system turn "
                              "on its own before the user turn, so the instruction (the system "
                              "message) cannot be cut from the instance; use a ChatML-style "
                              "template (data: set the tokenizer's chat_template)")
        return cls(tuple(header), tuple(end))

    def boundary(self, ids: list[int]) -> int | None:
        """Length of the instruction part of ``ids``; None when ``ids`` does not start with
        a complete system turn."""
        head, end = len(self.header), len(self.end)
        if list(ids[:head]) != list(self.header):
            return None
        for start in range(head, len(ids) - end + 1):
            if list(ids[start:start + end]) == list(self.end):
                return start + end
        return None

    def to_dict(self) -> dict:
        return {"header": list(self.header), "end": list(self.end)}


def _ids(tokenizer, messages) -> list[int]:
    text = apply_template(tokenizer, messages, add_generation_prompt=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])


# -- the hypernetwork ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shape:
    """What the generated modules must fit: hidden size, layers, adapter sites per layer,
    attention heads and head size."""

    dim: int
    layers: int
    sites: int
    heads: int
    head_dim: int


class HyperNetwork(nn.Module):
    """Instruction states ``[U, Ti, d]`` (+ mask) -> modules for every layer (``forward``)."""

    def __init__(self, shape: _Shape, settings: dict, dtype=torch.float32, device=None) -> None:
        super().__init__()
        self.shape, self.settings = shape, dict(settings)
        hyper, rank, slots = settings["hyper_dim"], settings["bottleneck"], settings["prefix_tokens"]
        kw = {"dtype": dtype, "device": device}
        width = shape.dim
        if settings["pooling"] == "attention":
            queries = settings["pooling_queries"]
            self.pool_norm = nn.LayerNorm(shape.dim, **kw)
            self.queries = nn.Parameter(torch.randn(queries, shape.dim, **kw) / shape.dim ** 0.5)
            width = queries * shape.dim
        self.encode = nn.Sequential(nn.LayerNorm(width, **kw), nn.Linear(width, hyper, **kw),
                                    nn.GELU(), nn.Linear(hyper, hyper, **kw))
        self.layer_embedding = nn.Parameter(torch.randn(shape.layers, hyper, **kw))
        self.mix = nn.Linear(hyper, hyper, **kw)
        out = shape.sites * shape.dim * rank
        self.down = nn.Linear(hyper, out, **kw)
        self.up = nn.Linear(hyper, out, **kw)
        std = settings["init_std"]
        with torch.no_grad():  # the generated down entries start at about init_std
            self.down.weight.normal_(std=std / hyper ** 0.5)
            self.down.bias.normal_(std=std)
            self.up.weight.zero_()  # up = 0 for every instruction: the base model exactly
            self.up.bias.zero_()
        if slots:
            width = slots * shape.heads * shape.head_dim
            self.keys = nn.Linear(hyper, width, **kw)
            self.values = nn.Linear(hyper, width, **kw)
            self.gate = nn.Linear(hyper, shape.heads, **kw)
            with torch.no_grad():
                self.gate.weight.zero_()  # tanh(0) = 0: the prefix adds an exact zero
                self.gate.bias.zero_()

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``states [U, Ti, d]``, ``mask [U, Ti]`` -> ``[U, d]`` (mean) or ``[U, Q·d]``."""
        states = states.to(self.mix.weight.dtype)
        if self.settings["pooling"] != "attention":
            weights = mask.to(states.dtype)[..., None]
            return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        keys = self.pool_norm(states)
        scores = torch.einsum("qd,utd->uqt", self.queries, keys) * keys.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        return torch.einsum("uqt,utd->uqd", scores.softmax(-1), keys).flatten(1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``states [U, Ti, d]``, ``mask [U, Ti]`` -> ``{"down": [U, L, S, d, r], "up": [U, L,
        S, r, d], "keys"/"values": [U, L, heads, P, head_dim], "gate": [U, L, heads]}`` (no
        prefix entries when ``prefix_tokens`` is 0)."""
        s, rank, slots = self.shape, self.settings["bottleneck"], self.settings["prefix_tokens"]
        h = self.encode(self.pool(states, mask))
        z = F.gelu(self.mix(h[:, None, :] + self.layer_embedding[None]))  # [U, L, hyper]
        u = z.shape[0]
        out = {"down": self.down(z).view(u, s.layers, s.sites, s.dim, rank),
               "up": self.up(z).view(u, s.layers, s.sites, rank, s.dim)}
        if slots:
            out["keys"] = self.keys(z).view(u, s.layers, s.heads, slots, s.head_dim)
            out["values"] = self.values(z).view(u, s.layers, s.heads, slots, s.head_dim)
            out["gate"] = torch.tanh(self.gate(z))
        return out


# -- applying generated modules: hooks on the frozen base --------------------------------------

class _Runtime:
    """What the hooks read: the generated modules (leading dim U) and each row's index into
    them (``rows [B]``; None: one set for every row). ``modules`` None: the hooks do nothing."""

    def __init__(self) -> None:
        self.modules: dict[str, torch.Tensor] | None = None
        self.rows: torch.Tensor | None = None
        self.queries: dict[int, torch.Tensor] = {}  # layer -> its q_proj output, until read

    def take(self, name: str, *index) -> torch.Tensor:
        tensor = self.modules[name][(slice(None),) + index]
        return tensor if self.rows is None else tensor[self.rows]


def _sites(base: nn.Module, settings: dict) -> tuple[list, list, _Shape]:
    """The adapted linears ``[[layer l's linear per after name]]``, the attention modules
    (one per layer, or empty without a prefix) and the shape they imply."""
    layers = decoder_layers(base)
    if layers is None:
        raise ConfigError(f"method 'hint': cannot find the decoder layers of {type(base).__name__}")
    dim = base.config.hidden_size
    linears = []
    for index, layer in enumerate(layers):
        found = []
        for name in settings["after"]:
            matches = [m for n, m in layer.named_modules()
                       if n.rpartition(".")[2] == name and isinstance(m, nn.Linear)]
            if len(matches) != 1 or matches[0].out_features != dim:
                raise ConfigError(f"hint.after: '{name}' must name one nn.Linear with output size "
                                  f"{dim} in each decoder layer (layer {index} has {len(matches)}); "
                                  f"Llama names: o_proj, down_proj")
            found.append(matches[0])
        linears.append(found)
    attentions = []
    heads = head_dim = 1
    if settings["prefix_tokens"]:
        for index, layer in enumerate(layers):
            attention = getattr(layer, "self_attn", None)
            if attention is None or not hasattr(attention, "q_proj") or not hasattr(attention, "o_proj"):
                raise ConfigError(f"hint.prefix_tokens: decoder layer {index} has no self_attn with "
                                  f"q_proj/o_proj; set hint.prefix_tokens=0")
            attentions.append(attention)
        head_dim = attentions[0].head_dim
        heads = attentions[0].q_proj.out_features // head_dim
    return linears, attentions, _Shape(dim, len(layers), len(settings["after"]), heads, head_dim)


def _install_hooks(base: nn.Module, settings: dict, runtime: _Runtime) -> list:
    """Forward hooks that add the generated adapters and prefixes; returns the handles."""
    linears, attentions, shape = _sites(base, settings)
    act = _ACTIVATIONS[settings["activation"]]
    handles = []
    for layer, found in enumerate(linears):
        for site, linear in enumerate(found):
            handles.append(linear.register_forward_hook(_adapter_hook(runtime, layer, site, act)))
    for layer, attention in enumerate(attentions):
        handles.append(attention.q_proj.register_forward_hook(_query_hook(runtime, layer)))
        handles.append(attention.o_proj.register_forward_pre_hook(
            _prefix_hook(runtime, layer, shape.heads, shape.head_dim)))
    return handles


def _adapter_hook(runtime: _Runtime, layer: int, site: int, act):
    def hook(module, args, output):
        if runtime.modules is None:
            return None
        down = runtime.take("down", layer, site).to(output.dtype)  # [B or 1, d, r]
        up = runtime.take("up", layer, site).to(output.dtype)
        return output + torch.matmul(act(torch.matmul(output, down)), up)
    return hook


def _query_hook(runtime: _Runtime, layer: int):
    """Keep the layer's queries (before rotary embedding) for its prefix read."""
    def hook(module, args, output):
        if runtime.modules is not None and "keys" in runtime.modules:
            runtime.queries[layer] = output
    return hook


def _prefix_hook(runtime: _Runtime, layer: int, heads: int, head_dim: int):
    """Add ``tanh(g) * softmax(q K^T / sqrt(d_head)) V`` to ``o_proj``'s input (the heads'
    concatenated outputs): the same as adding ``o_proj.weight`` times it to the attention
    output, without a second projection."""
    def hook(module, args):
        query = runtime.queries.pop(layer, None)
        if runtime.modules is None or query is None:
            return None
        (attended,) = args
        batch, length, _ = query.shape
        query = query.view(batch, length, heads, head_dim).transpose(1, 2)  # [B, heads, T, hd]
        keys = runtime.take("keys", layer).to(query.dtype)  # [B or 1, heads, P, head_dim]
        values = runtime.take("values", layer).to(query.dtype)
        gate = runtime.take("gate", layer).to(query.dtype)  # [B or 1, heads]
        weights = torch.softmax((query @ keys.transpose(-1, -2)).float() * head_dim ** -0.5, -1)
        read = (weights.to(query.dtype) @ values) * gate[:, :, None, None]
        return (attended + read.transpose(1, 2).reshape(batch, length, heads * head_dim).to(attended.dtype),)
    return hook


# -- the model the loop trains ---------------------------------------------------------------

class _DecoderView(nn.Module):
    """``HintModel``'s body for ``CausalLMLoss``: concatenated rows in, hidden states in the
    rows' own layout out (see the module docstring)."""

    def __init__(self, owner: "HintModel") -> None:
        super().__init__()
        self.__dict__["owner"] = owner  # a reference, not a submodule (no cycle)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **_):
        if position_ids is not None and attention_mask is None:
            raise ConfigError("method 'hint' cannot train packed or padding-free rows; set "
                              "data.packing=false and data.padding_free=false")
        return BaseModelOutput(last_hidden_state=self.owner.concatenated_hidden(input_ids,
                                                                                attention_mask))


class HintModel(nn.Module):
    """The frozen ``base`` causal LM plus a ``HyperNetwork`` (what trains).

    ``forward(input_ids, attention_mask, labels=None)`` takes concatenated rows (system
    turn + instance) and returns ``CausalLMOutput`` logits in that layout; with
    ``instruction_input_ids`` (+ ``instruction_attention_mask``) ``input_ids`` is the instance
    alone and the logits are the instance's.
    """

    base_model_prefix = "decoder_view"

    def __init__(self, base: nn.Module, settings: dict, split: InstructionSplit) -> None:
        super().__init__()
        missing = [key for key in SETTINGS if key not in settings]
        if missing:
            raise ConfigError(f"hint settings lack {', '.join(missing)}")
        if settings["bottleneck"] < 1 or settings["hyper_dim"] < 1 or settings["prefix_tokens"] < 0:
            raise ConfigError("hint.bottleneck and hint.hyper_dim must be >= 1, "
                              "hint.prefix_tokens >= 0")
        if settings["pooling"] not in ("mean", "attention") or settings["pooling_queries"] < 1:
            raise ConfigError(f"hint.pooling must be mean or attention and hint.pooling_queries "
                              f">= 1, got {settings['pooling']!r}, {settings['pooling_queries']!r}")
        if settings["activation"] not in _ACTIVATIONS:
            raise ConfigError(f"hint.activation={settings['activation']!r} "
                              f"(allowed: {', '.join(_ACTIVATIONS)})")
        self.settings = {key: settings[key] for key in SETTINGS}
        self.split = split
        self.base = base
        base.requires_grad_(False)
        self.runtime = _Runtime()
        self.handles = _install_hooks(base, self.settings, self.runtime)
        _, _, shape = _sites(base, self.settings)
        first = next(base.parameters())
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        self.hypernetwork = HyperNetwork(shape, self.settings, dtype=dtype, device=first.device)
        self.decoder_view = _DecoderView(self)

    # what the loop and ``split_model`` ask of a causal LM
    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return getattr(self.base, "generation_config", None)

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def _body(self):
        return getattr(self.base, self.base.base_model_prefix, None) or self.base.get_decoder()

    # encoding and generating
    def encode(self, instructions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen base states of each instruction (no modules applied, no gradient):
        ``(states [U, Ti, d], mask [U, Ti])``."""
        ids, mask = _pad(instructions, self._device(), pad=0)
        self.runtime.modules = None
        with torch.no_grad():
            states = self._body()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return states, mask

    def generate_modules(self, instructions: list[list[int]]):
        """Modules for each DISTINCT instruction: ``(modules with leading dim U, index of
        each input instruction into U, the encoding's states, mask)``."""
        unique: dict[tuple, int] = {}
        index = [unique.setdefault(tuple(ids), len(unique)) for ids in instructions]
        states, mask = self.encode([list(key) for key in unique])
        return self.hypernetwork(states, mask), torch.tensor(index, device=self._device()), states, mask

    def instance_hidden(self, input_ids, attention_mask, modules, rows) -> torch.Tensor:
        """The base body's last hidden state on the instances with ``modules`` applied."""
        self.runtime.modules, self.runtime.rows = modules, rows
        try:
            return self._body()(input_ids=input_ids, attention_mask=attention_mask,
                                use_cache=False).last_hidden_state
        finally:  # the bare base model is itself again, unless a gradient-checkpointed
            # backward must recompute this forward with the modules (the next call resets them)
            if not getattr(self._body(), "gradient_checkpointing", False):
                self.runtime.modules = self.runtime.rows = None

    def concatenated_hidden(self, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Concatenated rows ``[B, T]`` -> hidden states ``[B, T, d]`` in that layout."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.dim() != 2:
            raise ConfigError("method 'hint' needs padded rows with a 2-D attention mask "
                              "(no packing, no padding-free)")
        lengths = attention_mask.sum(1).tolist()
        rows = input_ids.tolist()
        instructions, instances, starts = [], [], []
        for b, (row, length) in enumerate(zip(rows, lengths)):
            if attention_mask[b, :length].sum() != length:
                raise DataError("method 'hint' needs right-padded rows (padding after the tokens)")
            cut = self.split.boundary(row[:length])
            if cut is None or cut >= length:
                raise DataError(f"method 'hint': row {b} of the batch does not start with a system "
                                f"turn followed by an instance; HINT reads the instruction (task "
                                f"definition, examples) from the system message. Give every row one, "
                                f"and keep data.max_length above the system turn's length")
            instructions.append(row[:cut])
            instances.append(row[cut:length])
            starts.append(cut)
        modules, index, states, _ = self.generate_modules(instructions)
        ids, mask = _pad(instances, input_ids.device, pad=0)
        hidden = self.instance_hidden(ids, mask, modules, index)
        return _relayout(hidden, states[index], starts, lengths, input_ids.shape[1])

    def forward(self, input_ids, attention_mask=None, labels=None, instruction_input_ids=None,
                instruction_attention_mask=None, **_):
        if instruction_input_ids is None:
            hidden = self.concatenated_hidden(input_ids, attention_mask)
        else:
            mask = instruction_attention_mask
            instructions = [row[:int(mask[b].sum())] if mask is not None else row
                            for b, row in enumerate(instruction_input_ids.tolist())]
            modules, index, _, _ = self.generate_modules(instructions)
            hidden = self.instance_hidden(input_ids, attention_mask, modules, index)
        logits = self.get_output_embeddings()(hidden)
        loss = None
        if labels is not None:
            targets = torch.full_like(labels, IGNORE_INDEX)
            targets[:, :-1] = labels[:, 1:]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=IGNORE_INDEX)
        return CausalLMOutput(loss=loss, logits=logits)

    def save_pretrained(self, path: str | Path) -> Path:
        return save_hint(self, path)

    def _device(self):
        return self.hypernetwork.mix.weight.device


def _pad(rows: list[list[int]], device, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, :len(row)] = 1
    return ids.to(device), mask.to(device)


def _relayout(instance: torch.Tensor, instruction: torch.Tensor, starts: list[int],
              lengths: list[int], width: int) -> torch.Tensor:
    """Row b: ``instruction[b, :starts[b]]``, then ``instance[b, :lengths[b]-starts[b]]``,
    zeros after ``lengths[b]``: ``[B, width, d]``."""
    device = instance.device
    t = torch.arange(width, device=device)[None]
    start = torch.tensor(starts, device=device)[:, None]
    length = torch.tensor(lengths, device=device)[:, None]
    dim = instance.shape[-1]
    at_instance = instance.gather(1, (t - start).clamp(0, instance.shape[1] - 1)[..., None]
                                  .expand(-1, -1, dim))
    at_instruction = instruction.to(instance.dtype).gather(
        1, t.clamp(max=instruction.shape[1] - 1).expand(len(starts), -1)[..., None].expand(-1, -1, dim))
    out = torch.where((t < start)[..., None], at_instruction, at_instance)
    return torch.where((t < length)[..., None], out, torch.zeros((), dtype=out.dtype, device=device))


def add_hint(model: nn.Module, settings: dict, tokenizer=None, split: InstructionSplit | None = None
             ) -> HintModel:
    """Wrap a base causal LM for HINT training (the base is frozen; the hypernetwork trains).

    ``settings``: ``{"bottleneck": 16, "after": ["o_proj", "down_proj"], "activation":
    "gelu", "prefix_tokens": 4, "hyper_dim": 128, "init_std": 0.01, "pooling": "mean",
    "pooling_queries": 4}`` (``SETTINGS``);
    the instruction split comes from ``tokenizer``'s chat template unless given.
    """
    if split is None:
        if tokenizer is None:
            raise ConfigError("method 'hint' needs the tokenizer (to cut the system turn from "
                              "each row): call prepare_model(model, config, tokenizer)")
        split = InstructionSplit.from_tokenizer(tokenizer)
    return HintModel(model, settings, split)


# -- saving, loading, compiling ---------------------------------------------------------------

def save_hint(model: HintModel, path: str | Path) -> Path:
    """Write the hypernetwork and its settings into directory ``path`` (``sftlab_hint``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = getattr(model.base.config, "_name_or_path", None)
    config = {"format": FORMAT, "version": FORMAT_VERSION, **model.settings,
              "split": model.split.to_dict(), "base_model": base}
    tensors = {f"hypernetwork.{k}": v.detach().contiguous().cpu()
               for k, v in model.hypernetwork.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def _read_config(path: Path, expected: str) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{path}: not an sftlab adapter (no {CONFIG_FILE})")
    config = json.loads(file.read_text())
    if config.get("format") != expected or config.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{file}: format/version {config.get('format')!r}/"
                          f"{config.get('version')!r}, expected {expected!r}/{FORMAT_VERSION}")
    return config


def load_hint(model: nn.Module, path: str | Path) -> HintModel:
    """A trained ``HintModel`` on base ``model`` from a ``save_hint`` directory."""
    path = Path(path)
    config = _read_config(path, FORMAT)
    split = InstructionSplit(tuple(config["split"]["header"]), tuple(config["split"]["end"]))
    hint = HintModel(model, config, split)
    saved = {k.removeprefix("hypernetwork."): v for k, v in load_file(str(path / WEIGHTS_FILE)).items()}
    expected = hint.hypernetwork.state_dict()
    if set(saved) != set(expected):
        odd = sorted(set(saved) ^ set(expected))[0]
        raise ConfigError(f"{path}: hypernetwork tensors do not match (e.g. '{odd}')")
    for name, tensor in expected.items():
        if tensor.shape != saved[name].shape:
            raise ConfigError(f"{path}: '{name}' has shape {tuple(saved[name].shape)}, this base "
                              f"model needs {tuple(tensor.shape)}; load it onto its own base model")
    hint.hypernetwork.load_state_dict(saved)
    return hint


@dataclass
class HintTask:
    """The modules generated for one instruction (leading dim 1) and the settings that
    place them: runs on the bare base model (``apply_task``), no hypernetwork needed."""

    settings: dict
    tensors: dict[str, torch.Tensor]
    instruction_tokens: int

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.tensors.items()},
                  str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {"format": TASK_FORMAT, "version": FORMAT_VERSION, **self.settings,
                  "instruction_tokens": self.instruction_tokens}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HintTask":
        path = Path(path)
        config = _read_config(path, TASK_FORMAT)
        return cls({k: config[k] for k in SETTINGS}, load_file(str(path / WEIGHTS_FILE)),
                   int(config.get("instruction_tokens", 0)))


def compile_task(model: HintModel, instruction_ids: list[int] | None = None, *, tokenizer=None,
                 instruction: str | None = None) -> HintTask:
    """Encode one instruction once: token ids of the rendered system turn, or its text
    (``instruction`` + ``tokenizer``, rendered with the chat template)."""
    if instruction_ids is None:
        if instruction is None or tokenizer is None:
            raise ConfigError("compile_task needs instruction_ids, or instruction text and the tokenizer")
        instruction_ids = _ids(tokenizer, [Message("system", instruction)])
    with torch.no_grad():
        modules, _, _, _ = model.generate_modules([list(instruction_ids)])
    return HintTask(dict(model.settings), {k: v.detach().clone() for k, v in modules.items()},
                    len(instruction_ids))


class AppliedTask:
    """Hooks of one compiled task on a base model; ``remove()`` takes them off."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> "AppliedTask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_task(model: nn.Module, task: HintTask) -> AppliedTask:
    """Put ``task``'s adapters and prefix on the bare base ``model`` (in place, as hooks,
    for every row and every call: ``forward`` and ``generate`` alike) until ``remove()``."""
    runtime = _Runtime()
    device = next(model.parameters()).device
    runtime.modules = {k: v.to(device) for k, v in task.tensors.items()}
    handles = _install_hooks(model, task.settings, runtime)
    _, _, shape = _sites(model, task.settings)
    down = runtime.modules["down"]
    if tuple(down.shape[1:4]) != (shape.layers, shape.sites, shape.dim):
        for handle in handles:
            handle.remove()
        raise ConfigError(f"the compiled task's modules have shape {tuple(down.shape)}, this model "
                          f"needs [1, {shape.layers}, {shape.sites}, {shape.dim}, r]")
    return AppliedTask(handles)
