"""``TrainConfig``: everything one ``sftlab train`` run needs, as nested dataclasses.

Shared by the CLI, YAML files and the Python API::

    from sftlab.config import load_config
    config = load_config(TrainConfig, "examples/sft_tiny.yaml", ["optim.lr=3e-4", "max_steps=20"])

YAML layout (every key optional; unknown keys are errors with a suggestion)::

    model: {name: tiny, dtype: float32, attn: sdpa}
    data: {paths: [alpaca_en_demo.json], max_length: 512, packing: true, eval_split: 0.05}
    method: {name: lora}
    optim: {name: adamw, lr: 2.0e-4, schedule: cosine, warmup_ratio: 0.03}
    batch_size: 8
    max_steps: 200
    output_dir: runs/alpaca-lora

The SPIN objective trains on pair records (``sftlab synth spin`` writes them) instead::

    objective: spin
    spin: {beta: 0.1}
    data: {paths: [runs/spin/pairs.jsonl], max_length: 512}

``objective`` names a registered ``sftlab.train.objectives.Objective`` (what is trained and
how its loss is counted); ``method`` a registered ``sftlab.train.methods`` preparation
(which parameters train). Their settings are the sections below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sftlab.errors import ConfigError

MethodName = Literal["full", "freeze", "lora", "dora", "qlora", "prompt", "prefix", "ia3",
                     "adapter", "bitfit", "lomo"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# the names registered in ``sftlab.train.objectives.OBJECTIVES`` (a unit test keeps them
# equal). Spelled out, not read from the registry: this module stays free of torch, which
# the objectives import, so ``sftlab --help`` stays fast
ObjectiveName = Literal["sft", "spin", "dpo"]
OBJECTIVE_NAMES = get_args(ObjectiveName)


@dataclass
class ModelSection:
    name: str = "tiny"
    """``tiny``, ``default``, a local Hugging Face directory or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype when loaded. Mixed precision is ``mixed_precision`` below."""
    attn: str = "sdpa"
    """Attention implementation: ``sdpa``, ``eager``, ``flash_attention_2``."""


@dataclass
class DataSection:
    paths: list[str] = field(default_factory=list)
    """Training files (any format ``sftlab data`` reads); examples are concatenated."""
    format: str | None = None
    """Force a format (``alpaca``, ``sharegpt``, ...); ``None`` detects it per file."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed record stops the run (``fail``) or is counted and dropped (``skip``)."""
    max_length: int = 1024
    """Examples are truncated to this many tokens (must fit the model's positions)."""
    mask: Literal["all_assistant", "last_assistant", "everything"] = "all_assistant"
    """Which tokens are trained (``sftlab data show-mask`` shows them)."""
    packing: bool = False
    """Bin-pack examples into rows of ``max_length`` (attention isolated per example)."""
    padding_free: bool = False
    """Concatenate each micro-batch into one row: the same batches as unpacked, no padding."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding, order still seeded)."""
    shuffle: bool = True
    """Shuffle the order every epoch (seeded). ``False`` keeps the file order."""
    eval_split: float = 0.0
    """Fraction of the training examples held out for eval loss (0 = none)."""
    eval_path: str | None = None
    """A separate eval file (overrides ``eval_split``)."""
    limit: int | None = None
    """Use only the first N conversations (quick tries)."""

    def __post_init__(self) -> None:
        _require(self.max_length >= 1, "data.max_length", self.max_length, ">= 1")
        _require(_finite(self.eval_split) and 0 <= self.eval_split < 1, "data.eval_split", self.eval_split,
                "in [0, 1)")
        _require(self.limit is None or self.limit >= 1, "data.limit", self.limit, ">= 1 (or null: all)")


