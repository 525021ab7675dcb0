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
                     "adapter", "bitfit", "lomo", "intrinsic", "hint"]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# the names registered in ``sftlab.train.objectives.OBJECTIVES`` (a unit test keeps them
# equal). Spelled out, not read from the registry: this module stays free of torch, which
# the objectives import, so ``sftlab --help`` stays fast
ObjectiveName = Literal["sft", "spin", "dpo", "kto", "reward", "grpo", "ppo", "vision"]
OBJECTIVE_NAMES = get_args(ObjectiveName)
# objectives whose units are compared row by row (no packing, no padding-free): what they train
PADDED_OBJECTIVES = {"spin": "pairs", "dpo": "pairs", "kto": "completions", "reward": "pairs",
                     "vision": "examples with images",
                     "grpo": "completions", "ppo": "completions"}


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
    """Training data (any format ``sftlab data`` reads); examples are concatenated. Each is a
    JSON/JSONL(.gz), CSV/TSV or Parquet file, a ``datasets`` directory, ``hf://owner/name``,
    or with ``data.dataset_info`` a dataset name in it."""
    format: str | None = None
    """Force a format (``alpaca``, ``sharegpt``, ...); ``None`` detects it per file."""
    dataset_info: str | None = None
    """LLaMA-Factory's ``dataset_info.json`` (or its folder): ``data.paths`` then name its
    entries, read with their file name, formatting, columns and tags."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename the files' columns to the reader's fields before reading, ``{instruction: q, output: a}``."""
    split: str | None = None
    """Split of a hub dataset or ``datasets`` directory (default: ``train``, or the only one)."""
    subset: str | None = None
    """Subset (configuration ``name``) of a hub dataset."""
    revision: str | None = None
    """Git revision (branch, tag or commit) of a hub dataset."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed record stops the run (``fail``) or is counted and dropped (``skip``)."""
    max_length: int = 1024
    """Examples are truncated to this many tokens (must fit the model's positions)."""
    mask: Literal["all_assistant", "last_assistant", "everything"] = "all_assistant"
    """Which tokens are trained (``sftlab data show-mask`` shows them)."""
    train_tool_calls: bool = True
    """Train assistant turns that call tools (their call text); ``False`` keeps them as context."""
    reasoning: Literal["keep", "last_turn", "drop"] = "keep"
    """Assistant reasoning traces: ``keep`` trains every turn's, ``last_turn`` only the final
    turn's (earlier turns rendered without it), ``drop`` removes them."""
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


@dataclass
class KTOSection:
    """Settings of ``objective: kto`` (``sftlab.train.objectives.kto``)."""

    beta: float = 0.1
    """Inverse temperature β of KTO's value function ``σ(β·(r - z0))``, with ``r = log π(y|x)
    - log π_ref(y|x)``: how far the policy may move from the reference (smaller: further)."""
    desirable_weight: float = 1.0
    """λ_D: weight of the desirable completions' losses. The paper advises
    ``desirable_weight · n_desirable / (undesirable_weight · n_undesirable)`` in [1, 4/3]."""
    undesirable_weight: float = 1.0
    """λ_U: weight of the undesirable completions' losses."""

    def __post_init__(self) -> None:
        if not (_finite(self.beta) and self.beta > 0):
            raise ConfigError(f"kto.beta must be above 0, got {self.beta!r}")
        for name in ("desirable_weight", "undesirable_weight"):
            if not (_finite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"kto.{name} must be above 0, got {getattr(self, name)!r}")


@dataclass
class RewardSection:
    """Settings of ``objective: reward`` (``sftlab.train.objectives.reward``)."""

    center_rewards: float = 0.0
    """Coefficient c of the auxiliary term ``c · (r_chosen + r_rejected)²`` per pair
    (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``): keeps the rewards near
    zero mean, which the Bradley-Terry loss leaves free. 0: off; TRL suggests 0.01."""

    def __post_init__(self) -> None:
        if not (_finite(self.center_rewards) and self.center_rewards >= 0):
            raise ConfigError(f"reward.center_rewards must be >= 0, got {self.center_rewards!r}")


