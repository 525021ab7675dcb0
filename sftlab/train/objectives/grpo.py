"""``objective: grpo``: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath)
with rule-based, verifiable rewards; no value model, no reward model.

The units are prompts (``data.paths`` rows: ``messages`` or ``prompt``, plus the ``answer``
a reward checks; GSM8K's ``question``/``answer`` too). Each optimizer step, in
``make_step_data``, the current policy samples ``grpo.num_generations`` (G) completions of
every prompt of the step with sftlab's own generator (``sftlab.infer.HFGenerator``), the
registered reward functions (``REWARDS``: ``exact_match``, ``gsm8k``, ``format``) score
them, and each group's advantages are its rewards normalised within the group::

    A_i = (r_i - mean(r_1..G)) / (std(r_1..G) + 1e-4)          (a group's A sum to 0)
    ratio_t = π(o_t | q, o_<t) / π_old(o_t | q, o_<t)
    loss_i  = mean over o_i's tokens of  -min(ratio_t · A_i, clip(ratio_t, 1-ε, 1+ε) · A_i)
                                          + β · (exp(d_t) - d_t - 1),  d_t = log π_ref - log π
    loss    = mean over the step's completions of loss_i

The KL term is the k3 estimator of KL(π || π_ref) (DeepSeekMath eq. 4; TRL's GRPOTrainer),
against a frozen copy of the initial model (kept only when β > 0). Each rollout is trained
on once, so π_old is the policy itself (ratio 1, its gradient ∇log π: TRL's default
``num_iterations=1``); the clip acts only where the two differ. The step's loss is a mean
over its completions (``count``), normalised as every objective: the split into
micro-batches does not change it. The log row gets ``completions``, ``reward`` (mean),
``reward_std`` (mean within-group standard deviation), ``kl`` and ``completion_tokens``.
"""
from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sftlab.data import answers
from sftlab.data.collate import collate_padded
from sftlab.data.formats import parse_turns
from sftlab.data.io import locate, read_objects
from sftlab.errors import ConfigError, DataError, SftlabError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator, prompt_to_ids
from sftlab.registry import Registry
from sftlab.train.data import Batch
from sftlab.train.objectives.base import OBJECTIVES, Objective
from sftlab.train.objectives.pair import read_units
from sftlab.types import IGNORE_INDEX, Message, Tokenized

ADVANTAGE_EPS = 1e-4  # TRL's and DeepSeekMath's: a group with one distinct reward gets A = 0


# -- rewards ----------------------------------------------------------------------------

@dataclass
class RewardFunction:
    """``fn(completion, answer, settings) -> float`` (``settings``: the ``grpo`` section);
    ``needs_answer``: every prompt row must carry an ``answer``."""

    fn: Callable[[str, str | None, Any], float]
    needs_answer: bool = True


REWARDS: Registry[RewardFunction] = Registry("reward function")
"""Rule-based rewards of ``objective: grpo``, by name (``grpo.rewards``)."""


def _normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def _exact_match(completion: str, answer: str | None, settings) -> float:
    """1 when the completion is the answer (case, outer spaces and a final period ignored)."""
    return float(_normalise(completion) == _normalise(answer or ""))


def _gsm8k(completion: str, answer: str | None, settings) -> float:
    """1 when the completion's last number equals the reference's final number (GSM8K's
    ``#### N``, or the whole answer), compared by value (``$1,200.00`` = ``1200``)."""
    predicted = answers.gsm8k_flexible(completion)  # the evaluation's own extraction
    if predicted == answers.LM_EVAL_INVALID:
        return 0.0
    target = answers.gsm8k_target(answer or "")
    return float(answers.normalize_number(predicted) == answers.normalize_number(target))


def _format_reward(completion: str, answer: str | None, settings) -> float:
    """1 when ``grpo.format_pattern`` (a regular expression) matches at the start of the
    completion (``re.match``; prefix it with ``.*`` to search anywhere)."""
    return float(re.match(settings.format_pattern, completion, re.DOTALL) is not None)