@dataclass
class OptimSection:
    name: Literal["adamw", "sgd"] = "adamw"
    """The optimizer: ``adamw`` (decoupled weight decay) or plain ``sgd`` (with ``momentum``)."""
    lr: float = 2e-5
    """Peak learning rate, reached after the warm-up."""
    weight_decay: float = 0.0
    """Decoupled weight decay; never applied to biases, norms or embeddings-as-1D."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's decay rates of the gradient's running mean and running square."""
    eps: float = 1e-8
    """AdamW's term added to the denominator (numerical stability)."""
    momentum: float = 0.0
    """SGD momentum."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """How the learning rate falls from ``lr`` to 0 after the warm-up (``constant``: it stays)."""
    warmup_steps: int = 0
    """Steps of linear warm-up from ``lr / warmup_steps`` to ``lr`` (0: use ``warmup_ratio``)."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of all steps (used when ``warmup_steps`` is 0)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0 disables clipping (the norm is still logged)."""
    implementation: Literal["auto", "foreach", "for-loop", "fused"] = "auto"
    """PyTorch optimizer kernel (``auto``: foreach; same numbers, different speed)."""
    in_backward: bool = False
    """Update each parameter inside backward, as soon as its gradient is complete, and free
    that gradient: the model's gradients never all exist at once (saves one model-size of
    memory). Same optimizer math; needs grad_accumulation=1, max_grad_norm=0, one process."""

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs two numbers, got {self.betas}")
        _require(_finite(self.lr) and self.lr >= 0, "optim.lr", self.lr, "a finite number >= 0")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _require(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1, "optim.warmup_ratio",
                self.warmup_ratio, "between 0 and 1")
        _require(_finite(self.max_grad_norm) and self.max_grad_norm >= 0, "optim.max_grad_norm",
                self.max_grad_norm, ">= 0 (0 disables clipping)")
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay",
                self.weight_decay, ">= 0")
        _require(all(_finite(beta) and 0 <= beta < 1 for beta in self.betas), "optim.betas", self.betas,
                "two numbers in [0, 1)")
        _require(_finite(self.eps) and self.eps > 0, "optim.eps", self.eps, "above 0")
        _require(_finite(self.momentum) and self.momentum >= 0, "optim.momentum", self.momentum, ">= 0")


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``ok``: values are checked when the config
    is built, before any model or data loads."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SpinSection:
    """Settings of ``objective: spin`` (``sftlab.train.pairwise``)."""

    beta: float = 0.1
    """Inverse temperature of SPIN's logistic loss ``softplus(-beta * margin)`` (the paper's
    λ^-1; it uses 0.1): larger values push the real/generated margin harder."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be above 0, got {self.beta}")


@dataclass
class DPOSection:
    """Settings of ``objective: dpo`` (``sftlab.train.objectives.dpo``)."""

    beta: float = 0.1
    """Inverse temperature β: how far the policy may move from the reference (smaller:
    further). The margin is ``(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) -
    log π_ref(y_l|x))`` for the chosen y_w and the rejected y_l."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """``sigmoid``: DPO's ``-log σ(β·margin)`` (Rafailov et al. 2023); ``ipo``: IPO's
    ``(margin - 1/(2β))²`` (Azar et al. 2023), which does not push the margin without bound."""
    label_smoothing: float = 0.0
    """ε of conservative DPO (``sigmoid`` only): the labels are taken as flipped with
    probability ε, ``loss = (1-ε)·(-log σ(β·margin)) + ε·(-log σ(-β·margin))``; in [0, 0.5)."""
    reference: Literal["auto", "records", "initial"] = "auto"
    """Where the reference log-probs come from: ``auto``: the records' own
    (``meta.ref_logp_chosen/ref_logp_rejected``, or TRL's
    ``ref_chosen_logps/ref_rejected_logps``), else computed once at setup with the frozen initial model (with LoRA and other methods
    that start as the identity this is the model with the adapter disabled); ``records``: the
    records must carry them; ``initial``: always computed with the initial model."""

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ConfigError(f"dpo.beta must be above 0, got {self.beta!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 0.5):
            raise ConfigError("dpo.label_smoothing must be in [0, 0.5), got "
                              f"{self.label_smoothing!r}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ConfigError("dpo.label_smoothing applies to loss_type=sigmoid only; set it to 0 "
                              "for ipo")


# -- method: which parameters train (``sftlab.train.methods``) ---------------------------

@dataclass
class LoraSection:
    """LoRA, DoRA and QLoRA: ``W x + (alpha / rank) · B A x`` with A: rank×in, B: out×rank."""

    rank: int = 16
    """rank of the update B·A: its trained parameters grow linearly with it."""
    alpha: float = 32.0
    """the update is scaled by ``alpha / rank``."""
    dropout: float = 0.0
    """dropout on the adapted layers' input, on the LoRA path only."""
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    """module name suffixes to adapt (Llama names); ``["all-linear"]`` lets PEFT pick."""
    modules_to_save: list[str] = field(default_factory=list)
    """modules trained in full beside the adapter, e.g. ``["lm_head", "embed_tokens"]``."""

    def __post_init__(self) -> None:
        _require(self.rank >= 1, "method.lora.rank", self.rank, ">= 1")
        _require(_finite(self.alpha) and self.alpha > 0, "method.lora.alpha", self.alpha, "a finite number above 0")
        _require(_finite(self.dropout) and 0 <= self.dropout < 1, "method.lora.dropout", self.dropout, "in [0, 1)")


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
    """4-bit data type: ``nf4`` (normal float, the paper's) or ``fp4``."""
    double_quant: bool = True
    """quantise the per-block absmax constants too (saves ~0.4 bit per weight)."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the 4-bit weights are dequantised to for each matrix multiplication."""


