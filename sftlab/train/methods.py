"""Fine-tuning methods: each prepares a model and returns what the ONE training loop trains.

A method is a function ``prepare(model, config, tokenizer=None) -> Prepared`` registered in
``METHODS``. It freezes, wraps or extends the model and says which parameters to optimise
and how to save the result. The loop (``sftlab/train/sft.py``) never branches on the method
name; it reads the ``Prepared`` fields instead::

    config = MethodConfig(name="lora")                      # or build_config(MethodConfig, ...)
    check_method_supported(config, "cpu", grad_accumulation=1, num_processes=1,
                           packed=False, mixed_precision="no")   # ConfigError: cannot run
    model = AutoModelForCausalLM.from_pretrained(path, **model_load_kwargs(config))
    prepared = prepare_model(model, config, tokenizer)
    optimizer = AdamW(prepared.parameters, lr=1e-4)         # unless prepared.fused_backward
    ...
    prepared.save("out/final")                              # PEFT dir, full model or adapter

Methods and what they train (``trainable_summary`` reports the count):

========  ==========================================================================
full      every parameter
freeze    the last ``freeze.last_layers`` decoder layers plus ``freeze.modules`` globs
lora      low-rank updates B·A on ``lora.target_modules`` (PEFT), B = 0 at start
dora      LoRA with a learned magnitude per output column (PEFT ``use_dora``)
qlora     LoRA on a base whose linear layers are 4-bit NF4 (bitsandbytes)
prompt    ``prompt.num_virtual_tokens`` input embeddings prepended to every input (PEFT)
prefix    per-layer key/value prefixes (PEFT), started from real tokens' keys/values
ia3       learned per-channel scales of keys, values and the MLP (PEFT IA3)
adapter   Houlsby bottleneck adapters after attention and MLP, plus the norms (``adapters``)
bitfit    bias terms only (zero biases are added when the model has none)
lomo      every parameter, updated by SGD inside backward (``sftlab.train.lomo``)
========  ==========================================================================
"""
from __future__ import annotations

import fnmatch
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from sftlab.errors import ConfigError
from sftlab.registry import Registry

logger = logging.getLogger("sftlab.train.methods")

