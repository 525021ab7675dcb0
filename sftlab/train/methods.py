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
adapter   Houlsby bottleneck adapters after attention and MLP, plus the norms
bitfit    bias terms only (zero biases are added when the model has none)
lomo      every parameter, updated by SGD inside backward (``sftlab.train.lomo``)
intrinsic ``intrinsic.dimension`` numbers theta, projected onto ``intrinsic.targets`` by a
          fixed seeded Fastfood projection (+ one SAID scale per tensor;
          ``sftlab.models.intrinsic``)
hint      a hypernetwork that reads the system message (the instruction) once per task and
          generates adapters + a gated prefix; the base reads the instance only
          (``sftlab.models.hint``)
========  ==========================================================================

Each method's settings are a section of ``MethodConfig`` (``sftlab.train.config``); 4-bit
quantisation is ``sftlab.train.quantize``; the adapter format is ``sftlab.models.adapters``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit,
                  get_peft_model, prepare_model_for_kbit_training)

from sftlab.errors import ConfigError
from sftlab.models import peft_wrapping
from sftlab.models.layers import decoder_layers
from sftlab.models.adapters import add_adapters, norm_parameters, save_adapter
from sftlab.models.hint import add_hint
from sftlab.models.intrinsic import add_intrinsic
from sftlab.registry import Registry
from sftlab.train.config import MethodConfig
from sftlab.train.fused import fuse_lora
from sftlab.train.lomo import FusedSGD
from sftlab.train.quantize import (check_bitsandbytes, is_quantized_4bit, quantization_config,
                                   quantize_linear_4bit)

logger = logging.getLogger("sftlab.train.methods")


# -- what a method returns ----------------------------------------------------------------

SaveKind = Literal["full", "peft", "sftlab_adapter"]