@dataclass
class GRPOSection:
    """Settings of ``objective: grpo`` (``sftlab.train.objectives.grpo``)."""

    num_generations: int = 4
    """G: completions sampled per prompt each step; advantages are normalised within these."""
    max_new_tokens: int = 64
    """Length limit of a sampled completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (above 0: a group needs different completions)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1.0 = off)."""
    rewards: list[str] = field(default_factory=lambda: ["exact_match"])
    """Reward functions summed per completion (``grpo.REWARDS``): ``exact_match`` (the
    completion is the row's ``answer``), ``gsm8k`` (its last number equals the answer's
    final number, GSM8K's ``#### N``), ``format`` (``format_pattern`` matches its start)."""
    reward_weights: list[float] = field(default_factory=list)
    """One weight per reward (empty: all 1)."""
    format_pattern: str = ""
    """The regular expression of the ``format`` reward (``re.match`` at the start)."""
    beta: float = 0.0
    """Coefficient of the k3 KL(π || π_ref) penalty against the frozen initial model
    (DeepSeekMath uses 0.04; TRL's default is 0). Above 0, a copy of the model is kept."""
    epsilon: float = 0.2
    """Clip range ε of the ratio π/π_old. Each rollout is trained on once, so π_old is the
    policy itself and the clip binds only where they differ numerically."""

    def __post_init__(self) -> None:
        if not (isinstance(self.num_generations, int) and self.num_generations >= 2):
            raise ConfigError(f"grpo.num_generations must be at least 2 (a group needs more than "
                              f"one completion), got {self.num_generations!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ConfigError(f"grpo.max_new_tokens must be at least 1, got {self.max_new_tokens!r}")
        if not (_finite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"grpo.temperature must be above 0 (greedy decoding gives a group "
                              f"identical completions), got {self.temperature!r}")
        if not self.rewards:
            raise ConfigError("grpo.rewards is empty: name at least one reward function")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(f"grpo.reward_weights has {len(self.reward_weights)} weights for "
                              f"{len(self.rewards)} rewards; give one per reward or none")
        for name in ("beta", "epsilon"):
            if not (_finite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"grpo.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class PPOSection:
    """Settings of ``objective: ppo`` (``sftlab.train.objectives.ppo``)."""

    reward_model: str = ""
    """The reward model: a run directory of ``objective: reward`` (or its ``model/`` or
    ``adapter/``, with ``reward_head.safetensors``); frozen. Its tokenizer must be the policy's."""
    max_new_tokens: int = 64
    """Length limit of a sampled completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; the log-probs are taken at it too (TRL's)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1.0 = off)."""
    epochs: int = 4
    """PPO epochs: optimizer steps on each rollout (TRL's ``num_ppo_epochs``); a new rollout
    is sampled every ``epochs`` steps, from that step's prompts."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty ``-β·(log π_old - log π_ref)`` added to the rewards
    (InstructGPT's; TRL's default 0.05). 0: no penalty (the KL is still logged). With
    ``kl_target`` it is the starting value of the adaptive coefficient."""
    kl_target: float = 0.0
    """Adaptive KL control (Ziegler et al. 2019): after each rollout the coefficient is
    multiplied by ``1 + clip(KL / kl_target - 1, -0.2, 0.2) · n / kl_horizon`` (``KL``: the
    rollout's mean KL per completion, ``n``: its completions), so the KL drifts toward the
    target. 0: a fixed ``kl_coef``. The coefficient in use is logged as ``kl_coef`` and
    kept in checkpoints."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in completions (Ziegler et al.'s 10,000)."""
    gamma: float = 1.0
    """Discount γ of GAE (1: the score at the last token counts fully for every token)."""
    gae_lambda: float = 0.95
    """λ of GAE: 0 is the one-step TD advantage, 1 the Monte-Carlo return minus the value."""
    epsilon: float = 0.2
    """Clip range ε of the ratio π/π_old in the surrogate objective."""
    value_clip: float = 0.2
    """Clip range of the new values around the rollout's values in the value loss."""
    value_coef: float = 0.1
    """Weight of the value loss ``½·max((V - R)², (V_clipped - R)²)`` (TRL's ``vf_coef``)."""
    whiten_advantages: bool = True
    """Normalise the advantages to mean 0, variance 1 over each rollout's tokens."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a completion that hit ``max_new_tokens`` without
    stopping (TRL's ``missing_eos_penalty``; 0: off)."""

    def __post_init__(self) -> None:
        _require(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                 "ppo.max_new_tokens", self.max_new_tokens, ">= 1")
        _require(isinstance(self.epochs, int) and self.epochs >= 1, "ppo.epochs", self.epochs, ">= 1")
        _require(_finite(self.temperature) and self.temperature > 0, "ppo.temperature",
                 self.temperature, "above 0 (the rollouts are sampled)")
        _require(_finite(self.top_p) and 0 < self.top_p <= 1, "ppo.top_p", self.top_p, "in (0, 1]")
        for name in ("gamma", "gae_lambda"):
            _require(_finite(getattr(self, name)) and 0 <= getattr(self, name) <= 1, f"ppo.{name}",
                     getattr(self, name), "in [0, 1]")
        _require(isinstance(self.kl_horizon, int) and self.kl_horizon >= 1, "ppo.kl_horizon",
                 self.kl_horizon, ">= 1")
        _require(not (self.kl_target and not self.kl_coef), "ppo.kl_coef", self.kl_coef,
                 "above 0 with ppo.kl_target (the adaptive coefficient scales kl_coef; 0 would stay 0)")
        for name in ("kl_coef", "kl_target", "epsilon", "value_clip", "value_coef", "missing_eos_penalty"):
            _require(_finite(getattr(self, name)) and getattr(self, name) >= 0, f"ppo.{name}",
                     getattr(self, name), "a finite number >= 0")


@dataclass
class VisionSection:
    """Settings of ``objective: vision`` (``sftlab.train.objectives.vision``)."""

    tower: str = "tiny-clip"
    """The vision tower: ``tiny-clip`` / ``tiny-siglip`` (random, for tests) or a CLIP or
    SigLIP (vision) model directory or hub id; frozen unless ``tune_tower``."""
    stage: int = 2
    """LLaVA's stages: ``1`` trains only the projector (alignment on captions; ``method``
    must be ``full`` or ``freeze`` and becomes freeze-all-but-the-projector); ``2`` trains the
    projector and the LM as ``method`` says (full, freeze, lora, dora, qlora)."""
    init_from: str | None = None
    """A saved vision model (a stage-1 run's ``model/``): its projector and tower start this
    run (set ``model.name`` to it too, to continue its LM)."""
    image_folder: str | None = None
    """Folder that relative image paths of ``data.paths`` are in (LLaVA's
    ``--image_folder``); none: each data file's folder."""
    image_token: str = "<image>"
    """The placeholder in the data and the special token added to the tokenizer; each is
    expanded to the tower's patch count and never labelled."""
    feature_layer: int = -2
    """Tower hidden-state layer whose patch features are projected (LLaVA-1.5: the penultimate)."""
    max_pixels: int = 4096 * 4096
    """Images with more pixels are refused (a data error naming the image and record)."""
    tune_tower: bool = False
    """Stage 2 only: train the vision tower too (its layers up to ``feature_layer``, at
    ``tower_lr``), saved as the run's ``vision_tower/``; false keeps it frozen."""
    tower_lr: float | None = None
    """Peak learning rate of the tuned tower (``tune_tower``); none: ``optim.lr``. Follows
    the same warm-up and schedule (e.g. 2e-6 for the tower beside 2e-5 for the LM)."""
    projector_lr: float | None = None
    """Peak learning rate of the projector; none: ``optim.lr`` (LLaVA's ``mm_projector_lr``)."""
    templates: str | dict | None = None
    """MultiInstruct task rows (``{"task", "image", "inputs", "output"}``): a JSON/YAML file,
    or a mapping, of task -> instruction templates with ``{field}`` slots filled from
    ``inputs``; they extend the built-in ones (``sftlab.data.images.TASK_TEMPLATES``)."""
    expand_templates: Literal["one", "all"] = "one"
    """MultiInstruct rows: ``one`` template per row (chosen by ``seed`` and the row), or
    ``all`` (one example per template of the row's task)."""

    def __post_init__(self) -> None:
        _require(self.stage in (1, 2), "vision.stage", self.stage, "1 or 2")
        _require(self.max_pixels >= 1, "vision.max_pixels", self.max_pixels, ">= 1")
        _require(not (self.tune_tower and self.stage == 1), "vision.tune_tower", self.tune_tower,
                 "false with vision.stage=1 (stage 1 trains the projector only; tune the tower in stage 2)")
        for key in ("tower_lr", "projector_lr"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"vision.{key}", value, "positive (or none: optim.lr)")
        _require(self.tower_lr is None or self.tune_tower, "vision.tower_lr", self.tower_lr,
                 "unset unless vision.tune_tower=true (a frozen tower has no learning rate)")


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
class IntrinsicSection:
    """Intrinsic-subspace delta-tuning (Aghajanyan et al. 2021): ``W = W0 + P theta`` with
    ``theta`` of size ``dimension`` and P a fixed, seeded Fastfood projection
    (``sftlab.models.intrinsic``); only ``theta`` (and the SAID scales) train."""

    dimension: int = 1024
    """d, the size of the trained vector theta (Aghajanyan et al. reach 90% of full
    fine-tuning on MRPC with d = 200 for RoBERTa); memory and time do not grow with it."""
    said: bool = True
    """SAID, the paper's structure-aware variant: one learned scale per target tensor,
    ``W_i = W0_i + lambda_i P_i theta`` (one more trained number per tensor); false: DID."""
    seed: int = 0
    """seeds the random projection; saved with theta, so the two reproduce the delta."""
    targets: list[str] = field(default_factory=lambda: ["*"])
    """parameter-name globs that get the projected delta; ``*``: every parameter, as in the
    paper (tied embeddings share one delta); e.g. ``["model.layers.*"]`` for the layers only."""

    def __post_init__(self) -> None:
        _require(isinstance(self.dimension, int) and self.dimension >= 1,
                 "method.intrinsic.dimension", self.dimension, "an integer >= 1")
        _require(bool(self.targets), "method.intrinsic.targets", self.targets,
                 "at least one parameter-name glob")


@dataclass
class HintSection:
    """HINT (Ivison et al. 2023): a trained hypernetwork reads the instruction (the system
    message) once per task and generates adapters and a gated prefix for the frozen base,
    which then reads only the instance (``sftlab.models.hint``; saved with the result)."""

    bottleneck: int = 16
    """width r of each generated bottleneck adapter ``x + act(x down) up`` (down: d x r)."""
    after: list[str] = field(default_factory=lambda: ["o_proj", "down_proj"])
    """module name suffixes, in every decoder layer, whose output gets a generated adapter
    (output size must be the hidden size: attention output and MLP output)."""
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    """non-linearity inside the generated adapters."""
    prefix_tokens: int = 4
    """P key/value slots per attention head and layer, generated from the instruction and
    read through a zero-initialised tanh gate; 0: adapters only."""
    hyper_dim: int = 128
    """width of the hypernetwork's instruction code and per-layer codes; the generator's
    output layers have ``hyper_dim x (layers' adapter and prefix sizes)`` parameters."""
    init_std: float = 0.01
    """about the std of the generated down-projections at the start (up and the gates
    start at exactly zero, so a fresh HINT model computes the base model's logits)."""
    pooling: Literal["mean", "attention"] = "mean"
    """how the instruction's token states become the hypernetwork's input: their ``mean``,
    or ``attention``: ``pooling_queries`` learned queries attend over them (concatenated)."""
    pooling_queries: int = 4
    """Q, the learned queries of ``pooling: attention``."""

    def __post_init__(self) -> None:
        _require(isinstance(self.bottleneck, int) and self.bottleneck >= 1,
                 "method.hint.bottleneck", self.bottleneck, "an integer >= 1")
        _require(isinstance(self.hyper_dim, int) and self.hyper_dim >= 1,
                 "method.hint.hyper_dim", self.hyper_dim, "an integer >= 1")
        _require(isinstance(self.prefix_tokens, int) and self.prefix_tokens >= 0,
                 "method.hint.prefix_tokens", self.prefix_tokens, "an integer >= 0")
        _require(bool(self.after), "method.hint.after", self.after, "at least one module name")
        _require(isinstance(self.pooling_queries, int) and self.pooling_queries >= 1,
                 "method.hint.pooling_queries", self.pooling_queries, "an integer >= 1")
        _require(_finite(self.init_std) and self.init_std > 0, "method.hint.init_std",
                 self.init_std, "above 0")


@dataclass
class MethodConfig:
    """Which fine-tuning method, with one section of settings per method (all defaulted)."""

    name: MethodName = "full"
    """which parameters train: full, freeze, lora, dora, qlora, prompt, prefix, ia3,
    adapter, bitfit, lomo, intrinsic or hint (``sftlab train --help`` describes each)."""
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
    intrinsic: IntrinsicSection = field(default_factory=IntrinsicSection)
    """settings of ``intrinsic``."""
    hint: HintSection = field(default_factory=HintSection)
    """settings of ``hint``."""


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
    counts pairs). See ``sftlab.train.objectives.dpo``.
    ``kto``: KTO (Ethayarajh et al. 2024) on unpaired completions of ``data.paths`` (TRL
    ``prompt``/``completion``/``label``, LLaMA-Factory ``messages``/``conversations`` with a
    boolean ``label`` or ``kto_tag``); the KL reference point is estimated over each step
    from mismatched prompt/completion rows; the reference is the initial model; normalised
    per completion, no packing, ``batch_size`` counts completions. See
    ``sftlab.train.objectives.kto``.
    ``reward``: a Bradley-Terry reward model (a zero-initialised scalar head on the last
    token's hidden state, ``-log σ(r_chosen - r_rejected)``) on the preference pairs ``dpo``
    reads; the eval rows get the held-out pair accuracy; the saved model/ or adapter/ holds
    ``reward_head.safetensors`` (``sftlab.train.objectives.reward.load_reward_model``).
    ``grpo``: GRPO (Shao et al. 2024) on prompt rows of ``data.paths`` (``messages`` or
    ``prompt`` plus the ``answer`` the rule-based rewards check): each step samples
    ``grpo.num_generations`` completions per prompt with the current policy, scores them
    (``grpo.rewards``) and trains on group-normalised advantages; normalised per completion;
    ``batch_size`` counts prompts; no eval loss. See ``sftlab.train.objectives.grpo``.
    ``ppo``: PPO (InstructGPT stage 3) on prompt rows of ``data.paths`` against the reward
    model of ``ppo.reward_model`` (trained with ``objective: reward``): one completion per
    prompt per rollout, a per-token KL penalty to the initial model, a value head on the
    policy, GAE, the clipped objective, ``ppo.epochs`` steps per rollout; normalised per
    completion token; ``batch_size`` counts prompts; no eval loss. See
    ``sftlab.train.objectives.ppo``.
    ``vision``: LLaVA-style visual instruction tuning on image rows of ``data.paths`` (LLaVA
    ``image`` + ``conversations``, OpenAI ``image_url`` parts, an ``images`` column): a frozen
    ``vision.tower``, an MLP projector into the LM, ``vision.stage`` 1 (projector only) or 2
    (projector + ``method``); image tokens are never labelled; no packing. See
    ``sftlab.train.objectives.vision``."""
    spin: SpinSection = field(default_factory=SpinSection)
    """Settings of ``objective: spin`` (``beta``)."""
    dpo: DPOSection = field(default_factory=DPOSection)
    """Settings of ``objective: dpo`` (``beta``, ``loss_type``, ``label_smoothing``,
    ``reference``)."""
    kto: KTOSection = field(default_factory=KTOSection)
    """Settings of ``objective: kto`` (``beta``, ``desirable_weight``, ``undesirable_weight``)."""
    reward: RewardSection = field(default_factory=RewardSection)
    """Settings of ``objective: reward`` (``center_rewards``)."""
    grpo: GRPOSection = field(default_factory=GRPOSection)
    """Settings of ``objective: grpo`` (``num_generations``, ``rewards``, ``beta``, ...)."""
    ppo: PPOSection = field(default_factory=PPOSection)
    """Settings of ``objective: ppo`` (``reward_model``, ``epochs``, ``kl_coef``, ``gamma``, ...)."""
    vision: VisionSection = field(default_factory=VisionSection)
    """Settings of ``objective: vision`` (``tower``, ``stage``, ``init_from``, ``image_folder``, ...)."""
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
    layers (``malloc_trim``), and map blocks of 4 MiB or more on their own so that a long
    sequence's freed activations go back at once (``sftlab.train.memory``). Measured: the
    LoRA benchmark -350 MiB peak RSS for about 4% of step time; full fine-tuning on the same
    short workload -270 MiB for about 19% (the trimmed pages fault back in: set false where
    speed matters more than peak RSS); one 4096-token full fine-tuning step 4.0 -> 2.2 GiB.
    Ignored on GPU."""
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
        if self.objective in PADDED_OBJECTIVES and (self.data.packing or self.data.padding_free):
            # here, not only in the objective's check: a YAML file fails when it is read.
            # A pair's two sides are separate rows compared with each other; one packed row
            # would mix pairs (and the sequence log-probs assume one example per row)
            units = PADDED_OBJECTIVES[self.objective]
            raise ConfigError(f"objective={self.objective} trains {units} as padded rows; set "
                              "data.packing=false and data.padding_free=false")
