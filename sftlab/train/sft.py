"""THE training loop: setup, loop, eval, save, resume. Every method and launcher uses it.

Reads top to bottom::

    train(config)
      setup()        threads, seed, accelerator, tokenizer, data, model, method, optimizer,
                     run directory (run.json); every user-fixable problem fails here
      resume()       newest checkpoint -> weights, optimizer, RNG, data position
      loop()         for each optimizer step: micro-batches -> train_step() -> log, eval,
                     checkpoint, early stopping
      finish()       final eval, model/ or adapter/ + tokenizer, loss.png

Python API (the CLI ``sftlab train CONFIG.yaml key=value ...`` builds the same config)::

    from sftlab.config import load_config
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train
    result = train(load_config(TrainConfig, "examples/sft_tiny.yaml", ["max_steps=10"]))
    result.final_loss, result.output_dir

Distributed: ``accelerate launch -m sftlab train cfg.yaml`` or ``torchrun`` run this same
code; the loss normalisation (``sftlab.train.loss``) makes N processes equal one.

What is trained is the objective (``config.objective``, ``sftlab.train.objectives``),
picked once in ``setup``: it loads the data units, works on the initial model (reference
log-probs), collates micro-batches, builds the loss module and says what the step's loss
is a mean over (labelled tokens, pairs). Which parameters train is the method
(``sftlab.train.methods``), also picked once. The loop below knows neither by name:
batching, normalisation, resume, logging and saving are the same for all.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from sftlab.errors import ConfigError, SftlabError
from sftlab.models import context_length, load_model, load_tokenizer, pad_id, resolve_model
from sftlab.models.export import record_base_name
from sftlab.train import attention, checkpoint, data
from sftlab.train import run as run_files
from sftlab.train.config import TrainConfig
from sftlab.train.fused import fuse_rmsnorm, fuse_swiglu
from sftlab.train.loss import normaliser, step_token_count
from sftlab.train.memory import mmap_large_blocks, trim_during_forward
from sftlab.train.methods import check_method_supported, model_load_kwargs, prepare_model
from sftlab.train.objectives import OBJECTIVES, Objective
from sftlab.train.optim import InBackwardOptimizer, build_optimizer, check_in_backward, lr_at, scheduled_lr


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint (``state.json``)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    order: list[int] = field(default_factory=list)
    best_eval: float | None = None
    evals_without_improvement: int = 0
    trained_tokens: int = 0
    objective_state: dict = field(default_factory=dict)  # what an objective carries across steps (PPO's kl_coef)


@dataclass
class Run:
    """Everything ``setup`` builds; the later stages only read and update it."""

    config: TrainConfig
    accelerator: Any
    tokenizer: Any
    objective: Objective  # what is trained: data units, collate, loss, counts
    prepared: Any  # sftlab.train.methods.Prepared
    loss_module: Any  # the objective's, wrapped by accelerate (DDP/FSDP) when distributed
    optimizer: Any
    train_examples: list  # the objective's unit_type (Tokenized, Pair)
    units: list  # what batches are made of: examples, packed rows, pairs
    eval_units: list
    pad_id: int
    total_steps: int
    steps_per_epoch: int
    output_dir: Path
    data_order: dict  # what the order of the batches depends on (``data_order_of``)
    state: TrainState = field(default_factory=TrainState)
    history: list[dict] = field(default_factory=list)
    eval_metrics: dict = field(default_factory=dict)  # the last eval's eval_<metric_names>


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float | None
    eval_loss: float | None
    saved_to: Path | None
    history: list[dict]
    prepared: Any = None
    """The trained ``methods.Prepared`` (``.model`` is trained in place; PEFT can merge it)."""


def train(config: TrainConfig, *, model=None, tokenizer=None, train_examples=None,
          eval_examples=None) -> TrainResult:
    """Train as ``config`` says. ``model``/``tokenizer``/``*_examples`` (lists of the
    objective's units: ``Tokenized`` for ``sft``) replace loading them from
    ``config.model``/``config.data`` (tests, bench, ``sftlab synth``)."""
    run = setup(config, model, tokenizer, train_examples, eval_examples)
    run_files.start_trackers(run.accelerator, config)  # not in setup: a dry run opens no tracker run
    try:
        if not (config.resume and resume(run)):
            start_fresh(run)
        loop(run)
        return finish(run)
    finally:
        run_files.end_trackers(run.accelerator)


# -- 1. setup --------------------------------------------------------------------------

def setup(config: TrainConfig, model=None, tokenizer=None, train_examples=None,
          eval_examples=None) -> Run:
    """Build the run; raises ``SftlabError`` (one line) before any step for fixable problems."""
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    run_files.check_trackers(config.report_to)
    # cpu=True when there is no GPU: accelerate only sets up multi-process CPU (gloo) then
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              cpu=not torch.cuda.is_available(), **run_files.tracker_kwargs(config))
    check_method_supported(config.method, accelerator.device.type,
                           grad_accumulation=config.grad_accumulation,
                           num_processes=accelerator.num_processes,
                           packed=config.data.packing or config.data.padding_free,
                           mixed_precision=config.mixed_precision)
    objective = OBJECTIVES.get(config.objective)(config)
    objective.check(config)
    if tokenizer is None:
        tokenizer = _load_tokenizer(config.model.name)
    padding = pad_id(tokenizer)
    if train_examples is None:  # before the model loads: a bad data file fails in seconds
        train_examples, eval_examples, summary = objective.load_data(
            tokenizer, progress=accelerator.is_main_process)
        _print(accelerator, summary)
    eval_examples = list(eval_examples or [])
    objective.check_units(train_examples, eval_examples)
    if model is None:
        model = _load_model(config)
    _check_lengths(config, model)
    # before the method changes the model: a reference is the initial model (on resume
    # too: the checkpoint's weights are loaded after setup)
    objective.setup(model, train_examples + eval_examples, accelerator=accelerator,
                    pad_id=padding)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    prepared = objective.prepare(prepare_model(model, config.method, tokenizer))
    fuse_swiglu(prepared.model)  # one [tokens, intermediate] activation fewer per layer
    fuse_rmsnorm(prepared.model)  # one [tokens, hidden] activation fewer per norm, fewer ops
    _print(accelerator, prepared.describe())
    optimizer = None if prepared.fused_backward else build_optimizer(prepared.parameters, config.optim)
    loss_module = objective.loss_module(prepared).train()
    if config.data.packing or config.data.padding_free:  # attend within each example only
        attention.enable(prepared.model)
    if config.release_memory and accelerator.device.type == "cpu":
        mmap_large_blocks()  # long sequences: big activations go back to the OS when freed
        trim_during_forward(prepared.model)
    if config.optim.in_backward:
        check_in_backward(config, accelerator, prepared)
        optimizer = InBackwardOptimizer(optimizer)  # steps itself: not handed to accelerate
        loss_module = accelerator.prepare(loss_module)
    elif optimizer is not None:
        loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    else:
        loss_module = accelerator.prepare(loss_module)
    units = objective.make_units(train_examples)
    eval_units = objective.make_units(eval_examples)
    global_batch = config.batch_size * config.grad_accumulation * accelerator.num_processes
    per_epoch = data.steps_per_epoch(len(units), global_batch, accelerator.num_processes)
    if per_epoch == 0:
        raise ConfigError(f"{len(units)} training units cannot fill one global batch of "
                          f"{global_batch} (batch_size x grad_accumulation x processes)")
    total = config.max_steps or per_epoch * config.epochs
    run = Run(config, accelerator, tokenizer, objective, prepared, loss_module, optimizer,
              train_examples, units, eval_units, padding, total, per_epoch,
              Path(config.output_dir),
              data_order_of(config, objective, train_examples, units, accelerator.num_processes))
    if accelerator.is_main_process:
        run_files.write_run_json(run)
        _print(accelerator, "mask preview (trained tokens in [[...]]):\n"
               + run_files.mask_preview(objective.preview(train_examples[0]), tokenizer))
    return run


def data_order_of(config: TrainConfig, objective: Objective, train_examples: list, units: list,
                  processes: int) -> dict:
    """What decides which units each step trains on, as plain data (saved in every
    checkpoint and compared on resume): the data (hash and counts) and the batching settings."""
    section = config.data
    return {"data_sha256": data.fingerprint(train_examples, key=objective.unit_key),
            "train_examples": len(train_examples), "train_units": len(units),
            "batch_size": config.batch_size, "grad_accumulation": config.grad_accumulation,
            "processes": processes, "seed": config.seed, "data.packing": section.packing,
            "data.padding_free": section.padding_free, "data.shuffle": section.shuffle,
            "data.group_by_length": section.group_by_length}


def _load_tokenizer(name: str):
    try:
        return load_tokenizer(name)
    except OSError as exc:  # a hub id without network, a directory without tokenizer files
        raise ConfigError(f"model.name={name!r}: cannot load its tokenizer "
                          f"({str(exc).splitlines()[0]})") from None


def _load_model(config: TrainConfig):
    """``config.model`` -> a causal LM in training mode (4-bit when the method says so)."""
    extra = model_load_kwargs(config.method)
    if extra and config.model.name != "tiny":
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(config.model.name), dtype=getattr(torch, config.model.dtype), **extra)
    else:
        model = load_model(config.model.name, dtype=config.model.dtype)
    record_base_name(model, config.model.name)  # adapters name `default` or the hub id, not a cache path
    if config.model.attn and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(config.model.attn)
    return model.train()


def _check_lengths(config: TrainConfig, model) -> None:
    limit = context_length(model)
    if limit is not None and config.data.max_length > limit:
        raise ConfigError(f"data.max_length={config.data.max_length} is above the model's "
                          f"max_position_embeddings={limit}; set data.max_length<={limit}")


def _print(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


# -- 2. resume -------------------------------------------------------------------------

def resume(run: Run) -> bool:
    """Load the newest complete checkpoint, if any (False: none, the run starts fresh); the
    metrics after its step are dropped, so every step is logged once."""
    found = checkpoint.latest_checkpoint(run.output_dir)
    if found is None:
        _print(run.accelerator, f"resume: no checkpoint in {run.output_dir}/checkpoints, starting fresh")
        return False
    state = checkpoint.read_state(found)
    check_unchanged(found, "what the data order depends on", state.get("data_order"), run.data_order)
    check_unchanged(found, "the learning-rate schedule", state.get("schedule"), schedule_of(run))
    saved = checkpoint.load_checkpoint(found, run.prepared, run.optimizer,
                                       run.accelerator.process_index)
    fields = TrainState.__dataclass_fields__
    run.state = TrainState(**{k: v for k, v in saved.items() if k in fields})
    run.history = run_files.read_metrics(run.output_dir, up_to_step=run.state.step)
    if run.accelerator.is_main_process:
        run_files.rewrite_metrics(run.output_dir, run.history)
    _print(run.accelerator, f"resumed from {found} (step {run.state.step} of {run.total_steps})")
    return True


def check_unchanged(found: Path, what: str, saved: dict | None, current: dict) -> None:
    """Refuse a resume where ``what`` (the data order's inputs: the saved order and position
    would index other units; the learning-rate schedule: the rate would jump) differs from
    the checkpoint's, so that a resumed run stays the run that was started."""
    if saved is None:  # written before checkpoints recorded it: nothing to compare
        return
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
               if saved.get(key) != value]
    if changed:
        raise ConfigError(
            f"cannot resume from {found}: {what} changed since it was saved "
            f"({'; '.join(changed)}). Fix: resume with the same data and settings as that "
            f"run, or start a new run: a new output_dir, or run without --resume (to train "
            f"longer, a new run can start from this run's saved model)")


