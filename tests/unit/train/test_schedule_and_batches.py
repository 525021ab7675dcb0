"""Learning-rate schedules and how an epoch is cut into steps, micro-batches and processes."""
from __future__ import annotations

import pytest

from sftlab.train.config import OptimSection
from sftlab.train.data import epoch_order, step_batches, steps_per_epoch
from sftlab.train.optim import lr_at
from sftlab.types import Tokenized


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627]),
])
def test_warmup_then_schedule(schedule, expected):
    # warm-up step s gets lr * (s + 1) / warmup (no wasted zero-lr step); the first step
    # after warm-up gets the full lr
    optim = OptimSection(lr=1.0, warmup_steps=2, schedule=schedule)
    assert [lr_at(step, 6, optim) for step in range(6)] == pytest.approx(expected)


def test_warmup_ratio_rounds_up():
    optim = OptimSection(lr=1.0, warmup_ratio=0.1, schedule="constant")
    assert lr_at(0, 15, optim) == pytest.approx(0.5)  # ceil(1.5) = 2 warm-up steps


def test_epoch_order_is_seeded_and_a_permutation():
    lengths = list(range(10, 30))
    a = epoch_order(lengths, seed=1, epoch=0)
    assert sorted(a) == list(range(20))
    assert a == epoch_order(lengths, seed=1, epoch=0)
    assert a != epoch_order(lengths, seed=1, epoch=1) != epoch_order(lengths, seed=2, epoch=0)
    assert epoch_order(lengths, seed=1, epoch=0, shuffle=False) == list(range(20))


def test_group_by_length_makes_batches_of_similar_length():
    lengths = [5, 100] * 8
    order = epoch_order(lengths, seed=0, epoch=0, group_by_length=True, global_batch=4)
    batches = [order[i:i + 4] for i in range(0, 16, 4)]
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)


def test_each_process_gets_its_own_slice_of_the_step():
    units = [Tokenized([1, 5 + i, 2], [-100, 5 + i, 2]) for i in range(8)]
    order = list(range(8))
    seen = []
    for rank in range(2):
        batches = step_batches(units, order, 0, batch_size=2, grad_accumulation=2, rank=rank,
                               world_size=2, pad_id=3)
        assert len(batches) == 2
        seen += [int(t) for b in batches for t in b.tensors["input_ids"][:, 1]]
    assert seen == [5 + i for i in range(8)]  # every unit of the step once
    assert steps_per_epoch(9, 8, world_size=2) == 1  # partial step dropped with 2 processes
    assert steps_per_epoch(9, 8, world_size=1) == 2


def test_padding_free_batch_is_one_row_without_padding():
    units = [Tokenized([1, 5, 6, 2], [-100, -100, 6, 2]), Tokenized([1, 7, 2], [-100, 7, 2])]
    (batch,) = step_batches(units, [0, 1], 0, batch_size=2, grad_accumulation=1, rank=0,
                            world_size=1, pad_id=3, padding_free=True)
    assert batch.tensors["input_ids"].tolist() == [[1, 5, 6, 2, 1, 7, 2]]
    assert batch.tensors["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch.tokens == batch.padded == 7


def test_early_stopping_stops_after_patience_evals_without_improvement(tmp_path, tiny_tokenizer):
    """lr 0: the eval loss never improves after the first eval, so patience 2 stops at step 3."""
    from sftlab.config import build_config
    from sftlab.models.tiny import tiny_model
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train

    examples = [Tokenized([1] + [5 + i, 9, 11 + i] * 3 + [2], [-100] * 5 + [9, 11 + i] + [5, 9, 11 + i, 2])
                for i in range(8)]
    config = build_config(TrainConfig, {
        "output_dir": str(tmp_path), "batch_size": 2, "max_steps": 20, "eval_every": 1,
        "early_stopping_patience": 2, "optim": {"lr": 0.0}, "save_model": False,
        "plot": False, "progress": False})
    result = train(config, model=tiny_model(), tokenizer=tiny_tokenizer,
                   train_examples=examples[:6], eval_examples=examples[6:])
    assert result.steps == 3
    assert [r["step"] for r in result.history if "eval_loss" in r] == [1, 2, 3]