MethodName = Literal["full", "freeze", "lora", "dora", "qlora", "prompt", "prefix", "ia3",
                     "adapter", "bitfit", "lomo"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- configuration ------------------------------------------------------------------------

@dataclass
class LoraSection:
    """LoRA, DoRA and QLoRA: ``W x + (alpha / rank) · B A x`` with A: rank×in, B: out×rank."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    """module name suffixes to adapt (Llama names); ``["all-linear"]`` lets PEFT pick."""
    modules_to_save: list[str] = field(default_factory=list)
    """modules trained in full beside the adapter, e.g. ``["lm_head", "embed_tokens"]``."""


@dataclass
class FreezeSection:
    """Train the last N decoder layers (and named extra modules); freeze everything else."""

    last_layers: int = 2
    """how many decoder layers, counted from the output end, are trained (0 = none)."""
    modules: list[str] = field(default_factory=list)
    """extra parameter-name globs to train, e.g. ``["lm_head*", "model.norm*"]``."""


@dataclass
class QLoraSection:
    """4-bit base weights (Dettmers et al. 2023); the LoRA settings come from ``lora``."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    """quantise the per-block absmax constants too (saves ~0.4 bit per weight)."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class PromptSection:
    """Prompt tuning (Lester et al. 2021): trained virtual-token embeddings before the input."""

    num_virtual_tokens: int = 20
    init_text: str | None = None
    """initialise the virtual tokens from this text's embeddings (needs the tokenizer);
    None samples embeddings of random vocabulary tokens."""


@dataclass
class PrefixSection:
    """Prefix tuning (Li & Liang 2021): trained key/value prefixes in every layer."""

    num_virtual_tokens: int = 20
    init_text: str | None = None
    """initialise the prefixes with the keys/values the model computes for this text (needs
    the tokenizer); None uses random vocabulary tokens. Li & Liang found initialising from
    real words' activations much more stable than random vectors."""
    projection: bool = False
    """reparametrise the prefixes through a 2-layer MLP (the paper's other stabiliser);
    the MLP's output cannot be set, so it starts from PEFT's random init instead."""
    projection_hidden_size: int = 256


@dataclass
class IA3Section:
    """(IA)^3 (Liu et al. 2022): learned scaling vectors on keys, values and MLP inputs."""

    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    """targets whose INPUT is scaled (the MLP); the others scale their output."""


@dataclass
class AdapterSection:
    """Houlsby et al. 2019 bottleneck adapters: ``h + up(act(down(h)))``, up = 0 at start."""

    bottleneck: int = 64
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    after: list[str] = field(default_factory=lambda: ["o_proj", "down_proj"])
    """module name suffixes whose output gets an adapter: attention output and MLP output."""
    init_std: float = 0.01
    """std of the down-projection's normal init (the up-projection starts at zero)."""
    train_norms: bool = True
    """also train the normalisation layers' weights, as Houlsby et al. do."""


@dataclass
class BitfitSection:
    """BitFit (Ben Zaken et al. 2022): train bias terms only."""

    add_missing: bool = True
    """when the model has no bias at all (Llama), add zero biases to the attention and MLP
    linear layers (and set ``attention_bias``/``mlp_bias`` in its config so the saved model
    loads with ``AutoModelForCausalLM``); False makes a bias-free model an error."""


@dataclass
class LomoSection:
    """LOMO (Lv et al. 2023): SGD fused into backward, no optimizer state, no stored grads."""

    clip_value: float | None = 1.0
    """clamp each gradient element to [-clip_value, clip_value] before the update."""
    clip_grad_norm: float | None = None
    """clip the global gradient norm; costs a second backward pass (the paper's scheme)."""
    weight_decay: float = 0.0


@dataclass
class MethodConfig:
    """Which fine-tuning method, with one section of settings per method (all defaulted)."""

    name: MethodName = "full"
    lora: LoraSection = field(default_factory=LoraSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    qlora: QLoraSection = field(default_factory=QLoraSection)
    prompt: PromptSection = field(default_factory=PromptSection)
    prefix: PrefixSection = field(default_factory=PrefixSection)
    ia3: IA3Section = field(default_factory=IA3Section)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    bitfit: BitfitSection = field(default_factory=BitfitSection)
    lomo: LomoSection = field(default_factory=LomoSection)


# -- what a method returns ----------------------------------------------------------------

SaveKind = Literal["full", "peft", "sftlab_adapter"]


@dataclass
class Prepared:
    """A prepared model and what the loop needs to train and save it.

    ``parameters``: the list given to the optimizer (tensors with ``requires_grad``).
    ``kind``: how ``save`` writes it: ``full`` (``save_pretrained`` of the whole model),
    ``peft`` (a PEFT adapter dir that ``PeftModel.from_pretrained`` opens) or
    ``sftlab_adapter`` (``sftlab_adapter.safetensors`` + ``.json``; ``adapters.load_adapter``).
    ``fused_backward(loss, lr)``: set for optimizer-free methods (LOMO); the loop calls it
    INSTEAD of ``loss.backward()`` + ``optimizer.step()`` and creates no optimizer.
    ``logit_offset``: positions the method prepends to the sequence (prompt tuning); the
    loop drops ``logits[:, :logit_offset]`` before its loss so logits align with labels.
    ``max_grad_accumulation``: 1 for LOMO (the update happens inside every backward).
    """

    model: Any
    parameters: list
    kind: SaveKind
    method: str
    fused_backward: Callable[[Any, float], None] | None = None
    logit_offset: int = 0
    max_grad_accumulation: int | None = None
    summary: tuple[int, int, float] = (0, 0, 0.0)
    """(trainable, total, percent) parameter counts, from ``trainable_summary``."""

    def save(self, path: str | Path) -> Path:
        """Write the trained result to ``path`` (a directory) as ``kind`` says; returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "sftlab_adapter":
            from sftlab.train.adapters import save_adapter

            save_adapter(self.model, path)
        else:  # a PeftModel saves only its adapter; a plain model saves everything
            self.model.save_pretrained(str(path))
        return path

    def describe(self) -> str:
        trainable, total, pct = self.summary
        return f"method {self.method}: training {trainable:,} of {total:,} parameters ({pct:.4f}%)"


METHODS: Registry[Callable[..., Prepared]] = Registry("method")


# -- entry points used by the loop --------------------------------------------------------

def prepare_model(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Prepare ``model`` for ``config.name``; log and record the trainable parameter count.

    ``tokenizer`` is only needed by ``prompt.init_text``. Raises ConfigError when the method
    cannot apply to this model (e.g. LoRA targets that match no module).
    """
    prepare = METHODS.get(config.name)
    prepared = prepare(model, config, tokenizer=tokenizer)
    prepared.summary = trainable_summary(prepared.model)
    if prepared.summary[0] == 0:
        raise ConfigError(f"method '{config.name}' left no trainable parameter in the model")
    logger.info(prepared.describe())
    return prepared


def describe_methods() -> str:
    """One line per registered method (the first docstring line of its prepare function),
    for ``--help`` texts: ``"  lora      LoRA (Hu et al. 2021) via PEFT; ..."``."""
    lines = []
    for name in METHODS.names():
        doc = (METHODS.get(name).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<9} {doc[0] if doc else ''}")
    return "\n".join(lines)


def trainable_summary(model) -> tuple[int, int, float]:
    """``(trainable, total, percent)`` parameter counts; 4-bit weights count unpacked.

    >>> import torch
    >>> trainable_summary(torch.nn.Linear(4, 2))
    (10, 10, 100.0)
    """
    trainable = total = 0
    for param in _unique_parameters(model):
        count = _logical_numel(param)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total, 100.0 * trainable / max(total, 1)


def model_load_kwargs(config: MethodConfig) -> dict:
    """Extra ``from_pretrained`` kwargs: a ``BitsAndBytesConfig`` for QLoRA, else ``{}``."""
    if config.name != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    section = config.qlora
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=section.quant_type,
        bnb_4bit_use_double_quant=section.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, section.compute_dtype),
    )}