def schedule_of(run: Run) -> dict:
    """What the learning rate of every step depends on (``optim.lr_at``), saved in every
    checkpoint and compared on resume: a longer ``max_steps`` would stretch a cosine or
    linear schedule half-way through. The step count counts only where it moves the rate
    (a constant rate with a fixed warm-up may train on for more steps)."""
    optim = run.config.optim
    schedule = {"optim.lr": optim.lr, "optim.schedule": optim.schedule,
                "optim.warmup_steps": optim.warmup_steps, "optim.warmup_ratio": optim.warmup_ratio}
    if optim.schedule != "constant" or (not optim.warmup_steps and optim.warmup_ratio):
        schedule["total_steps"] = run.total_steps
    return schedule


def start_fresh(run: Run) -> None:
    """A fresh start: the run directory's metrics and checkpoints describe this run only (an
    earlier run's files move to ``metrics.previous.jsonl`` and ``checkpoints.previous/``, so a
    later ``--resume`` cannot pick up a checkpoint of another run)."""
    if run.accelerator.is_main_process:
        for moved in (run_files.rotate_metrics(run.output_dir),
                      checkpoint.rotate_checkpoints(run.output_dir)):
            if moved is not None:
                _print(run.accelerator, f"fresh start: the earlier run's files moved to {moved}")
    run.accelerator.wait_for_everyone()


