"""The math of the training loop: how examples are split into micro-batches, rows and
processes must not change what is learned.

- batch 8 x accumulation 1 == batch 1 x accumulation 8 (AdamW and SGD; float64, so the
  comparison is tight: rel 1e-9 instead of a float32 tolerance that could hide a bug)
- padding-free and bin-packed rows == padded batches
- sftlab's loss == TRL 1.16 SFTTrainer's completion-only loss on the same batch
Two processes == one process at the same global batch: tests/e2e/test_ddp.py (torchrun).
"""
from __future__ import annotations

import random

import pytest
import torch

from sftlab.config import build_config
from sftlab.types import IGNORE_INDEX, Tokenized


def synthetic_examples(n: int, seed: int = 0, vocab: int = 512) -> list[Tokenized]:
    """Prompt + response examples of 12-40 tokens; the labelled share differs per example
    (so a per-micro-batch mean would weigh tokens differently from the token-level mean)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        length = rng.randint(12, 40)
        prompt = rng.randint(3, length - 3)
        ids = [1] + [rng.randrange(4, vocab) for _ in range(length - 2)] + [2]
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append(Tokenized(ids, labels, id=f"ex{i}"))
    return examples


def run_training(tmp_path, examples, overrides: dict):
    """Train the float64 tiny model with the real loop; returns its parameters afterwards."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    settings = {"output_dir": str(tmp_path), "save_model": False, "plot": False,
                "progress": False, "seed": 0, "data": {"shuffle": False},
                "optim": {"lr": 1e-3, "schedule": "constant", "max_grad_norm": 1.0,
                          "weight_decay": 0.1}}
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (settings.setdefault(section, {}) if section else settings)[leaf] = value
    config = build_config(TrainConfig, settings)
    model = tiny_model(seed=0).double()
    result = train(config, model=model, tokenizer=tiny_tokenizer(), train_examples=examples)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result


def assert_same_parameters(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * 1e-3, msg=name)
    # the comparison is only meaningful if training changed the weights
    from sftlab.models.tiny import tiny_model

    start = dict(tiny_model(seed=0).double().named_parameters())
    moved = sum(not torch.equal(start[n].detach(), a[n]) for n in a)
    assert moved == len(a)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_batch_8_equals_batch_1_times_accumulation_8(tmp_path, optimizer):
    examples = synthetic_examples(16)
    big, r1 = run_training(tmp_path / "a", examples, {"batch_size": 8, "grad_accumulation": 1,
                                                      "max_steps": 2, "optim.name": optimizer})
    small, r2 = run_training(tmp_path / "b", examples, {"batch_size": 1, "grad_accumulation": 8,
                                                        "max_steps": 2, "optim.name": optimizer})
    assert_same_parameters(big, small, rtol=1e-9)
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r2.history], rel=1e-9)


def test_padding_free_rows_equal_padded_batches(tmp_path):
    examples = synthetic_examples(12, seed=1)
    padded, r1 = run_training(tmp_path / "a", examples, {"batch_size": 4, "max_steps": 3})
    flat, r2 = run_training(tmp_path / "b", examples, {"batch_size": 4, "max_steps": 3,
                                                       "data.padding_free": True})
    assert_same_parameters(padded, flat, rtol=1e-9)
    assert r2.history[0]["padding_fraction"] == 0.0 < r1.history[0]["padding_fraction"]


def test_bin_packed_rows_equal_padded_batches(tmp_path):
    # one step over all examples: bins regroup examples, the step must not notice
    examples = synthetic_examples(10, seed=2)
    padded, r1 = run_training(tmp_path / "a", examples, {"batch_size": 10, "max_steps": 1})
    packed, r2 = run_training(tmp_path / "b", examples, {"batch_size": 10, "max_steps": 1,
                                                         "data.packing": True,
                                                         "data.max_length": 64})
    assert_same_parameters(padded, packed, rtol=1e-9)
    assert r1.history[0]["loss"] == pytest.approx(r2.history[0]["loss"], rel=1e-12)


def test_loss_equals_trl_sft_completion_only_loss(tiny_tokenizer):
    """Same model, same batch: TRL 1.16 SFTTrainer.compute_loss vs sftlab (rel < 1e-5)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sftlab.data.collate import collate_padded
    from sftlab.models.tiny import tiny_model
    from sftlab.train.loss import CausalLMLoss

    examples = synthetic_examples(6, seed=3)
    prompt_lengths = [next(i for i, l in enumerate(e.labels) if l != IGNORE_INDEX) for e in examples]
    dataset = Dataset.from_dict({
        "input_ids": [e.input_ids for e in examples],
        "completion_mask": [[0] * p + [1] * (len(e) - p) for e, p in zip(examples, prompt_lengths)],
    })
    model = tiny_model(seed=0)
    config = SFTConfig(output_dir="/tmp/sftlab-trl-parity", use_cpu=True, report_to="none",
                       completion_only_loss=True, per_device_train_batch_size=6,
                       bf16=False, fp16=False, max_length=None, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tiny_tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(examples))]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, dict(batch)))
        ours = collate_padded(examples, pad_id=tiny_tokenizer.pad_token_id)
        assert torch.equal(ours["labels"], batch["labels"])  # TRL built the same labels
        loss_sum, count = CausalLMLoss(trainer.model)(**ours)
    ours_loss = float(loss_sum / count)
    assert abs(ours_loss - trl_loss) / trl_loss < 1e-5, (ours_loss, trl_loss)


def test_optimizer_in_backward_equals_a_normal_step(tmp_path):
    """optim.in_backward (per-parameter AdamW inside backward) == the usual step."""
    examples = synthetic_examples(12, seed=4)
    settings = {"batch_size": 4, "max_steps": 3, "optim.max_grad_norm": 0.0}
    normal, r1 = run_training(tmp_path / "a", examples, settings)
    inside, r2 = run_training(tmp_path / "b", examples, {**settings, "optim.in_backward": True})
    assert_same_parameters(normal, inside, rtol=1e-12)
    assert r2.history[-1]["grad_norm"] is None  # no global gradient exists to measure
