"""Checkpoints that survive a kill: atomic save, keep the last K, exact resume.

Layout of ``<output_dir>/checkpoints/step-000040/``::

    model/            the trained result as the method saves it (full model, PEFT adapter
                      or sftlab adapter), loadable as is
    trainable.safetensors   every trainable tensor by name (adapter methods only: what
                      resume loads; for full models ``model/`` itself is loaded)
    optimizer.pt      optimizer state_dict (absent for optimizer-free methods)
    rng-0.pt          python / numpy / torch (+cuda) RNG states of process 0 (one per process)
    state.json        {"step", "epoch", "step_in_epoch", "order", "best_eval", "lr", ...,
                       "data_order": {"data_sha256", "train_examples", "batch_size", ...},
                       "schedule": {"total_steps", "optim.lr", ...}}
                      (``data_order``: what the saved order indexes into; ``schedule``: what
                      each step's learning rate depends on; a resume with other data,
                      batching or schedule is refused, ``sftlab.train.sft.check_unchanged``)

No pickled objects: ``optimizer.pt`` and ``rng-*.pt`` hold only tensors, numbers, strings
and plain containers, and are read with ``torch.load(..., weights_only=True)``, which
refuses anything else. A checkpoint is often copied from elsewhere; with a full unpickler
``--resume`` would run whatever code a planted object's ``__reduce__`` names. A file that
needs more than plain data raises ``UnsafeCheckpointError`` and nothing of it runs.

The learning-rate schedule is a pure function of the step (``sftlab.train.sft.lr_at``),
so the step in ``state.json`` *is* the scheduler state.

Atomic: everything is written to ``.tmp-step-000040`` and renamed into place with
``os.rename`` (atomic on POSIX), so a run killed mid-save leaves either the previous
checkpoint or the complete new one, never a half-written ``step-*`` directory.
Resuming restores weights, optimizer, scheduler, RNG and data position (the epoch's order
and how many steps of it ran), which makes the rest of the run bitwise identical on CPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

from sftlab.errors import SftlabError

PREFIX = "step-"


class UnsafeCheckpointError(SftlabError):
    """A checkpoint file holds something other than tensors and plain data (a pickled
    object: possibly planted code), so it was not loaded."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir, step: int, prepared, optimizer, state: dict, *,
                    keep_last: int, accelerator) -> Path:
    """Write checkpoint ``step`` atomically; delete all but the newest ``keep_last``."""
    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with quiet_transformers():
            prepared.save(tmp / "model")
        if prepared.kind != "full":
            save_file(trainable_state(prepared.model), tmp / "trainable.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def atomic_directory(target: Path):
    """Yield an empty directory beside ``target``; when the block succeeds it is renamed to
    ``target`` (replacing an earlier one), when it raises it is removed and ``target`` stays
    as it was. A kill between the two renames leaves the earlier one as ``.old-<name>``."""
    target = Path(target)
    tmp, old = target.with_name(f".tmp-{target.name}"), target.with_name(f".old-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_transformers():
    """No "Writing model shards" bar in the middle of the training bar."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first (``.tmp-*`` leftovers of a killed save are ignored)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def rotate_checkpoints(output_dir) -> Path | None:
    """Move an earlier run's ``checkpoints/`` to ``checkpoints.previous/`` (replacing an older
    one); returns where it went, or None when there were none."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return None
    previous = root.with_name("checkpoints.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(root, previous)
    return previous


def latest_checkpoint(output_dir) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, prepared, optimizer, process_index: int = 0) -> dict:
    """Restore everything saved by ``save_checkpoint``; returns ``state.json``'s dict."""
    if hasattr(prepared, "load_full") and prepared.kind == "full":  # ppo: the value head is apart
        prepared.load_full(path / "model")
    elif prepared.kind == "full":
        load_weights(prepared.model, path / "model")
    else:
        load_trainable(prepared.model, path / "trainable.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(load_plain(path / "optimizer.pt"))
    rng_file = path / f"rng-{process_index}.pt"
    if rng_file.exists():  # a different number of processes keeps its fresh RNG
        set_rng_state(load_plain(rng_file))
    return read_state(path)


def read_state(path: Path) -> dict:
    """A checkpoint's ``state.json`` (plain JSON: read before any weights are loaded)."""
    return json.loads((path / "state.json").read_text())


def load_plain(file: Path):
    """The tensors and plain containers (dict, list, tuple, str, int, float, bool, None)
    of a ``torch.save`` file; anything that would need unpickling an object is refused.

    Raises ``UnsafeCheckpointError`` naming the file, before any of it is executed.
    """
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{file}: holds a pickled object ({_refused_global(str(error))}), not only "
            "tensors and plain data, so it was not loaded: a planted object can run code. "
            "Fix: resume from a checkpoint written by this version of sftlab, or start "
            "without --resume"
        ) from None


def _refused_global(message: str) -> str:
    """``GLOBAL builtins.open`` out of torch's long weights-only message (which also
    advises turning the check off: not advice we pass on)."""
    match = re.search(r"Unsupported global: (GLOBAL \S+)", message)
    return match.group(1) if match else "an object torch refuses to load as plain data"


def trainable_state(model) -> dict:
    """``{parameter name: tensor}`` of every parameter that trains (cloned, contiguous)."""
    return {name: p.detach().contiguous().clone()
            for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, file: Path) -> None:
    """Copy ``trainable_state`` tensors back into the parameters of the same names."""
    saved = load_file(file)
    params = dict(model.named_parameters())
    missing = [name for name in saved if name not in params]
    if missing:
        raise RuntimeError(f"checkpoint {file} names parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def load_weights(model, directory: Path) -> None:
    """Copy a ``save_pretrained`` directory's weights into ``model`` in place (its
    ``model*.safetensors`` files: others beside them, as ppo's value head, are not the model's)."""
    weights = {}
    for file in sorted(Path(directory).glob("model*.safetensors")):
        weights.update(load_file(file))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if _is_tied(model, name)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing "
                           f"{sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")


def _is_tied(model, name: str) -> bool:
    # save_pretrained drops a tied output embedding: it is the input embedding's tensor
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is not None and name.endswith("weight") and \
        head.weight is model.get_input_embeddings().weight and "lm_head" in name


def rng_state() -> dict:
    """Every RNG a training step draws from, as plain data (loads with weights_only=True).

    ``{"python": (3, (625 ints), None), "numpy": {"bit_generator": "MT19937",
    "key": [624 ints], "pos": int, "has_gauss": int, "gauss": float},
    "torch": uint8 tensor, "cuda": [uint8 tensor per device]}`` (``cuda`` only with a GPU).
    numpy's own state holds an ndarray, which only a full unpickler reads: it becomes a list.
    """
    numpy_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": numpy_state["bit_generator"],
                       "key": numpy_state["state"]["key"].tolist(),
                       "pos": int(numpy_state["state"]["pos"]),
                       "has_gauss": int(numpy_state["has_gauss"]),
                       "gauss": float(numpy_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32),
                                   "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"],
                         "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    # make the directory entries durable before and after the rename
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