# -- 3. loop ---------------------------------------------------------------------------

def loop(run: Run) -> None:
    """Optimizer steps until ``total_steps`` (or early stopping)."""
    config, state, acc = run.config, run.state, run.accelerator
    bar = tqdm(total=run.total_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=not (config.progress and acc.is_main_process))
    window = run_files.Window(run.objective.count_key, run.objective.metric_names)
    while state.step < run.total_steps:
        started = time.perf_counter()  # batch building counts: it is part of a step's cost
        batches = run.objective.make_step_data(run, next_step_batches(run))
        stats = train_step(run, batches)
        window.add(stats, time.perf_counter() - started)
        state.step += 1
        state.step_in_epoch += 1
        state.trained_tokens += stats["tokens"]
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", tok_s=f"{window.tokens_per_s():.0f}")
        if state.step % config.log_every == 0 or state.step == run.total_steps:
            log(run, window.flush(state.step, stats))
        if config.eval_every and run.eval_units and state.step % config.eval_every == 0:
            if evaluate_and_check(run):
                _print(acc, f"early stopping at step {state.step}: eval loss did not improve "
                            f"for {config.early_stopping_patience} evals")
                break
        if config.save_every and state.step % config.save_every == 0:
            save(run)
    bar.close()


def next_step_batches(run: Run) -> list:
    """The micro-batches of the next step; starts a new epoch (new seeded order) when due."""
    state, config, acc = run.state, run.config, run.accelerator
    if not state.order or state.step_in_epoch >= run.steps_per_epoch:
        if state.order:
            state.epoch += 1
        state.step_in_epoch = 0
        global_batch = config.batch_size * config.grad_accumulation * acc.num_processes
        state.order = data.epoch_order(
            [len(u) for u in run.units], config.seed, state.epoch, shuffle=config.data.shuffle,
            group_by_length=config.data.group_by_length, global_batch=global_batch)
    return data.step_batches(
        run.units, state.order, state.step_in_epoch, batch_size=config.batch_size,
        grad_accumulation=config.grad_accumulation, rank=acc.process_index,
        world_size=acc.num_processes, pad_id=run.pad_id, padding_free=config.data.padding_free,
        make_batch=run.objective.collate)