def check_method_supported(config: MethodConfig, device: str = "cpu", *,
                           grad_accumulation: int = 1, num_processes: int = 1,
                           packed: bool = False, mixed_precision: str = "no") -> None:
    """Raise ConfigError (one line, naming the missing backend) if ``config`` cannot run.

    Call it before loading the model, with the run's settings:

    - ``qlora`` needs bitsandbytes with a 4-bit kernel for ``device``: checked by quantising
      and multiplying a 64×64 matrix there, so an unsupported device fails here, not mid-run;
    - ``lomo`` updates the weights inside each backward pass: no gradient accumulation, no
      data-parallel processes (each would update with its own gradients), no fp16 (there is
      no loss scaler; use bf16 or fp32);
    - ``prompt`` and ``prefix`` prepend virtual tokens to each row, which is wrong for rows
      holding several packed examples (``packed``: data.packing or data.padding_free).
    """
    name = config.name
    if name == "qlora":
        _check_bitsandbytes(str(device), config.qlora.compute_dtype)
    if name in ("lora", "dora", "qlora") and config.lora.rank < 1:
        raise ConfigError(f"lora.rank must be >= 1, got {config.lora.rank}")
    if name == "lomo":
        _check_lomo(grad_accumulation, num_processes, mixed_precision)
    if name in ("prompt", "prefix") and packed:
        raise ConfigError(f"method '{name}' prepends virtual tokens to each row and cannot "
                          f"train packed rows; set data.packing=false and data.padding_free=false")


def _check_lomo(grad_accumulation: int, num_processes: int, mixed_precision: str) -> None:
    why = "updates the weights inside each backward pass"
    if grad_accumulation > 1:
        raise ConfigError(f"method 'lomo' {why} and cannot accumulate gradients "
                          f"(grad_accumulation={grad_accumulation}); set it to 1 and raise the "
                          f"batch size instead")
    if num_processes > 1:
        raise ConfigError(f"method 'lomo' {why}, before data-parallel processes could average "
                          f"their gradients ({num_processes} processes); run it in one process")
    if mixed_precision == "fp16":
        raise ConfigError("method 'lomo' has no loss scaler, so fp16 gradients underflow; "
                          "use mixed_precision=bf16 or no")


@functools.lru_cache(maxsize=8)
def _check_bitsandbytes(device: str, compute_dtype: str) -> None:
    try:
        import bitsandbytes as bnb
        import torch
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


# -- full, freeze, bitfit: plain models, saved whole ----------------------------------------

