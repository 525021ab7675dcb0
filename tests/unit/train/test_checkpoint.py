"""Checkpoints: atomic, keep the last K, restore weights / optimizer / RNG / data position."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlab.models.tiny import tiny_model
from sftlab.train import checkpoint
from sftlab.train.methods import MethodConfig, prepare_model


class _Accelerator:
    """The three things save_checkpoint asks of accelerate, for one process."""

    is_main_process = True
    process_index = 0

    def wait_for_everyone(self):
        pass


def _prepared(method="full"):
    return prepare_model(tiny_model(seed=0), MethodConfig(name=method))


def _train_one_step(prepared):
    optimizer = torch.optim.AdamW(prepared.parameters, lr=1e-2)
    ids = torch.randint(4, 512, (2, 9))
    prepared.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("method", ["full", "lora"])
def test_save_then_load_restores_weights_optimizer_rng_and_state(tmp_path, method):
    prepared = _prepared(method)
    optimizer = _train_one_step(prepared)
    torch.manual_seed(5); random.seed(5); np.random.seed(5)
    path = checkpoint.save_checkpoint(tmp_path, 7, prepared, optimizer,
                                      {"epoch": 1, "order": [3, 1, 2]}, keep_last=2,
                                      accelerator=_Accelerator())
    assert path.name == "step-000007" and (path / "model").is_dir()
    expected_draws = (torch.rand(3), random.random(), np.random.rand())
    saved = {n: p.detach().clone() for n, p in prepared.model.named_parameters()}

    fresh = _prepared(method)  # different weights (LoRA: fresh B is zero) and optimizer
    fresh_optimizer = torch.optim.AdamW(fresh.parameters, lr=1e-2)
    state = checkpoint.load_checkpoint(path, fresh, fresh_optimizer)
    assert state == {"step": 7, "epoch": 1, "order": [3, 1, 2]}
    for name, param in fresh.model.named_parameters():
        assert torch.equal(param, saved[name]), name
    # the RNGs continue exactly where they were at save time
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert (random.random(), np.random.rand()) == expected_draws[1:]
    first = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], first)


def test_keep_last_and_ignore_half_written(tmp_path):
    prepared = _prepared("full")
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, step, prepared, None, {}, keep_last=2,
                                   accelerator=_Accelerator())
    # a save killed before its rename leaves only a .tmp directory: never picked up
    (checkpoint.checkpoint_dir(tmp_path) / ".tmp-step-000004").mkdir()
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step-000002", "step-000003"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000003"
    assert checkpoint.latest_checkpoint(tmp_path / "nothing") is None


def test_checkpoint_model_dir_loads_with_transformers(tmp_path):
    prepared = _prepared("full")
    path = checkpoint.save_checkpoint(tmp_path, 1, prepared, None, {}, keep_last=1,
                                      accelerator=_Accelerator())
    loaded = AutoModelForCausalLM.from_pretrained(path / "model")
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, prepared.model(ids).logits)


class _Planted:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("planted_in", ["optimizer.pt", "rng-0.pt"])
def test_resume_refuses_a_pickle_planted_in_a_checkpoint(tmp_path, planted_in):
    prepared = _prepared("full")
    optimizer = _train_one_step(prepared)
    path = checkpoint.save_checkpoint(tmp_path / "run", 1, prepared, optimizer, {},
                                      keep_last=1, accelerator=_Accelerator())
    # the payload is live: a full unpickler runs it
    probe = tmp_path / "probe"
    torch.save({"x": _Planted(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    marker = tmp_path / "marker"
    saved = torch.load(path / planted_in, weights_only=True)  # what we wrote is plain data
    torch.save({**saved, "extra": _Planted(marker)}, path / planted_in)
    fresh = _prepared("full")
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=planted_in):
        checkpoint.load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters, lr=1e-2))
    assert not marker.exists()