REWARDS.register("exact_match")(RewardFunction(_exact_match))
REWARDS.register("gsm8k")(RewardFunction(_gsm8k))
REWARDS.register("format")(RewardFunction(_format_reward, needs_answer=False))


def score(completion: str, answer: str | None, settings, where: str) -> float:
    """The weighted sum of ``settings.rewards``; a reward that raises or is not a finite
    number stops the run with an error naming it and ``where`` (the prompt)."""
    weights = settings.reward_weights or [1.0] * len(settings.rewards)
    total = 0.0
    for name, weight in zip(settings.rewards, weights):
        try:
            value = float(REWARDS.get(name).fn(completion, answer, settings))
        except Exception as error:  # a user's reward function: any failure is reported
            raise SftlabError(f"grpo reward '{name}' failed on {where} ({type(error).__name__}: "
                              f"{error}); fix the reward function or the row") from error
        if not math.isfinite(value):
            raise SftlabError(f"grpo reward '{name}' returned {value} on {where}: rewards must "
                              "be finite numbers")
        total += weight * value
    return total


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(r - group mean) / (group std + 1e-4)`` for ``rewards`` ``Tensor[N·G]`` laid out
    group by group (std unbiased, as TRL's); ``Tensor[N·G]``.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4).sum().abs() < 1e-6
    tensor(True)
    """
    groups = rewards.view(-1, group_size)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return ((groups - groups.mean(dim=1, keepdim=True)) / (std + ADVANTAGE_EPS)).view(-1)


# -- the math ---------------------------------------------------------------------------

def token_logps(model, input_ids, attention_mask, labels, logit_offset: int = 0) -> torch.Tensor:
    """``log p(labels[t] | tokens < t)`` at every position ``t >= 1`` (``Tensor[B, T-1]``,
    float32 at least; 0 where unlabelled)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   use_cache=False).logits[:, logit_offset:]
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = labels[:, 1:]
    picked = torch.gather(logits, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * (targets != IGNORE_INDEX)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, epsilon: float = 0.2, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-completion GRPO losses ``Tensor[B]`` (the token mean of the clipped surrogate
    plus β·k3) and per-completion mean k3 KL (detached; zeros without ``ref_logps``), from
    per-token log-probs ``Tensor[B, T]``, ``advantages`` ``Tensor[B]`` and ``mask``.

    >>> lp = torch.zeros(1, 3); m = torch.ones(1, 3)
    >>> grpo_loss(lp, lp, torch.tensor([2.0]), m)[0]       # ratio 1: -A
    tensor([-2.])
    """
    ratio = torch.exp(logps - old_logps)
    advantages = advantages.unsqueeze(1).to(logps)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    per_token = -surrogate
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        delta = ref_logps.to(logps) - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    mask = mask.to(logps)
    lengths = mask.sum(-1).clamp(min=1)
    return (per_token * mask).sum(-1) / lengths, ((kl * mask).sum(-1) / lengths).detach()


class GRPOLoss(torch.nn.Module):
    """``grpo_loss`` with the loop's contract on ``make_step_data``'s batches:
    ``forward(**batch) -> (loss_sum, completions)``; ``metrics``: ``reward``,
    ``reward_std``, ``kl``, ``completion_tokens`` (means over the call's completions)."""

    def __init__(self, model, epsilon: float = 0.2, beta: float = 0.0, logit_offset: int = 0) -> None:
        super().__init__()
        self.model, self.epsilon, self.beta, self.logit_offset = model, epsilon, beta, logit_offset
        self.metrics: dict = {}

    def forward(self, input_ids, labels, attention_mask, advantages, rewards, reward_std,
                ref_logps=None):
        logps = token_logps(self.model, input_ids, attention_mask, labels, self.logit_offset)
        mask = labels[:, 1:] != IGNORE_INDEX
        losses, kl = grpo_loss(logps, logps.detach(), advantages, mask, self.epsilon, self.beta,
                               ref_logps)
        self.metrics = {"reward": float(rewards.double().mean()),
                        "reward_std": float(reward_std.double().mean()),
                        "kl": float(kl.double().mean()),
                        "completion_tokens": float(mask.sum(-1).double().mean())}
        return losses.sum(), torch.tensor(losses.shape[0], device=losses.device)


# -- prompts ----------------------------------------------------------------------------

@dataclass
class RLPrompt:
    """One prompt: its turns (ending with the user's), their token ids with the generation
    prompt, and the reference answer the rewards check (``None`` if the row has none)."""

    prompt: list[Message]
    prompt_ids: list[int]
    answer: str | None = None
    id: str | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)


def parse_prompt_row(row: dict) -> tuple[list[Message], str | None]:
    """``{"messages": [...], "answer": ...}``, ``{"prompt": str | messages, "answer": ...}``
    or GSM8K's ``{"question": str, "answer": str}`` -> ``(turns, answer)``."""
    key = next((k for k in ("messages", "prompt", "question") if k in row), None)
    if key is None:
        raise DataError(f"not a prompt row (keys: {', '.join(sorted(row)) or 'none'})",
                        hint="a GRPO row has messages (or prompt, or question) and an answer",
                        reason="not a prompt")
    value = row[key]
    if value in (None, "", []) or not isinstance(value, (str, list)):
        raise DataError("missing, empty or not a string/message list", field=key, reason=f"bad {key}")
    turns = parse_turns(value, key, "user")
    if turns[-1].role != "user":
        raise DataError(f"the prompt's last turn is the {turns[-1].role}'s; it must be the "
                        "user turn the completions answer", field=key, reason="bad prompt")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise DataError(f"must be a string or a number, got {type(answer).__name__}",
                        field="answer", reason="bad answer")
    return turns, None if answer is None else str(answer)


def read_prompts(path: str | Path, tokenizer, max_prompt_tokens: int, on_error: str = "fail", *,
                 require_answer: bool = True,
                 limit: int | None = None) -> tuple[list[RLPrompt], Counter]:
    """A JSON/JSONL file of prompt rows -> ``(RLPrompt units, dropped reasons)``, the first
    ``limit`` (all: ``None``). A bad row (with ``require_answer``: one without ``answer``)
    raises ``DataError`` naming file, line and field, or is counted with
    ``on_error="skip"``; a prompt longer than ``max_prompt_tokens`` is dropped and counted."""
    path = Path(path)
    prompts, dropped = [], Counter()
    for record in read_objects(path):
        if limit is not None and len(prompts) >= limit:
            break
        try:
            turns, answer = parse_prompt_row(record.value)
            if require_answer and answer is None:
                raise DataError("missing: the rewards check each completion against it",
                                field="answer", hint="add the reference answer, or use only "
                                "rewards that need none (grpo.rewards=[format])",
                                reason="missing answer")
        except DataError as error:
            if on_error != "skip":
                raise locate(error, path, record) from None
            dropped[f"bad record: {error.reason}"] += 1
            continue
        ids = prompt_to_ids(tokenizer, turns)
        if len(ids) > max_prompt_tokens:
            dropped["prompt too long"] += 1
            continue
        id = record.value.get("id")
        prompts.append(RLPrompt(turns, ids, answer, id if isinstance(id, str) else None))
    return prompts, dropped


# -- the objective ----------------------------------------------------------------------

@OBJECTIVES.register("grpo")
class GRPOObjective(Objective):
    name = "grpo"
    unit_type = RLPrompt
    unit_name = "completion"
    count_key = "completions"
    metric_names = ("reward", "reward_std", "kl", "completion_tokens")

    def __init__(self, config) -> None:
        super().__init__(config)
        self.reference = None  # the frozen initial model, when grpo.beta > 0
        self.generator: HFGenerator | None = None

    @classmethod
    def check(cls, config) -> None:
        section = config.grpo
        if config.method.name == "lomo":
            raise ConfigError("objective=grpo needs an optimizer method (full, lora, ...): "
                              "'lomo' updates the weights inside backward")
        if config.data.eval_split or config.data.eval_path:
            raise ConfigError("objective=grpo has no held-out loss (its data are generated "
                              "each step); set data.eval_split=0 and no data.eval_path, and "
                              "evaluate the trained model with sftlab eval")
        for name in section.rewards:
            REWARDS.get(name)  # an unknown name fails here, with the close ones
        if "format" in section.rewards and not section.format_pattern:
            raise ConfigError("grpo.rewards has 'format' but grpo.format_pattern is empty; set "
                              "it to the regular expression a completion must start with")

    def load_data(self, tokenizer, *, progress: bool = False):
        section, settings = self.config.data, self.config.grpo
        needs_answer = any(REWARDS.get(name).needs_answer for name in settings.rewards)
        limit = section.max_length - settings.max_new_tokens

        def read(path, tokenizer, max_length, on_error):
            return read_prompts(path, tokenizer, limit, on_error, require_answer=needs_answer, limit=section.limit)

        train, _, dropped = read_units(section, tokenizer, read, unit="prompt",
                                       hint="prompts must fit data.max_length - grpo.max_new_tokens tokens")
        left_out = f" ({sum(dropped.values())} dropped: {dict(dropped)})" if dropped else ""
        return train, [], (f"data: {len(train)} train prompts{left_out}; "
                           f"{settings.num_generations} completions each per step")

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """With ``grpo.beta > 0``: a frozen copy of the initial model, the KL reference."""
        if self.config.grpo.beta > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def make_units(self, examples: list) -> list:
        return list(examples)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> Batch:
        """The prompts themselves (``tensors["prompts"]``): ``make_step_data`` turns them
        into the trained batch once the step's completions are generated."""
        tokens = sum(len(item) for item in items)
        return Batch({"prompts": list(items)}, tokens, tokens)

    def make_step_data(self, run, batches: list) -> list:
        """Generate G completions of every prompt of the step (one call, so how the step is
        split into micro-batches does not change what is sampled), score them, normalise
        the rewards per group, and collate each micro-batch's completions."""
        settings, acc = self.config.grpo, run.accelerator
        group = settings.num_generations
        prompts = [p for batch in batches for p in batch.tensors["prompts"]]
        texts, completions = self.rollouts(run, prompts)
        rewards = torch.tensor([score(text, prompts[i // group].answer, settings,
                                      _where(prompts[i // group], i // group))
                                for i, text in enumerate(texts)], dtype=torch.float64)
        advantages = group_advantages(rewards, group)
        spread = rewards.view(-1, group).std(dim=1) if group > 1 else torch.zeros(len(prompts))
        out, start = [], 0
        for batch in batches:
            n = len(batch.tensors["prompts"])
            rows = slice(start * group, (start + n) * group)
            sequences = [Tokenized(prompts[start + j // group].prompt_ids + ids,
                                   [IGNORE_INDEX] * len(prompts[start + j // group].prompt_ids) + ids)
                         for j, ids in enumerate(completions[rows])]
            tensors = collate_padded(sequences, run.pad_id)
            tensors.update(advantages=advantages[rows].float(), rewards=rewards[rows].float(),
                           reward_std=spread[start:start + n].repeat_interleave(group).float())
            if self.reference is not None:
                tensors["ref_logps"] = self.reference_logps(acc, tensors)
            real = int(tensors["attention_mask"].sum())
            out.append(Batch(tensors, real, tensors["input_ids"].numel()))
            start += n
        return out

    def rollouts(self, run, prompts: list[RLPrompt]) -> tuple[list[str], list[list[int]]]:
        """``(texts, completion token ids)`` of G samples of every prompt, in order (prompt
        0's G first). The ids are the sampled tokens (``sample_completions``), ending with the
        end-of-turn token when the model stopped, so the policy learns where to stop."""
        settings = self.config.grpo
        prompt_ids = [p.prompt_ids for p in prompts for _ in range(settings.num_generations)]
        if self.generator is None:
            self.generator = HFGenerator(run.prepared.model, run.tokenizer, batch_size=64, name="grpo-policy")
        texts, ids, _ = sample_completions(self.generator, run, prompt_ids, settings, self.config.seed)
        return texts, ids

    @torch.no_grad()
    def reference_logps(self, acc, tensors: dict) -> torch.Tensor:
        reference = self.reference.to(acc.device)
        with acc.autocast():
            logps = token_logps(reference, tensors["input_ids"].to(acc.device),
                                tensors["attention_mask"].to(acc.device),
                                tensors["labels"].to(acc.device))
        return logps.cpu()

    def loss_module(self, prepared) -> GRPOLoss:
        section = self.config.grpo
        return GRPOLoss(prepared.model, section.epsilon, section.beta, prepared.logit_offset)

    def count(self, tensors: dict) -> int:
        return int(tensors["advantages"].shape[0])

    def unit_key(self, unit: RLPrompt):
        return (unit.prompt_ids, unit.answer)

    def preview(self, unit: RLPrompt) -> Tokenized:
        return Tokenized(unit.prompt_ids, [IGNORE_INDEX] * len(unit.prompt_ids))


def _where(prompt: RLPrompt, index: int) -> str:
    return f"prompt {prompt.id!r}" if prompt.id else f"prompt #{index} of the step"


def sample_completions(generator, run, prompt_ids: list[list[int]], settings,
                       seed: int) -> tuple[list[str], list[list[int]], list[bool]]:
    """``(texts, completion token ids, stopped)`` of one sample per prompt from the policy
    as it is now (``generator`` wraps ``run.prepared.model``; eval mode while sampling),
    seeded by ``seed``, the step and the process. The ids are the tokens the generator
    sampled (``Generation.token_ids``, its end-of-turn token included when the model
    stopped), so the loss scores the very tokens drawn: decoding and re-tokenizing the text
    need not give them back. A generator that reports no ids gets its text re-tokenized;
    either way a completion that stopped ends with an end-of-turn token, so the policy learns
    where to stop. ``settings`` has ``max_new_tokens``, ``temperature`` and ``top_p``
    (grpo's and ppo's)."""
    model = run.prepared.model
    generator.model = model.eval()
    seed = (seed * 1_000_003 + run.state.step * 1009 + run.accelerator.process_index) % 2 ** 31
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_p=settings.top_p, seed=seed)
    try:
        generations = generator.generate(prompt_ids, sampling)
    finally:
        model.train()
    stop = _stop_id(run.tokenizer, generator.eos_ids)
    texts, ids, stopped = [], [], []
    for generation in generations:
        tokens = generation.token_ids
        if tokens is not None:  # as sampled: its end-of-turn token, if any, is there already
            tokens = list(tokens)
            ended = bool(tokens) and tokens[-1] in generator.eos_ids
        else:
            tokens = list(run.tokenizer(generation.text, add_special_tokens=False)["input_ids"])
            tokens, ended = tokens[:settings.max_new_tokens], False
        if (generation.finish_reason == "stop" and not ended) or not tokens:
            tokens.append(stop)
        texts.append(generation.text)
        ids.append(tokens)
        stopped.append(generation.finish_reason == "stop")
    return texts, ids, stopped


def _stop_id(tokenizer, eos_ids: set[int]) -> int:
    """The end-of-turn token appended to a completion that stopped."""
    eos = tokenizer.eos_token_id
    return eos if eos in eos_ids or not eos_ids else min(eos_ids)
