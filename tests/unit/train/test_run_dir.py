"""The run directory stays consistent: one run's metrics, an all-or-nothing model/, and a
resume that refuses other data or batching instead of indexing past the data."""
from __future__ import annotations

import json
import shutil

import pytest

from sftlab.config import build_config
from sftlab.errors import ConfigError, SftlabError
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.train import checkpoint
from sftlab.train.config import TrainConfig
from sftlab.train.methods import Prepared
from sftlab.train.sft import train
from sftlab.types import Tokenized


def _examples(count: int = 8) -> list[Tokenized]:
    return [Tokenized([1] + [5 + i, 9, 11 + i] * 3 + [2], [-100] * 5 + [9, 11 + i] + [5, 9, 11 + i, 2])
            for i in range(count)]


def _config(out, **values) -> TrainConfig:
    return build_config(TrainConfig, {
        "output_dir": str(out), "batch_size": 2, "max_steps": 4, "save_every": 2, "keep_last": 2,
        "optim": {"lr": 0.001}, "plot": False, "progress": False, **values})


def _train(config, examples=None):
    return train(config, model=tiny_model(), tokenizer=tiny_tokenizer(),
                 train_examples=examples or _examples())


def _steps(out) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_resume_without_checkpoint_starts_a_fresh_metrics_file(tmp_path):
    _train(_config(tmp_path, save_model=False))
    assert _steps(tmp_path) == [1, 2, 3, 4]
    shutil.rmtree(checkpoint.checkpoint_dir(tmp_path))
    _train(_config(tmp_path, save_model=False, resume=True))
    assert _steps(tmp_path) == [1, 2, 3, 4]
    previous = [json.loads(line)["step"] for line in (tmp_path / "metrics.previous.jsonl").open()]
    assert previous == [1, 2, 3, 4]


def test_real_resume_logs_each_step_once(tmp_path):
    _train(_config(tmp_path, save_model=False))
    shutil.rmtree(checkpoint.latest_checkpoint(tmp_path))  # as if killed after logging 3 and 4
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000002"
    _train(_config(tmp_path, save_model=False, resume=True))
    assert _steps(tmp_path) == [1, 2, 3, 4]


def test_resume_with_a_longer_schedule_is_refused(tmp_path):
    _train(_config(tmp_path, save_model=False, max_steps=2))  # cosine: the rate depends on max_steps
    with pytest.raises(ConfigError, match="learning-rate schedule changed .*total_steps 2 -> 3"):
        _train(_config(tmp_path, save_model=False, max_steps=3, resume=True))
    with pytest.raises(ConfigError, match="optim.lr 0.001 -> 0.002"):
        _train(_config(tmp_path, save_model=False, resume=True, optim={"lr": 0.002}))


def test_a_constant_rate_may_train_on_after_a_resume(tmp_path):
    constant = {"lr": 0.001, "schedule": "constant"}
    _train(_config(tmp_path, save_model=False, max_steps=2, optim=constant))
    _train(_config(tmp_path, save_model=False, max_steps=4, resume=True, optim=constant))
    assert _steps(tmp_path) == [1, 2, 3, 4]


@pytest.mark.parametrize("change, expected", [
    ({"batch_size": 4}, "batch_size 2 -> 4"),
    ({"seed": 7}, "seed 0 -> 7"),
    ({"examples": 6}, "train_examples 8 -> 6"),
])
def test_resume_with_other_data_or_batching_says_what_changed(tmp_path, change, expected):
    _train(_config(tmp_path, save_model=False, max_steps=2))
    examples = _examples(change.pop("examples", 8))
    with pytest.raises(ConfigError, match="cannot resume") as error:
        _train(_config(tmp_path, save_model=False, resume=True, **change), examples)
    assert expected in str(error.value) and "new output_dir" in str(error.value)
    state = json.loads((checkpoint.latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["data_order"]["train_examples"] == 8 and len(state["data_order"]["data_sha256"]) == 64


def test_changed_content_of_the_same_size_is_refused(tmp_path):
    _train(_config(tmp_path, save_model=False, max_steps=2))
    other = _examples(9)[1:]
    with pytest.raises(ConfigError, match="data_sha256"):
        _train(_config(tmp_path, save_model=False, resume=True), other)


def test_failed_final_save_leaves_the_previous_model_intact(tmp_path, monkeypatch):
    _train(_config(tmp_path))
    model_dir = tmp_path / "model"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    real_save = Prepared.save

    def save_then_fail(self, path):  # the final save only: the checkpoints are written
        real_save(self, path)
        if path.name == ".tmp-model":
            (path / "extra.bin").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Prepared, "save", save_then_fail)
    with pytest.raises(SftlabError, match="saving the trained model .* failed .*No space left") as error:
        _train(_config(tmp_path, max_steps=6))
    assert "is unchanged" in str(error.value) and "--resume" in str(error.value)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_first_save_leaves_no_model_dir(tmp_path, monkeypatch):
    def fail(self, path):
        (path / "config.json").write_text("{")
        raise RuntimeError("boom")

    monkeypatch.setattr(Prepared, "save", fail)
    with pytest.raises(SftlabError, match="no .*model was written"):
        _train(_config(tmp_path, save_every=0))
    assert not (tmp_path / "model").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
