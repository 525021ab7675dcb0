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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from sftlab.errors import ConfigError
from sftlab.train.methods import MethodConfig  # the methods module owns its section


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
    """Which tokens are trained (``sftlab data mask`` shows them)."""
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


@dataclass
class OptimSection:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.0
    """Decoupled weight decay; never applied to biases, norms or embeddings-as-1D."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0
    """SGD momentum."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
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


Objective = Literal["sft", "spin"]
OBJECTIVES = get_args(Objective)


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
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    objective: Objective = "sft"
    """``sft``: token cross-entropy on the labelled tokens of ``data.paths`` conversations.
    ``spin``: SPIN's pairwise loss (Chen et al. 2024) on pair records of ``data.paths``
    (JSONL with ``prompt``, ``chosen`` = real, ``rejected`` = generated, optional
    ``meta.ref_logp_chosen/ref_logp_rejected``; missing reference log-probs are computed
    once with the initial model); normalised per pair; only the final response is
    labelled (``data.mask`` and ``data.format`` do not apply); no packing, no padding-free;
    ``batch_size`` counts pairs. See ``sftlab.train.pairwise``."""
    spin: SpinSection = field(default_factory=SpinSection)
    """Settings of ``objective: spin`` (``beta``)."""
    batch_size: int = 8
    """Examples (or packed rows, or pairs) per micro-batch per process."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size x this x processes."""
    max_steps: int = 0
    """Optimizer steps; 0 means ``epochs`` full passes."""
    epochs: int = 1
    seed: int = 0
    gradient_checkpointing: bool = False
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
    eval_every: int = 0
    """Held-out loss every N steps (0: only at the end, if there is eval data)."""
    early_stopping_patience: int = 0
    """Stop after N evals without a better eval loss (0: never)."""
    save_every: int = 0
    """Checkpoint every N steps (0: no intermediate checkpoints)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    output_dir: str = "runs/sft"
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir/checkpoints``."""
    save_model: bool = True
    """Write the final ``model/`` directory (model or adapter + tokenizer)."""
    plot: bool = True
    """Write ``loss.png`` at the end."""
    progress: bool = True
    """Show the tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accumulation", "epochs", "log_every", "keep_last",
                     "loss_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.objective not in OBJECTIVES:  # build_config checks it too; Python callers too
            raise ConfigError(f"objective={self.objective!r} (allowed: {', '.join(OBJECTIVES)})")
        if self.objective == "spin" and (self.data.packing or self.data.padding_free):
            # a pair's two sides are separate rows compared with each other; one packed row
            # would mix pairs (and the sequence log-probs assume one example per row)
            raise ConfigError("objective=spin trains pairs as padded rows; set data.packing=false "
                              "and data.padding_free=false")