@METHODS.register("full")
def prepare_full(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Train every parameter (the optimizer from the optim section)."""
    model.requires_grad_(True)
    return _plain(model, "full")


@METHODS.register("freeze")
def prepare_freeze(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Train only the last freeze.last_layers decoder layers (+ freeze.modules globs).

    With the tiny 2-layer Llama and ``last_layers=1``: ``model.layers.1.*`` trains,
    ``model.embed_tokens``, ``model.layers.0.*``, ``model.norm`` and ``lm_head`` do not.
    """
    section = config.freeze
    _, layers = decoder_layers(model)
    if not 0 <= section.last_layers <= len(layers):
        raise ConfigError(f"freeze.last_layers={section.last_layers}: the model has "
                          f"{len(layers)} decoder layers")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - section.last_layers:]:
        layer.requires_grad_(True)
    # remove_duplicate=False: a tied lm_head.weight is listed under both of its names
    named = list(model.named_parameters(remove_duplicate=False))
    for pattern in section.modules:
        matched = [p for n, p in named if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ConfigError(f"freeze.modules: '{pattern}' matches no parameter "
                              f"(names look like '{named[-1][0]}')")
        for param in matched:
            param.requires_grad_(True)
    return _plain(model, "freeze")


@METHODS.register("bitfit")
def prepare_bitfit(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """BitFit: train only bias terms; a bias-free model (Llama) first gets zero biases.

    Zero biases leave the model's outputs unchanged, so training starts from the base model
    exactly. They are added to every ``nn.Linear`` inside the decoder layers (not lm_head),
    and the config flags ``attention_bias``/``mlp_bias`` are set so the saved model rebuilds
    the same layers when loaded.
    """
    if not any(name.endswith("bias") for name, _ in model.named_parameters()):
        if not config.bitfit.add_missing:
            raise ConfigError("method 'bitfit': the model has no bias terms "
                              "(set bitfit.add_missing=true to add zero biases)")
        add_zero_biases(model)
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.requires_grad_(True)
    return _plain(model, "bitfit")


def add_zero_biases(model) -> int:
    """Give every bias-free ``nn.Linear`` in the decoder layers a zero bias; returns how many.

    Only architectures whose config can record the biases are accepted (Llama-style
    ``attention_bias`` and ``mlp_bias``); elsewhere the saved model would silently drop
    them, so that is a ConfigError.
    """
    import torch

    flags = [flag for flag in ("attention_bias", "mlp_bias") if hasattr(model.config, flag)]
    if len(flags) < 2:
        raise ConfigError(f"method 'bitfit': {type(model).__name__} has no bias terms and its "
                          f"config has no attention_bias/mlp_bias flags to add them")
    _, layers = decoder_layers(model)
    added = 0
    for module in layers.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is None:
            weight = module.weight
            module.bias = torch.nn.Parameter(
                torch.zeros(module.out_features, dtype=weight.dtype, device=weight.device))
            added += 1
    for flag in flags:
        setattr(model.config, flag, True)
    return added


def _plain(model, method: str) -> Prepared:
    params = [p for p in _unique_parameters(model) if p.requires_grad]
    return Prepared(model=model, parameters=params, kind="full", method=method)


# -- PEFT methods: lora, dora, qlora, prompt, prefix, ia3 ----------------------------------

@METHODS.register("lora")
def prepare_lora(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """LoRA (Hu et al. 2021, PEFT) on lora.target_modules; B = 0, so it starts as the base.
    Plain LoRA layers get a leaner forward (``sftlab.train.fused``: same math)."""
    from sftlab.train.fused import fuse_lora

    prepared = _peft(model, _lora_config(config, use_dora=False), "lora")
    fuse_lora(prepared.model)
    return prepared


@METHODS.register("dora")
def prepare_dora(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """DoRA (Liu et al. 2024): LoRA plus a trained magnitude per output (PEFT use_dora)."""
    return _peft(model, _lora_config(config, use_dora=True), "dora")


@METHODS.register("qlora")
def prepare_qlora(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """QLoRA (Dettmers et al. 2023): frozen 4-bit NF4 base + LoRA (needs bitsandbytes).

    A model loaded with ``model_load_kwargs(config)`` is already 4-bit; an in-memory model
    (e.g. ``tiny``) has its linear layers quantised here, in place.
    """
    from peft import prepare_model_for_kbit_training

    check_method_supported(config, _device_of(model))
    if not is_quantized_4bit(model):
        quantize_linear_4bit(model, config.qlora)
    # freezes the base and upcasts non-quantised fp16/bf16 params (norms) to fp32
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _peft(model, _lora_config(config, use_dora=False), "qlora")


@METHODS.register("prompt")
def prepare_prompt(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Prompt tuning (Lester et al. 2021): trained virtual-token embeddings before the input.

    The logits then have ``num_virtual_tokens`` extra leading positions (``logit_offset``).
    """
    from peft import PromptTuningConfig, PromptTuningInit

    section = config.prompt
    if section.init_text is not None and tokenizer is None:
        raise ConfigError("prompt.init_text needs the tokenizer: call prepare_model(model, "
                          "config, tokenizer)")
    init = PromptTuningInit.RANDOM if section.init_text else PromptTuningInit.SAMPLE_VOCAB
    peft_config = PromptTuningConfig(task_type="CAUSAL_LM", prompt_tuning_init=init,
                                     num_virtual_tokens=section.num_virtual_tokens)
    prepared = _peft(model, peft_config, "prompt")
    if section.init_text:
        _init_prompt_from_text(prepared.model, tokenizer, section.init_text)
    prepared.logit_offset = section.num_virtual_tokens
    return prepared


@METHODS.register("prefix")
def prepare_prefix(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Prefix tuning (Li & Liang 2021): trained key/value prefixes in every layer (PEFT).

    Without ``projection`` the prefixes start as the keys/values of real tokens (the text
    ``prefix.init_text``, else random vocabulary tokens), so the prepared model starts out
    exactly as the base model reading those tokens before each input.
    """
    from peft import PrefixTuningConfig

    section = config.prefix
    if section.init_text is not None and tokenizer is None:
        raise ConfigError("prefix.init_text needs the tokenizer: call prepare_model(model, "
                          "config, tokenizer)")
    peft_config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=section.num_virtual_tokens,
        prefix_projection=section.projection, encoder_hidden_size=section.projection_hidden_size)
    prepared = _peft(model, peft_config, "prefix")
    if not section.projection:
        ids = _init_token_ids(model, tokenizer, section.init_text, section.num_virtual_tokens,
                              key="prefix.init_text")
        _init_prefix_from_tokens(prepared.model, ids)
    return prepared


@METHODS.register("ia3")
def prepare_ia3(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """(IA)^3 (Liu et al. 2022, PEFT): trained scales on keys, values, MLP; start at one."""
    from peft import IA3Config

    section = config.ia3
    missing = set(section.feedforward_modules) - set(section.target_modules)
    if missing:
        raise ConfigError(f"ia3.feedforward_modules {sorted(missing)} must also be in "
                          f"ia3.target_modules")
    peft_config = IA3Config(task_type="CAUSAL_LM", target_modules=list(section.target_modules),
                            feedforward_modules=list(section.feedforward_modules))
    return _peft(model, peft_config, "ia3")


def _lora_config(config: MethodConfig, use_dora: bool):
    from peft import LoraConfig

    section = config.lora
    targets = section.target_modules
    return LoraConfig(
        task_type="CAUSAL_LM", r=section.rank, lora_alpha=section.alpha,
        lora_dropout=section.dropout, use_dora=use_dora, bias="none",
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        modules_to_save=list(section.modules_to_save) or None,
    )


def _peft(model, peft_config, method: str) -> Prepared:
    """Wrap with PEFT (which freezes the base); a target that matches nothing is a ConfigError."""
    from peft import get_peft_model

    try:
        peft_model = get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
        raise ConfigError(f"method '{method}': {str(exc).strip().splitlines()[0]}") from exc
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Prepared(model=peft_model, parameters=params, kind="peft", method=method)


def _init_token_ids(model, tokenizer, text: str | None, count: int, key: str):
    """``count`` token ids: ``text``'s tokens repeated to fill, or random vocabulary ids."""
    import torch

    if text is None:
        return torch.randint(0, model.get_input_embeddings().weight.shape[0], (count,))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"{key} encodes to no token")
    return torch.tensor((ids * (count // len(ids) + 1))[:count])


def _init_prompt_from_text(peft_model, tokenizer, text: str) -> None:
    """Copy the embeddings of ``text``'s tokens (repeated to fill) into the virtual tokens."""
    import torch

    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    ids = _init_token_ids(peft_model, tokenizer, text, embedding.weight.shape[0],
                          key="prompt.init_text")
    words = peft_model.get_input_embeddings().weight
    with torch.no_grad():
        embedding.weight.copy_(words[ids.to(words.device)].to(embedding.weight))


def _init_prefix_from_tokens(peft_model, ids) -> None:
    """Set the prefix table to the base model's keys/values for ``ids`` (n tokens).

    PEFT stores the prefixes as an embedding of shape (n, layers·2·kv_heads·head_dim) that
    it views as (batch, n, layers·2, kv_heads, head_dim) and permutes to per-layer
    (key, value) pairs of shape (batch, kv_heads, n, head_dim): this is the inverse. The
    keys are taken after rotary embedding at positions 0..n-1, and PEFT starts the real
    tokens at position n, so the model then reads exactly "ids + input".
    """
    import torch

    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    base = peft_model.get_base_model()
    was_training = base.training
    base.eval()  # no dropout; and gradient checkpointing would switch the cache off
    with torch.no_grad():
        cache = base(input_ids=ids[None].to(embedding.weight.device),
                     use_cache=True).past_key_values
    base.train(was_training)
    if cache is None or not hasattr(cache, "layers"):
        raise ConfigError(f"method 'prefix': {type(base).__name__} returned no key/value "
                          f"cache to initialise the prefixes from; set prefix.projection=true")
    per_layer = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    stacked = torch.stack(per_layer)  # (layers·2, 1, kv_heads, n, head_dim)
    table = stacked.permute(1, 3, 0, 2, 4).reshape(len(ids), -1)
    if table.shape != embedding.weight.shape:
        raise ConfigError(f"method 'prefix': cannot initialise the prefixes of "
                          f"{type(base).__name__} from its cache (shape {tuple(table.shape)} "
                          f"vs {tuple(embedding.weight.shape)}); set prefix.projection=true")
    with torch.no_grad():
        embedding.weight.copy_(table.to(embedding.weight))


# -- adapters and LOMO live in their own files ---------------------------------------------

@METHODS.register("adapter")
def prepare_adapter(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Houlsby bottleneck adapters after attention and MLP (+ norms); sftlab's own format."""
    from sftlab.train.adapters import add_adapters, norm_parameters

    model.requires_grad_(False)
    adapters = add_adapters(model, config.adapter)
    params = [p for adapter in adapters for p in adapter.parameters()]
    if config.adapter.train_norms:
        params += list(norm_parameters(model).values())
        for param in params:
            param.requires_grad_(True)
    return Prepared(model=model, parameters=params, kind="sftlab_adapter", method="adapter")


@METHODS.register("lomo")
def prepare_lomo(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """LOMO (Lv et al. 2023): full fine-tuning, SGD fused into backward, no optimizer state."""
    from sftlab.train.lomo import FusedSGD

    model.requires_grad_(True)
    params = [p for p in _unique_parameters(model) if p.requires_grad]
    fused = FusedSGD(params, clip_value=config.lomo.clip_value,
                     clip_grad_norm=config.lomo.clip_grad_norm,
                     weight_decay=config.lomo.weight_decay)
    return Prepared(model=model, parameters=params, kind="full", method="lomo",
                    fused_backward=fused, max_grad_accumulation=1)


# -- 4-bit quantisation of an in-memory model ---------------------------------------------

def quantize_linear_4bit(model, section: QLoraSection, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` (except ``skip`` names) by a bitsandbytes ``Linear4bit``.

    The weights are quantised (NF4 by default, 64-value blocks, absmax constants quantised
    again when ``double_quant``) on the model's current device. Returns how many layers
    were replaced. This is what ``from_pretrained(quantization_config=...)`` does while
    loading; it is here for models built in memory (``tiny``).
    """
    import bitsandbytes as bnb
    import torch

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
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


# -- helpers -----------------------------------------------------------------------------

def decoder_layers(model) -> tuple[str, Any]:
    """The ``nn.ModuleList`` of transformer blocks: the longest ModuleList in the model.

    >>> from sftlab.models.tiny import tiny_model
    >>> decoder_layers(tiny_model())[0]
    'model.layers'
    """
    import torch

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ConfigError(f"{type(model).__name__}: cannot find its decoder layers "
                          f"(no nn.ModuleList)")
    return max(lists, key=lambda item: len(item[1]))


def _unique_parameters(model):
    """Parameters once each (tied embeddings appear once), in ``named_parameters`` order."""
    seen = set()
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            yield param


def _logical_numel(param) -> int:
    """Element count; a packed 4-bit tensor counts its original shape, not its bytes."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        count = 1
        for size in quant_state.shape:
            count *= size
        return count
    return param.numel()


def _device_of(model) -> str:
    param = next(model.parameters(), None)
    return str(param.device) if param is not None else "cpu"

