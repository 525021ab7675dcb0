"""``objective: ppo``: InstructGPT's stage 3 (Ouyang et al. 2022) at small scale: PPO against
the reward model that ``objective: reward`` trained, with a KL penalty to the initial model.

Four models take part: the **policy** (the model being trained, by any weight method), a
frozen **reference** (the initial model: with LoRA and the other PEFT methods the policy
with its adapter disabled, otherwise a frozen copy taken before the method changes the
model), the frozen **reward model** (``ppo.reward_model``: a run or model directory of
``objective: reward``, read through its scorer ``load_reward_model(path).score``) and a
**value head** (a zero-initialised ``Linear(hidden, 1)`` on the policy's last hidden
states, trained with the policy; saved beside the result as ``value_head.safetensors``,
never inside it: a full-method ``model.safetensors`` is a plain causal LM).

A rollout is made from the prompts of a step (``data.paths`` prompt rows, as ``grpo``
reads them; no answer needed): one completion per prompt, sampled by sftlab's own generator
in one call, then, with no gradient, its per-token log-probs under the policy (``old``) and
the reference, the values, and the reward model's score of the whole conversation. Then,
per completion token ``t`` (``V`` the values, ``s`` the score, ``T`` the last token)::

    r_t    = -kl_coef · (log π_old(o_t) - log π_ref(o_t))  [+ s at t = T]    (k1 KL penalty)
    δ_t    = r_t + γ · V_{t+1} - V_t                 (V_{T+1} = 0)
    A_t    = δ_t + γλ · A_{t+1}                      (GAE; returns R_t = A_t + V_t)
    A_t   <- (A_t - mean A) / sqrt(var A + 1e-8)     (whitened over the rollout's tokens)
    ratio  = π(o_t) / π_old(o_t)
    loss_t = max(-A_t · ratio, -A_t · clip(ratio, 1-ε, 1+ε))
             + value_coef · ½ max((V'_t - R_t)², (clip(V'_t, V_t - c, V_t + c) - R_t)²)

and the step's loss is the mean of ``loss_t`` over the step's completion tokens (``count``),
normalised as every objective's, so the split into micro-batches does not change it. The
whitening statistics are taken over the whole rollout (all micro-batches and processes)
for the same reason. Each rollout is trained on for ``ppo.epochs`` optimizer steps (PPO's
epochs, one minibatch each, as TRL's defaults): the steps in between reuse it (π_old,
values and advantages stay those of the rollout, so the clip binds) and their own prompts
are not used. The log row gets ``reward`` (mean score of the rollout), ``kl`` (mean over
completions of the summed per-token KL to the reference), ``policy_loss``,
``value_loss``, ``clip_fraction``, ``value_clip_fraction``, ``approx_kl`` (½·mean (log
ratio)², to π_old), ``completion_length`` and ``kl_coef`` (the coefficient of the
rollout: fixed, or with ``ppo.kl_target`` Ziegler et al.'s adaptive controller,
``kl_coef_after``, kept in the checkpoint's ``objective_state``).

These details follow "The N implementation details of RLHF with PPO" (Huang et al. 2023)
and TRL's PPO trainer: the score at the last token, the k1 per-token KL in the reward, the
value of a token read at the position that predicts it, advantages whitened, values
clipped around the rollout's, a penalty for completions that never stop
(``ppo.missing_eos_penalty``), log-probs at the sampling temperature.

    reward_model = load_reward_model("runs/reward-tiny")      # what ppo.reward_model names
    reward_model.score([[{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}]])   # -> [float]
"""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sftlab.data.collate import collate_padded
from sftlab.errors import ConfigError, SftlabError
from sftlab.infer.hf import HFGenerator
from sftlab.models import split_model
from sftlab.train.checkpoint import load_weights
from sftlab.train.data import Batch
from sftlab.train.methods import Prepared, trainable_summary
from sftlab.train.objectives.base import OBJECTIVES, Objective
from sftlab.train.objectives.pair import read_units
from sftlab.train.objectives.grpo import RLPrompt, read_prompts, sample_completions
from sftlab.train.objectives.reward import base_model, load_reward_model
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_HEAD_CONFIG = "value_head.json"
WHITEN_EPS = 1e-8
# methods whose reference is the policy with its adapter disabled (a PeftModel); every
# other method gets a frozen copy of the initial model
PEFT_METHODS = {"lora", "dora", "qlora", "prompt", "prefix", "ia3"}
ROLLOUT_KEYS = ("reward", "kl", "completion_length")  # the same for every micro-batch of a step