@dataclass
class PromptSection:
    """Prompt tuning (Lester et al. 2021): trained virtual-token embeddings before the input."""

    num_virtual_tokens: int = 20
    """how many trained embeddings are prepended to every input."""
    init_text: str | None = None
    """initialise the virtual tokens from this text's embeddings (needs the tokenizer);
    None samples embeddings of random vocabulary tokens."""


@dataclass
class PrefixSection:
    """Prefix tuning (Li & Liang 2021): trained key/value prefixes in every layer."""

    num_virtual_tokens: int = 20
    """how many key/value positions are prepended in every layer."""
    init_text: str | None = None
    """initialise the prefixes with the keys/values the model computes for this text (needs
    the tokenizer); None uses random vocabulary tokens. Li & Liang found initialising from
    real words' activations much more stable than random vectors."""
    projection: bool = False
    """reparametrise the prefixes through a 2-layer MLP (the paper's other stabiliser);
    the MLP's output cannot be set, so it starts from PEFT's random init instead."""
    projection_hidden_size: int = 256
    """hidden width of that MLP (with ``projection`` only)."""


@dataclass
class IA3Section:
    """(IA)^3 (Liu et al. 2022): learned scaling vectors on keys, values and MLP inputs."""

    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    """module name suffixes that get a learned scale (keys, values, MLP)."""
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    """targets whose INPUT is scaled (the MLP); the others scale their output."""


@dataclass
class AdapterSection:
    """Houlsby et al. 2019 bottleneck adapters: ``h + up(act(down(h)))``, up = 0 at start
    (``sftlab.models.adapters``; these settings are saved with the adapter)."""

    bottleneck: int = 64
    """width of the adapter's hidden layer (its parameters grow linearly with it)."""
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    """non-linearity between the down- and the up-projection."""
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
    """decoupled weight decay applied in the fused SGD update."""