@dataclass
class Prepared:
    """A prepared model and what the loop needs to train and save it.

    ``parameters``: the list given to the optimizer (tensors with ``requires_grad``).
    ``kind``: how ``save`` writes it: ``full`` (``save_pretrained`` of the whole model),
    ``peft`` (a PEFT adapter dir that ``PeftModel.from_pretrained`` opens) or
    ``sftlab_adapter`` (``sftlab_adapter.safetensors`` + ``.json``;
    ``sftlab.models.adapters.load_adapter``).
    ``fused_backward(loss, lr)``: set for optimizer-free methods (LOMO); the loop calls it
    INSTEAD of ``loss.backward()`` + ``optimizer.step()`` and creates no optimizer.
    ``logit_offset``: positions the method prepends to the sequence (prompt tuning); the
    loop drops ``logits[:, :logit_offset]`` before its loss so logits align with labels.
    ``max_grad_accumulation``: 1 for LOMO (the update happens inside every backward).
    ``saver(path)``: set by a method with its own file format (HINT's ``sftlab_hint``):
    ``save`` calls it instead of what ``kind`` names (``kind`` still decides resume).
    """

    model: Any
    parameters: list
    kind: SaveKind
    method: str
    fused_backward: Callable[[Any, float], None] | None = None
    logit_offset: int = 0
    max_grad_accumulation: int | None = None
    saver: Callable[[Path], Any] | None = None
    summary: tuple[int, int, float] = (0, 0, 0.0)
    """(trainable, total, percent) parameter counts, from ``trainable_summary``."""

    def save(self, path: str | Path) -> Path:
        """Write the trained result to ``path`` (a directory) as ``kind`` says; returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.saver is not None:
            self.saver(path)
        elif self.kind == "sftlab_adapter":
            save_adapter(self.model, path)
        elif hasattr(self.model, "peft_config"):
            # a PeftModel saves only its adapter. sftlab never resizes the vocabulary, so the
            # frozen base embeddings need no copy; PEFT's "auto" would decide that by looking
            # the base's name ("default", "tiny") up on the hub, a failing lookup offline
            self.model.save_pretrained(str(path), save_embedding_layers=False)
        else:  # a plain model saves everything
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
    return {"quantization_config": quantization_config(config.qlora)}


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
      ``hint`` cuts one instruction off the start of each row: the same.
    """
    name = config.name
    if name == "qlora":
        check_bitsandbytes(str(device), config.qlora.compute_dtype)
    if name in ("lora", "dora", "qlora") and config.lora.rank < 1:
        raise ConfigError(f"lora.rank must be >= 1, got {config.lora.rank}")
    if name == "lomo":
        _check_lomo(grad_accumulation, num_processes, mixed_precision)
    if name in ("prompt", "prefix", "hint") and packed:
        what = "cuts one instruction off" if name == "hint" else "prepends virtual tokens to"
        raise ConfigError(f"method '{name}' {what} each row and cannot "
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
    layers = _decoder_layers(model)
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
    flags = [flag for flag in ("attention_bias", "mlp_bias") if hasattr(model.config, flag)]
    if len(flags) < 2:
        raise ConfigError(f"method 'bitfit': {type(model).__name__} has no bias terms and its "
                          f"config has no attention_bias/mlp_bias flags to add them")
    layers = _decoder_layers(model)
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
    (e.g. ``tiny``) has its linear layers quantised here, in place (``sftlab.train.quantize``).
    """
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
    section = config.ia3
    missing = set(section.feedforward_modules) - set(section.target_modules)
    if missing:
        raise ConfigError(f"ia3.feedforward_modules {sorted(missing)} must also be in "
                          f"ia3.target_modules")
    peft_config = IA3Config(task_type="CAUSAL_LM", target_modules=list(section.target_modules),
                            feedforward_modules=list(section.feedforward_modules))
    return _peft(model, peft_config, "ia3")


def _lora_config(config: MethodConfig, use_dora: bool):
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
    try:
        with peft_wrapping():
            peft_model = get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
        raise ConfigError(f"method '{method}': {str(exc).strip().splitlines()[0]}") from exc
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Prepared(model=peft_model, parameters=params, kind="peft", method=method)


def _init_token_ids(model, tokenizer, text: str | None, count: int, key: str):
    """``count`` token ids: ``text``'s tokens repeated to fill, or random vocabulary ids."""
    if text is None:
        return torch.randint(0, model.get_input_embeddings().weight.shape[0], (count,))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"{key} encodes to no token")
    return torch.tensor((ids * (count // len(ids) + 1))[:count])


def _init_prompt_from_text(peft_model, tokenizer, text: str) -> None:
    """Copy the embeddings of ``text``'s tokens (repeated to fill) into the virtual tokens."""
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
    model.requires_grad_(False)
    adapters = add_adapters(model, dataclasses.asdict(config.adapter))
    params = [p for adapter in adapters for p in adapter.parameters()]
    if config.adapter.train_norms:
        params += list(norm_parameters(model).values())
        for param in params:
            param.requires_grad_(True)
    return Prepared(model=model, parameters=params, kind="sftlab_adapter", method="adapter")


@METHODS.register("intrinsic")
def prepare_intrinsic(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """Intrinsic dimension (Aghajanyan et al. 2021): d numbers, Fastfood-projected (+ SAID).

    The base is frozen; every ``intrinsic.targets`` tensor becomes ``W0 + lambda_i P_i theta``
    with ``theta = 0`` and ``lambda = 1`` at the start (exactly the base model). Saved as an
    sftlab adapter directory holding theta, the scales and the seed (``load_adapter`` merges).
    """
    delta = add_intrinsic(model, dataclasses.asdict(config.intrinsic))
    return Prepared(model=model, parameters=list(delta.parameters()), kind="sftlab_adapter",
                    method="intrinsic")


@METHODS.register("hint")
def prepare_hint(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """HINT (Ivison et al. 2023): a hypernetwork turns the system message into adapters.

    The base is frozen; the hypernetwork (``sftlab.models.hint``) encodes each row's
    instruction (its system turn, cut off by the chat template's markers) once per distinct
    instruction and generates per-layer bottleneck adapters and a gated prefix, and the base
    reads only the instance. Zero-initialised, so it starts as the base model exactly.
    Saved as an sftlab adapter directory with ``"format": "sftlab_hint"``.
    """
    hint = add_hint(model, dataclasses.asdict(config.hint), tokenizer=tokenizer)
    return Prepared(model=hint, parameters=list(hint.hypernetwork.parameters()),
                    kind="sftlab_adapter", method="hint", saver=hint.save_pretrained)


@METHODS.register("lomo")
def prepare_lomo(model, config: MethodConfig, tokenizer=None) -> Prepared:
    """LOMO (Lv et al. 2023): full fine-tuning, SGD fused into backward, no optimizer state."""
    model.requires_grad_(True)
    params = [p for p in _unique_parameters(model) if p.requires_grad]
    fused = FusedSGD(params, clip_value=config.lomo.clip_value,
                     clip_grad_norm=config.lomo.clip_grad_norm,
                     weight_decay=config.lomo.weight_decay)
    return Prepared(model=model, parameters=params, kind="full", method="lomo",
                    fused_backward=fused, max_grad_accumulation=1)


# -- helpers -----------------------------------------------------------------------------

def _decoder_layers(model) -> torch.nn.ModuleList:
    """``sftlab.models.layers.decoder_layers``, or a ConfigError for a model without one."""
    layers = decoder_layers(model)
    if layers is None:
        raise ConfigError(f"{type(model).__name__}: cannot find its decoder layers "
                          f"(no nn.ModuleList)")
    return layers


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