# -- the math ---------------------------------------------------------------------------

def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over ``Tensor[B, T]`` per-token
    ``rewards`` and ``values``; ``mask`` marks each row's completion tokens (one run of
    them; the episode ends after the last). Returns ``(advantages, returns)``, zero outside
    the mask.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), 1.0, 0.5)
    >>> adv.tolist()                           # A_1 = 1, A_0 = 0 + 0.5 · 1
    [[0.5, 1.0]]
    """
    mask = mask.to(values)
    values, rewards = values * mask, rewards.to(values) * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        following = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``Tensor[B, T]``: ``-kl_coef · (logps - ref_logps)`` on the
    completion tokens plus each row's ``scores[b]`` on its last one, and the per-token KL
    ``logps - ref_logps`` (zero outside ``mask``).

    >>> lp = torch.zeros(1, 3); m = torch.tensor([[1, 1, 0]])
    >>> token_rewards(torch.tensor([2.0]), lp, lp, m, 0.1)[0].tolist()   # π = π_ref: score only
    [[0.0, 2.0, 0.0]]
    """
    mask = mask.to(logps)
    kl = (logps - ref_logps.to(logps)) * mask
    rewards = torch.zeros_like(kl) - kl_coef * kl  # not -0.0 where the KL is 0
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards) * (mask.sum(dim=1) > 0)
    return rewards, kl


def kl_coef_after(kl_coef: float, kl: float, target: float, completions: int, horizon: int) -> float:
    """The adaptive KL coefficient after a rollout (Ziegler et al. 2019): a proportional
    controller whose error is clipped to +-0.2, so one rollout moves it by at most
    ``0.2 · completions / horizon``.

    >>> round(kl_coef_after(0.1, kl=12.0, target=6.0, completions=100, horizon=10000), 6)  # KL too high: up
    0.1002
    >>> round(kl_coef_after(0.1, kl=5.4, target=6.0, completions=100, horizon=10000), 6)  # error -0.1
    0.0999
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * completions / horizon)


def whiten_stats(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[Σ x, Σ x², n]`` over the masked entries (float64): summed over micro-batches and
    processes, they give the mean and variance of the whole rollout."""
    mask = mask.to(torch.float64)
    x = values.to(torch.float64) * mask
    return torch.stack([x.sum(), (x * x).sum(), mask.sum()])