def train_step(run: Run, batches: list) -> dict:
    """One optimizer step over this process's micro-batches.

    Loss = (sum of token losses over the step's micro-batches on all processes) /
    (labelled tokens of the whole step): counted first, so each micro-batch's backward
    already has its final weight (``sftlab.train.loss``). "Tokens" are the objective's
    units (``objective.count``: labelled tokens, pairs); ``stats["metric_sums"]`` holds its
    ``metric_names`` summed over the step's units (all processes).
    """
    acc, config, prepared, objective = run.accelerator, run.config, run.prepared, run.objective
    device = acc.device
    step_tokens = step_token_count([b.tensors for b in batches], acc, count=objective.count)
    scale = normaliser(step_tokens, acc.num_processes)
    lr = lr_at(run.state.step, run.total_steps, config.optim)
    if run.optimizer is not None:
        scheduled_lr(run.optimizer, lr)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    metric_sums = torch.zeros(len(objective.metric_names), dtype=torch.float64, device=device)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(run.loss_module)
        tensors = {k: v.to(device) for k, v in batch.tensors.items()}
        with sync, acc.autocast():
            token_loss_sum, _ = run.loss_module(**tensors)
            loss = token_loss_sum * scale
            if prepared.fused_backward is not None:
                prepared.fused_backward(loss, lr)
            else:
                acc.backward(loss)
        loss_sum += token_loss_sum.detach().double()
        if objective.metric_names:  # the micro-batch's means, weighted by its units
            metrics = acc.unwrap_model(run.loss_module).metrics
            means = torch.tensor([metrics[k] for k in objective.metric_names],
                                 dtype=torch.float64, device=device)
            metric_sums += means * objective.count(batch.tensors)
    grad_norm = _clip_and_step(run)
    total_loss = acc.reduce(loss_sum, reduction="sum") if acc.num_processes > 1 else loss_sum
    tokens = sum(b.tokens for b in batches)
    padded = sum(b.padded for b in batches)
    if acc.num_processes > 1:
        counts = acc.reduce(torch.tensor([tokens, padded], device=device), reduction="sum")
        tokens, padded = (int(x) for x in counts.tolist())
    if objective.metric_names and acc.num_processes > 1:
        metric_sums = acc.reduce(metric_sums, reduction="sum")
    return {"loss": float(total_loss) / max(step_tokens, 1), "lr": lr, "grad_norm": grad_norm,
            "tokens": tokens, "padded": padded, "labelled": step_tokens,
            "metric_sums": dict(zip(objective.metric_names, metric_sums.tolist()))}


