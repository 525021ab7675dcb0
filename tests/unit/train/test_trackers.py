"""``report_to``: TensorBoard, W&B (offline) and MLflow (file store) get the run name, the
resolved config and the same numbers as metrics.jsonl; a bad tracker fails before training."""
from __future__ import annotations

import json
import struct

import pytest

from sftlab.config import build_config
from sftlab.errors import ConfigError
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.train import run as run_files
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train
from sftlab.types import Tokenized


def _examples(count: int = 6) -> list[Tokenized]:
    return [Tokenized([1] + [5 + i, 9, 11 + i] * 3 + [2], [-100] * 5 + [9, 11 + i] + [5, 9, 11 + i, 2])
            for i in range(count)]


def _train(out, report_to, **values):
    config = build_config(TrainConfig, {
        "output_dir": str(out), "batch_size": 2, "max_steps": 3, "optim": {"lr": 0.001},
        "plot": False, "progress": False, "save_model": False, "report_to": report_to,
        "run_name": "probe-run", **values})
    train(config, model=tiny_model(), tokenizer=tiny_tokenizer(), train_examples=_examples())
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_metrics_jsonl_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = _train(tmp_path, ["tensorboard"])
    runs = list((tmp_path / "tracking" / run_files.PROJECT).glob("events.out.tfevents.*"))
    assert runs, "no event file written"
    events = EventAccumulator(str(runs[0].parent))
    events.Reload()
    scalars = {e.step: e.value for e in events.Scalars("loss")}
    assert scalars == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert sorted(scalars) == [1, 2, 3]
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(events.Tags()["scalars"])
    (hparams_file,) = (tmp_path / "tracking" / run_files.PROJECT).glob("*/hparams.yml")
    hparams = hparams_file.read_text()
    assert "run_name: probe-run" in hparams and "optim.lr: 0.001" in hparams


def test_wandb_offline_run_keeps_config_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = _train(tmp_path, ["wandb"])
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(log.read_bytes())
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("probe-run", run_files.PROJECT)
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["run_name"] == "probe-run" and config["optim.lr"] == 0.001
    losses = {r.history.step.num: json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for item in r.history.item
              if list(item.nested_key) == ["loss"] or item.key == "loss"}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)


def _wandb_records(raw: bytes) -> list:
    """The protobuf records of a W&B transaction log: a 7-byte file header, then LevelDB-log
    chunks (crc32 4, length 2, type 1: full 1, first 2, middle 3, last 4) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(raw):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", raw[position + 4:position + 7])
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_mlflow_file_store_holds_params_and_every_loss(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # so that teardown restores the environment
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # sftlab opts in for its default store
    rows = _train(tmp_path, ["mlflow"])
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(run_files.PROJECT)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "probe-run" and found.info.status == "FINISHED"
    assert found.data.params["optim.lr"] == "0.001"
    history = client.get_metric_history(found.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)


def test_unknown_or_missing_tracker_fails_before_loading(tmp_path, monkeypatch):
    config = build_config(TrainConfig, {"output_dir": str(tmp_path), "report_to": ["tensorbord"],
                                        "model": {"name": "no/such-model"}})
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*tensorboard, wandb, mlflow"):
        train(config)
    monkeypatch.setattr(run_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"sftlab\[tracking\].*wandb==0.31.0"):
        run_files.check_trackers(["wandb"])


def test_flat_config_turns_nested_sections_into_parameters():
    flat = run_files.flat_config({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "run_name": None, "seed": 3})
    assert flat == {"optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "run_name": "null", "seed": 3}