def whiten(values: torch.Tensor, mask: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` with the rollout's ``whiten_stats`` (variance with
    Bessel's correction, as TRL's ``masked_whiten``); zero outside ``mask``."""
    total, squares, n = (float(v) for v in stats)
    mean = total / max(n, 1)
    variance = max(squares / max(n, 1) - mean * mean, 0.0)
    if n > 1:
        variance *= n / (n - 1)
    return (values - mean) / (variance + WHITEN_EPS) ** 0.5 * mask.to(values)


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
             values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
             mask: torch.Tensor, epsilon: float = 0.2, value_clip: float = 0.2,
             value_coef: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Per-token PPO losses ``Tensor[B, T]`` (zero outside ``mask``): the clipped surrogate
    plus ``value_coef`` times the clipped value loss; and the token SUMS of the parts
    (``policy_loss``, ``value_loss``, ``clip_fraction``, ``value_clip_fraction``,
    ``approx_kl``; detached 0-d tensors) for the caller's means.

    >>> z = torch.zeros(1, 2); m = torch.ones(1, 2)
    >>> ppo_loss(z, z, torch.tensor([[1.0, -1.0]]), z, z, z, m)[0]       # ratio 1: -A
    tensor([[-1.,  1.]])
    """
    mask = mask.to(logps)
    log_ratio = logps - old_logps.to(logps)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(logps)
    policy = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - epsilon, 1 + epsilon))
    old_values, returns = old_values.to(values), returns.to(values)
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    value = 0.5 * torch.max(unclipped_error, clipped_error)
    losses = (policy + value_coef * value) * mask
    with torch.no_grad():
        parts = {"policy_loss": (policy * mask).sum(), "value_loss": (value * mask).sum(),
                 "clip_fraction": (((ratio - 1).abs() > epsilon).to(mask) * mask).sum(),
                 "value_clip_fraction": ((clipped_error > unclipped_error).to(mask) * mask).sum(),
                 "approx_kl": (0.5 * log_ratio ** 2 * mask).sum()}
    return losses, parts


# -- the value head and the forward pass ------------------------------------------------

def attach_value_head(model) -> torch.nn.Linear:
    """Add a zero ``Linear(hidden, 1)`` as ``value_head`` of ``model`` (under any PEFT
    wrapper: a module of the model, so every checkpoint holds it), in the model's dtype and
    device; returns it. Zero at start: the first values are 0 and the value loss does not
    reach the body before the head has learnt something. Idempotent."""
    inner = base_model(model)
    head = getattr(inner, "value_head", None)
    if head is None:
        weight = next(inner.parameters())
        head = torch.nn.Linear(inner.config.hidden_size, 1, dtype=weight.dtype, device=weight.device)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        inner.add_module("value_head", head)
    return head


def logps_and_values(model, input_ids, attention_mask, labels, *, temperature: float = 1.0,
                     logit_offset: int = 0, values: bool = True):
    """``(log p(labels[t] | < t) / T, V(< t))``, both ``Tensor[B, T-1]`` (float32 at least;
    zero where ``labels[:, 1:]`` is ignored), from one forward pass: the value of a token is
    the head on the hidden state at the position that predicts it. ``values=False`` skips
    the head (the reference has none): ``(logps, None)``."""
    body, head = split_model(model)
    if body is not None:  # the hidden states once, for both the LM head and the value head
        hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                      use_cache=False).last_hidden_state
        logits = head(hidden)
    else:  # prompt learning prepends virtual tokens inside the PEFT forward
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                    output_hidden_states=True)
        hidden, logits = out.hidden_states[-1], out.logits
    hidden, logits = hidden[:, logit_offset:][:, :-1], logits[:, logit_offset:][:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.gather(logits, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    if not values:
        return logps, None
    value_head = base_model(model).value_head
    dtype = torch.promote_types(value_head.weight.dtype, torch.float32)
    value = F.linear(hidden.to(dtype), value_head.weight.to(dtype),
                     value_head.bias.to(dtype)).squeeze(-1)
    return logps, value * mask


class PPOLoss(torch.nn.Module):
    """``ppo_loss`` with the loop's contract on ``make_step_data``'s batches:
    ``forward(**batch) -> (loss_sum, completion tokens)``; ``metrics``: the means over the
    call's completion tokens of the loss's parts, and the rollout's ``reward``, ``kl`` and
    ``completion_length`` (the same in every micro-batch of a step)."""

    def __init__(self, model, settings, logit_offset: int = 0) -> None:
        super().__init__()
        self.model, self.settings, self.logit_offset = model, settings, logit_offset
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, old_logps, old_values, advantages,
                returns, reward, kl, completion_length, kl_coef):
        s = self.settings
        logps, values = logps_and_values(self.model, input_ids, attention_mask, labels,
                                         temperature=s.temperature, logit_offset=self.logit_offset)
        mask = labels[:, 1:] != IGNORE_INDEX
        losses, parts = ppo_loss(logps, old_logps, advantages, values, old_values, returns, mask,
                                 s.epsilon, s.value_clip, s.value_coef)
        tokens = mask.sum()
        self.metrics = {k: float(v.double() / tokens.clamp(min=1)) for k, v in parts.items()}
        self.metrics.update(reward=float(reward), kl=float(kl),
                            completion_length=float(completion_length), kl_coef=float(kl_coef))
        return losses.sum(), tokens


@contextlib.contextmanager
def without_value_head(model):
    """``model`` with its ``value_head`` taken off for the block (then put back, the same
    module): what ``save_pretrained`` writes and ``load_weights`` expects is a plain causal
    LM, which ``AutoModelForCausalLM.from_pretrained`` loads with no unexpected keys."""
    inner = base_model(model)
    head = inner._modules.pop("value_head", None)
    try:
        yield head
    finally:
        if head is not None:
            inner.add_module("value_head", head)


@dataclass
class PPOPrepared(Prepared):
    """A ``Prepared`` whose ``save`` writes the value head beside the model/adapter
    (``value_head.safetensors``), never inside it."""

    def save(self, path: str | Path) -> Path:
        with without_value_head(self.model):
            path = super().save(path)
        head = base_model(self.model).value_head
        save_file({"weight": head.weight.detach().float().cpu().contiguous(),
                   "bias": head.bias.detach().float().cpu().contiguous()},
                  str(path / VALUE_HEAD_FILE))
        (path / VALUE_HEAD_CONFIG).write_text(json.dumps(
            {"hidden_size": head.weight.shape[1], "kind": self.kind,
             "reads": "last hidden state at the position predicting each token"}))
        return path

    def load_full(self, directory: Path) -> None:
        """Restore a ``kind == "full"`` checkpoint's ``save``: the model's weights, then the
        value head from its own file (``checkpoint.load_checkpoint`` calls this)."""
        with without_value_head(self.model):
            load_weights(self.model, directory)
        saved = load_file(str(Path(directory) / VALUE_HEAD_FILE))
        head = base_model(self.model).value_head
        with torch.no_grad():
            head.weight.copy_(saved["weight"])
            head.bias.copy_(saved["bias"])


# -- the objective ----------------------------------------------------------------------

@OBJECTIVES.register("ppo")
class PPOObjective(Objective):
    name = "ppo"
    unit_type = RLPrompt
    unit_name = "completion token"
    count_key = "completion_tokens"
    metric_names = ("reward", "kl", "policy_loss", "value_loss", "clip_fraction",
                    "value_clip_fraction", "approx_kl", "completion_length", "kl_coef")

    def __init__(self, config) -> None:
        super().__init__(config)
        self.reference = None   # a frozen copy of the initial model (non-PEFT methods)
        self.scorer = None      # the reward model: .score(conversations) -> [float]
        self.generator: HFGenerator | None = None
        self.rollout: list[Batch] | None = None  # the batches of the current rollout

    @classmethod
    def check(cls, config) -> None:
        if config.method.name == "lomo":
            raise ConfigError("objective=ppo needs an optimizer method (full, lora, ...): "
                              "'lomo' updates the weights inside backward")
        if config.data.eval_split or config.data.eval_path:
            raise ConfigError("objective=ppo has no held-out loss (its data are generated "
                              "each rollout); set data.eval_split=0 and no data.eval_path, and "
                              "evaluate the trained model with sftlab eval")
        if not config.ppo.reward_model:
            raise ConfigError("objective=ppo needs ppo.reward_model: the run (or model/, "
                              "adapter/) directory of an objective=reward training, e.g. "
                              "ppo.reward_model=runs/reward-tiny")

    def load_data(self, tokenizer, *, progress: bool = False):
        """Prompt rows of ``data.paths`` (``grpo``'s reader, no answer needed); the reward
        model loads here too, so a wrong path or tokenizer fails before the policy loads."""
        section, settings = self.config.data, self.config.ppo
        limit = section.max_length - settings.max_new_tokens

        def read(path, tokenizer, max_length, on_error):
            return read_prompts(path, tokenizer, limit, on_error, require_answer=False, limit=section.limit)

        train, _, dropped = read_units(section, tokenizer, read, unit="prompt",
                                       hint="prompts must fit data.max_length - ppo.max_new_tokens tokens")
        self.load_scorer(tokenizer)
        left_out = f" ({sum(dropped.values())} dropped: {dict(dropped)})" if dropped else ""
        return train, [], (f"data: {len(train)} train prompts{left_out}; one completion each "
                           f"per rollout, {settings.epochs} PPO epochs per rollout")

    def load_scorer(self, tokenizer) -> None:
        """``ppo.reward_model`` as a scorer, refused when its tokenizer is not the policy's."""
        if self.scorer is not None:
            return
        path = self.config.ppo.reward_model
        scorer = load_reward_model(path, dtype=self.config.model.dtype,
                                   max_length=self.config.data.max_length)
        if scorer.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"ppo.reward_model={path}: its tokenizer is not the policy's "
                              f"({len(scorer.tokenizer.get_vocab())} vs "
                              f"{len(tokenizer.get_vocab())} tokens, or other ids); train the "
                              "reward model from the same base model as the policy")
        if hasattr(scorer, "model"):  # a stand-in scorer (tests) may have none
            scorer.model.requires_grad_(False)
        self.scorer = scorer

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """The reference: a frozen copy of the initial model, unless the method is a PEFT
        adapter (then the policy with the adapter disabled is the initial model)."""
        if self.config.method.name not in PEFT_METHODS:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def prepare(self, prepared: Prepared) -> PPOPrepared:
        """Attach the zero value head (after the method froze the model) and train it too."""
        if self.reference is None and not hasattr(prepared.model, "disable_adapter"):
            raise SftlabError(f"objective=ppo: method {prepared.method} gave no PEFT model to "
                              "disable for the reference")
        head = attach_value_head(prepared.model)
        head.requires_grad_(True)
        values = {f.name: getattr(prepared, f.name) for f in fields(Prepared)}
        values["parameters"] = list(prepared.parameters) + list(head.parameters())
        result = PPOPrepared(**values)
        result.summary = trainable_summary(result.model)
        return result

    def make_units(self, examples: list) -> list:
        return list(examples)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> Batch:
        """The prompts themselves: ``make_step_data`` turns them into a rollout."""
        tokens = sum(len(item) for item in items)
        return Batch({"prompts": list(items)}, tokens, tokens)

    def make_step_data(self, run, batches: list) -> list:
        """Every ``ppo.epochs`` steps a new rollout from this step's prompts (the first step
        of a resumed run too); the steps in between train on the same rollout again."""
        if self.rollout is not None and run.state.step % self.config.ppo.epochs != 0:
            return self.rollout
        self.rollout = self.make_rollout(run, batches)
        return self.rollout

    def make_rollout(self, run, batches: list) -> list:
        """Sample one completion per prompt (one call: the split into micro-batches does not
        change what is sampled), score them, and give each micro-batch its old log-probs,
        values, whitened advantages and returns."""
        settings, acc = self.config.ppo, run.accelerator
        prompts = [p for batch in batches for p in batch.tensors["prompts"]]
        texts, completions, stopped = self.sample(run, prompts)
        scores = self.score(run, prompts, texts, stopped)
        kl_coef = run.state.objective_state.get("kl_coef", settings.kl_coef)
        out, stats, start = [], torch.zeros(3, dtype=torch.float64), 0
        for batch in batches:
            n = len(batch.tensors["prompts"])
            rows = [Tokenized(p.prompt_ids + ids, [IGNORE_INDEX] * len(p.prompt_ids) + ids)
                    for p, ids in zip(prompts[start:start + n], completions[start:start + n])]
            tensors = collate_padded(rows, run.pad_id)
            tensors.update(self.evaluate_rollout(run, tensors, scores[start:start + n], kl_coef))
            stats += whiten_stats(tensors["advantages"], tensors["labels"][:, 1:] != IGNORE_INDEX)
            out.append(Batch(tensors, int(tensors["attention_mask"].sum()), tensors["input_ids"].numel()))
            start += n
        sums = torch.tensor([float(scores.sum()), sum(float(b.tensors.pop("kl_sum")) for b in out),
                             float(stats[2]), len(prompts)], dtype=torch.float64)
        if acc.num_processes > 1:
            stats = acc.reduce(stats.to(acc.device), reduction="sum").cpu()
            sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
        rollout = {"reward": sums[0] / sums[3], "kl": sums[1] / sums[3],
                   "completion_length": sums[2] / sums[3], "kl_coef": torch.tensor(kl_coef, dtype=torch.float64)}
        if settings.kl_target:
            run.state.objective_state["kl_coef"] = kl_coef_after(kl_coef, float(rollout["kl"]), settings.kl_target,
                                                                 int(sums[3]), settings.kl_horizon)
        for batch in out:
            mask = batch.tensors["labels"][:, 1:] != IGNORE_INDEX
            if settings.whiten_advantages:
                batch.tensors["advantages"] = whiten(batch.tensors["advantages"], mask, stats)
            batch.tensors.update({k: v.clone() for k, v in rollout.items()})
        return out

    @torch.no_grad()
    def evaluate_rollout(self, run, tensors: dict, scores: torch.Tensor, kl_coef: float) -> dict:
        """Old log-probs and values of the policy, the reference's log-probs, the per-token
        rewards and GAE of one micro-batch (frozen: eval mode, no grad, the run's autocast)."""
        settings, acc, model = self.config.ppo, run.accelerator, run.prepared.model
        device = {k: tensors[k].to(acc.device) for k in ("input_ids", "attention_mask", "labels")}
        args = (device["input_ids"], device["attention_mask"], device["labels"])
        model.eval()
        try:
            with acc.autocast():
                logps, values = logps_and_values(model, *args, temperature=settings.temperature,
                                                 logit_offset=run.prepared.logit_offset)
                ref_logps = self.reference_logps(model, acc, args)
        finally:
            model.train()
        mask = device["labels"][:, 1:] != IGNORE_INDEX
        rewards, kl = token_rewards(scores.to(logps.device), logps, ref_logps, mask, kl_coef)
        advantages, returns = gae(rewards, values, mask, settings.gamma, settings.gae_lambda)
        return {"old_logps": logps.cpu(), "old_values": values.cpu(), "advantages": advantages.cpu(),
                "returns": returns.cpu(), "kl_sum": kl.double().sum().cpu()}

    def reference_logps(self, model, acc, args) -> torch.Tensor:
        """The initial model's log-probs: the frozen copy, or the policy with its adapter
        disabled."""
        temperature = self.config.ppo.temperature
        if self.reference is not None:
            return logps_and_values(self.reference.to(acc.device), *args, temperature=temperature,
                                    values=False)[0]
        with model.disable_adapter():
            return logps_and_values(model, *args, temperature=temperature, values=False)[0]

    def sample(self, run, prompts: list[RLPrompt]) -> tuple[list[str], list[list[int]], list[bool]]:
        """``(texts, completion token ids, stopped)`` of one sample of every prompt, in order.
        The ids are the sampled tokens (``sample_completions``, shared with ``grpo``), ending
        with the end-of-turn token when the model stopped, so the policy learns where to stop."""
        if self.generator is None:
            self.generator = HFGenerator(run.prepared.model, run.tokenizer, batch_size=64, name="ppo-policy")
        return sample_completions(self.generator, run, [p.prompt_ids for p in prompts], self.config.ppo,
                                  self.config.seed)

    def score(self, run, prompts: list[RLPrompt], texts: list[str], stopped: list[bool]) -> torch.Tensor:
        """The reward model's score of each (prompt, completion) conversation, minus
        ``ppo.missing_eos_penalty`` for a completion that did not stop; ``Tensor[N]``
        float64. A score that is not finite stops the run naming the prompt."""
        self.load_scorer(run.tokenizer)
        scorer = self.scorer
        if hasattr(scorer, "model"):
            scorer.model.to(run.accelerator.device)
        items = [Conversation(list(p.prompt) + [Message("assistant", text)])
                 for p, text in zip(prompts, texts)]
        scores = torch.tensor(scorer.score(items), dtype=torch.float64)
        bad = (~torch.isfinite(scores)).nonzero()
        if len(bad):
            index = int(bad[0])
            where = f"prompt {prompts[index].id!r}" if prompts[index].id else f"prompt #{index} of the step"
            raise SftlabError(f"ppo.reward_model scored {float(scores[index])} on {where}: "
                              "rewards must be finite numbers; check the reward model")
        penalty = self.config.ppo.missing_eos_penalty
        return scores - penalty * torch.tensor([not s for s in stopped], dtype=torch.float64)

    def loss_module(self, prepared) -> PPOLoss:
        return PPOLoss(prepared.model, self.config.ppo, prepared.logit_offset)

    def count(self, tensors: dict) -> int:
        return int((tensors["labels"][:, 1:] != IGNORE_INDEX).sum())

    def unit_key(self, unit: RLPrompt):
        return (unit.prompt_ids, unit.answer)

    def preview(self, unit: RLPrompt) -> Tokenized:
        return Tokenized(unit.prompt_ids, [IGNORE_INDEX] * len(unit.prompt_ids))