def _clip_and_step(run: Run) -> float | None:
    """Clip the gradient norm (always measured, for the log), step, zero the gradients."""
    if run.optimizer is None or run.config.optim.in_backward:  # updated inside backward
        return None
    max_norm = run.config.optim.max_grad_norm
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    norm = run.accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(norm)


def log(run: Run, row: dict) -> None:
    run.history.append(row)
    if run.accelerator.is_main_process:
        run_files.append_metrics(run.output_dir, row)
    run_files.track(run.accelerator, row)


def evaluate(run: Run) -> float:
    """Held-out loss: sum of the units' losses / units over the whole eval set (labelled
    tokens, pairs: the objective's); the means of the objective's ``metric_names`` over the
    same units go to ``run.eval_metrics`` as ``eval_<name>`` (the reward model's held-out
    pair accuracy)."""
    acc, config, names = run.accelerator, run.config, run.objective.metric_names
    run.loss_module.eval()
    totals = torch.zeros(2 + len(names), dtype=torch.float64, device=acc.device)
    rank_units = run.eval_units[acc.process_index::acc.num_processes]
    with torch.no_grad():
        for start in range(0, len(rank_units), config.batch_size):
            batch = run.objective.collate(rank_units[start:start + config.batch_size],
                                          run.pad_id, config.data.padding_free)
            with acc.autocast():
                loss_sum, count = run.loss_module(**{k: v.to(acc.device) for k, v in batch.tensors.items()})
            metrics = acc.unwrap_model(run.loss_module).metrics if names else {}  # SFT's loss has none
            means = torch.tensor([metrics[k] for k in names], dtype=torch.float64, device=acc.device)
            totals += torch.cat([torch.stack([loss_sum.double(), count.double()]), means * count])
    run.loss_module.train()
    if acc.num_processes > 1:
        totals = acc.reduce(totals, reduction="sum")
    units = totals[1].clamp(min=1)
    run.eval_metrics = {f"eval_{k}": round(float(v / units), 6) for k, v in zip(names, totals[2:])}
    return float(totals[0] / units)


def evaluate_and_check(run: Run) -> bool:
    """Evaluate, log, track the best loss; True when early stopping should stop the run."""
    state, patience = run.state, run.config.early_stopping_patience
    loss = evaluate(run)
    log(run, {"step": state.step, "eval_loss": round(loss, 6), **run.eval_metrics})
    _print(run.accelerator, f"step {state.step}: eval loss {loss:.4f}")
    if state.best_eval is None or loss < state.best_eval:
        state.best_eval, state.evals_without_improvement = loss, 0
    else:
        state.evals_without_improvement += 1
    return bool(patience) and state.evals_without_improvement >= patience