@dataclass
class MethodConfig:
    """Which fine-tuning method, with one section of settings per method (all defaulted)."""

    name: MethodName = "full"
    """which parameters train: full, freeze, lora, dora, qlora, prompt, prefix, ia3,
    adapter, bitfit or lomo (``sftlab train --help`` describes each)."""
    lora: LoraSection = field(default_factory=LoraSection)
    """settings of ``lora``, ``dora`` and ``qlora``."""
    freeze: FreezeSection = field(default_factory=FreezeSection)
    """settings of ``freeze``."""
    qlora: QLoraSection = field(default_factory=QLoraSection)
    """4-bit settings of ``qlora`` (its LoRA settings are ``lora``)."""
    prompt: PromptSection = field(default_factory=PromptSection)
    """settings of ``prompt``."""
    prefix: PrefixSection = field(default_factory=PrefixSection)
    """settings of ``prefix``."""
    ia3: IA3Section = field(default_factory=IA3Section)
    """settings of ``ia3``."""
    adapter: AdapterSection = field(default_factory=AdapterSection)
    """settings of ``adapter``."""
    bitfit: BitfitSection = field(default_factory=BitfitSection)
    """settings of ``bitfit``."""
    lomo: LomoSection = field(default_factory=LomoSection)
    """settings of ``lomo``."""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    """The model to train and how it is loaded."""
    data: DataSection = field(default_factory=DataSection)
    """The training (and eval) data and how it is batched."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Which parameters train (full, LoRA, ...), with each method's settings."""
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimizer and learning-rate schedule."""
    objective: ObjectiveName = "sft"
    """What is trained (a registered objective, ``sftlab.train.objectives``).
    ``sft``: token cross-entropy on the labelled tokens of ``data.paths`` conversations.
    ``spin``: SPIN's pairwise loss (Chen et al. 2024) on pair records of ``data.paths``
    (JSONL with ``prompt``, ``chosen`` = real, ``rejected`` = generated, optional
    ``meta.ref_logp_chosen/ref_logp_rejected``; missing reference log-probs are computed
    once with the initial model); normalised per pair; only the final response is
    labelled (``data.mask`` and ``data.format`` do not apply); no packing, no padding-free;
    ``batch_size`` counts pairs. See ``sftlab.train.objectives.spin``.
    ``dpo``: DPO (Rafailov et al. 2023; ``dpo.loss_type`` ``ipo``, ``dpo.label_smoothing``
    for cDPO) on preference pairs of ``data.paths`` (TRL ``prompt``/``chosen``/``rejected``,
    LLaMA-Factory ranking rows, OpenAI ``preferred_output``); the same pair pipeline as
    ``spin`` (per pair, no packing, only the final assistant turn labelled, ``batch_size``
    counts pairs). See ``sftlab.train.objectives.dpo``."""
    spin: SpinSection = field(default_factory=SpinSection)
    """Settings of ``objective: spin`` (``beta``)."""
    dpo: DPOSection = field(default_factory=DPOSection)
    """Settings of ``objective: dpo`` (``beta``, ``loss_type``, ``label_smoothing``,
    ``reference``)."""
    batch_size: int = 8
    """Examples (or packed rows, or pairs) per micro-batch per process."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size x this x processes."""
    max_steps: int = 0
    """Optimizer steps; 0 means ``epochs`` full passes."""
    epochs: int = 1
    """Full passes over the training data (when ``max_steps`` is 0)."""
    seed: int = 0
    """Seeds the model init, the data order and every random draw: same seed, same run."""
    gradient_checkpointing: bool = False
    """Recompute activations during backward instead of keeping them (less memory, ~30%
    slower)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast compute; ``no`` trains in the weights' dtype."""
    threads: int = 0
    """``torch.set_num_threads``; 0 keeps PyTorch's default (all cores)."""
    release_memory: bool = True
    """CPU with glibc: hand memory freed during the forward pass back to the OS every few
    layers (``malloc_trim``; see ``sftlab.train.memory``). Measured on the LoRA benchmark:
    -350 MiB peak RSS for about 4% of step time. Ignored on GPU."""
    loss_chunk_size: int = 1024
    """Labelled positions projected through the LM head at once (memory vs speed)."""
    log_every: int = 1
    """Write a row to ``metrics.jsonl`` every N steps (means over those steps)."""
    eval_every: int = 0
    """Held-out loss every N steps (0: only at the end, if there is eval data)."""
    early_stopping_patience: int = 0
    """Stop after N evals without a better eval loss (0: never)."""
    save_every: int = 0
    """Checkpoint every N steps (0: no intermediate checkpoints)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    output_dir: str = "runs/sft"
    """The run directory: run.json, metrics.jsonl, checkpoints/, model/ or adapter/."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir/checkpoints``."""
    save_model: bool = True
    """Write the final ``model/`` directory (model or adapter + tokenizer)."""
    plot: bool = True
    """Write ``loss.png`` at the end."""
    progress: bool = True
    """Show the tqdm progress bar."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that get the run name, the resolved config and every
    metrics.jsonl row (through accelerate): ``tensorboard`` (event files in
    output_dir/tracking/), ``wandb`` (WANDB_* settings apply; WANDB_MODE=offline needs no
    network), ``mlflow`` (MLFLOW_TRACKING_URI, else a file store in output_dir/mlruns).
    They need ``pip install 'sftlab[tracking]'``; none is needed to train."""
    run_name: str | None = None
    """The run's name in the trackers; none: the last part of output_dir."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accumulation", "epochs", "log_every", "keep_last",
                     "loss_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        _require(not Path(self.output_dir).is_file(), "output_dir", self.output_dir,
                 "a directory to write the run into, not an existing file")
        if self.objective not in OBJECTIVE_NAMES:  # build_config checks it too; Python callers too
            raise ConfigError(f"objective={self.objective!r} (allowed: {', '.join(OBJECTIVE_NAMES)})")
        if self.objective in ("spin", "dpo") and (self.data.packing or self.data.padding_free):
            # here, not only in the objective's check: a YAML file fails when it is read.
            # A pair's two sides are separate rows compared with each other; one packed row
            # would mix pairs (and the sequence log-probs assume one example per row)
            raise ConfigError(f"objective={self.objective} trains pairs as padded rows; set "
                              "data.packing=false and data.padding_free=false")