def save(run: Run) -> Path:
    state = run.state
    return checkpoint.save_checkpoint(
        run.output_dir, state.step, run.prepared, run.optimizer,
        {**{k: getattr(state, k) for k in TrainState.__dataclass_fields__ if k != "step"},
         "data_order": run.data_order, "schedule": schedule_of(run)},
        keep_last=run.config.keep_last, accelerator=run.accelerator)


# -- 4. finish -------------------------------------------------------------------------

def finish(run: Run) -> TrainResult:
    """Final eval, the trained model (or adapter) + tokenizer, and the loss curve."""
    acc, config = run.accelerator, run.config
    eval_loss = None
    last = run.history[-1] if run.history else {}
    if run.eval_units and last.get("step") == run.state.step and "eval_loss" in last:
        eval_loss = last["eval_loss"]  # the loop just evaluated this very step
    elif run.eval_units:
        eval_loss = evaluate(run)
        log(run, {"step": run.state.step, "eval_loss": round(eval_loss, 6), **run.eval_metrics})
    attention.disable(run.prepared.model)  # the saved config names transformers' own sdpa
    saved_to = None
    if config.save_model:
        acc.wait_for_everyone()
        saved_to = run.output_dir / ("model" if run.prepared.kind == "full" else "adapter")
        if acc.is_main_process:
            save_result(run, saved_to)
            conformance_check(run, saved_to)
        acc.wait_for_everyone()
    if acc.is_main_process and config.plot:
        run_files.plot_loss(run.output_dir, run.history, run.objective.unit_name)
    losses = [row["loss"] for row in run.history if "loss" in row]
    if saved_to is not None:
        _print(acc, f"saved {saved_to}")
    return TrainResult(run.output_dir, run.state.step, losses[-1] if losses else None,
                       eval_loss, saved_to, run.history, run.prepared)


def conformance_check(run: Run, saved_to: Path) -> None:
    """``sftlab check`` on the saved result (``sftlab.infer.conformance``): the findings go to
    ``check.json`` in the run directory; a failure is printed, it does not fail the run."""
    import copy

    from sftlab.infer.conformance import check_tokenizers  # lazy: only once there is a result
    from sftlab.infer.hf import eos_ids_of
    from sftlab.models import _auto_tokenizer

    model = run.accelerator.unwrap_model(run.prepared.model)
    stop_ids = eos_ids_of(model.config, getattr(model, "generation_config", None), run.tokenizer)
    report = check_tokenizers(copy.deepcopy(run.tokenizer), _auto_tokenizer(str(saved_to)), stop_ids=sorted(stop_ids),
                              source=str(saved_to))
    report.save(run.output_dir / "check.json")
    if report.ok:
        _print(run.accelerator, f"check: passed ({sum(f.ok is True for f in report.findings)} checks; check.json)")
    else:
        lines = "\n  ".join(f.line() for f in report.failures)
        _print(run.accelerator, f"check: FAILED, the model would not be served as trained "
                                f"(check.json):\n  {lines}")


def save_result(run: Run, target: Path) -> None:
    """The trained result + tokenizer into ``target``, all or nothing: written beside it,
    then renamed into place, so a failed save leaves the previous ``target`` (or none)."""
    try:
        with checkpoint.atomic_directory(target) as tmp, checkpoint.quiet_transformers():
            run.prepared.save(tmp)
            run.tokenizer.save_pretrained(tmp)
    except Exception as error:  # any failure of a save: disk full, permissions, a library bug
        kept = f"the previous {target} is unchanged" if target.exists() else f"no {target} was written"
        hint = ("rerun with --resume to save from the last checkpoint"
                if checkpoint.latest_checkpoint(run.output_dir) else "rerun the training")
        raise SftlabError(f"saving the trained model to {target} failed ({type(error).__name__}: "
                          f"{error}); {kept}. Fix the cause (e.g. disk space), then {hint}") from error
