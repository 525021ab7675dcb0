"""``objective: dpo`` end to end: preference files train through ``sftlab train`` (full and
LoRA), the loss falls and the margin grows, metrics.jsonl has every DPO metric, and bad
settings or data fail with one clear line."""
from __future__ import annotations

import json
import math

import pytest

from sftlab.config import build_config
from sftlab.errors import ConfigError, DataError
from sftlab.train.config import TrainConfig
from sftlab.train.objectives.dpo import read_dpo_pairs

METRICS = ("loss", "margin", "accuracy", "reward_chosen", "reward_rejected")


def preference_rows(n: int) -> list[dict]:
    """TRL rows (explicit prompt, strings): a fixed answer per prompt vs a repetitive one."""
    return [{"prompt": f"Write the number {i} in words.", "chosen": f"The answer is number {i}.",
             "rejected": "sun sea tree " * (1 + i % 3)} for i in range(n)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dpo_config(tmp_path, data, **settings) -> TrainConfig:
    base = {"objective": "dpo", "output_dir": str(tmp_path), "progress": False, "plot": False,
            "save_model": False, "seed": 0, "data": {"paths": [data], "max_length": 128},
            "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


@pytest.mark.parametrize("method, lr", [("full", 1e-3), ("lora", 1e-2)])
def test_a_short_run_lowers_the_loss_and_writes_the_dpo_metrics(tmp_path, tiny_tokenizer, method, lr):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    config = dpo_config(tmp_path / "run", data, batch_size=4, epochs=3,
                        **{"method.name": method, "optim.lr": lr})
    result = train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and len(result.history) == 6
    for row in rows:
        assert all(math.isfinite(row[key]) for key in METRICS), row
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.01 and rows[-1]["margin"] > 0.1
    assert rows[-1]["reward_chosen"] > rows[-1]["reward_rejected"]


def test_train_cli_objective_dpo_on_the_llamafactory_sample(tmp_path, tiny_model_dir, shared_data, capsys):
    from sftlab.cli import main

    data = shared_data / "formats" / "lf_dpo_sample.json"
    out = tmp_path / "run"
    code = main(["train", "objective=dpo", "dpo.loss_type=ipo", f"model.name={tiny_model_dir}",
                 f"data.paths=[{data}]", "data.max_length=1024", "batch_size=4", "max_steps=2",
                 "method.name=lora", f"output_dir={out}", "progress=false", "plot=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "reference log-probs of" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert train_rows[0]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)  # ipo at margin 0
    assert all(math.isfinite(train_rows[-1][key]) for key in METRICS)
    assert json.loads((out / "run.json").read_text())["config"]["dpo"]["loss_type"] == "ipo"


def test_reference_log_probs_of_the_records_are_read_or_required(tmp_path, tiny_tokenizer):
    rows = preference_rows(2)
    rows[0]["meta"] = {"ref_logp_chosen": -7.0, "ref_logp_rejected": -9.0}
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    auto, dropped = read_dpo_pairs(path, tiny_tokenizer, 128)
    assert not dropped and [(p.ref_real, p.ref_generated) for p in auto] == [(-7.0, -9.0), (None, None)]
    with pytest.raises(DataError, match=r"pairs.jsonl:2: .*no reference log-probs"):
        read_dpo_pairs(path, tiny_tokenizer, 128, require_reference=True)
    kept, dropped = read_dpo_pairs(path, tiny_tokenizer, 128, "skip", require_reference=True)
    assert len(kept) == 1 and dropped == {"bad record: no reference log-probs": 1}


@pytest.mark.parametrize("reference", ["auto", "initial"])
def test_reference_auto_keeps_the_records_and_initial_recomputes_them(tmp_path, tiny_tokenizer,
                                                                      reference):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    rows = preference_rows(4)
    for row in rows:  # a reference far from the model's: the first margin is not 0
        row["meta"] = {"ref_logp_chosen": -1.0, "ref_logp_rejected": -500.0}
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = dpo_config(tmp_path / "run", data, batch_size=4, max_steps=1,
                        **{"dpo.reference": reference})
    first = train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer).history[0]
    if reference == "initial":
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    else:
        assert first["margin"] < -100 and first["loss"] > 5


def test_too_long_pairs_are_dropped_and_counted(tmp_path, tiny_tokenizer):
    rows = preference_rows(2)
    rows[1]["prompt"] = "word " * 200
    pairs, dropped = read_dpo_pairs(write_jsonl(tmp_path / "p.jsonl", rows), tiny_tokenizer, 64)
    assert len(pairs) == 1 and sum(dropped.values()) == 1


def test_identical_pair_in_training_data_names_file_and_line(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    rows = preference_rows(3)
    rows[2]["rejected"] = rows[2]["chosen"]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl:3: field 'rejected': chosen and rejected are identical"):
        train(dpo_config(tmp_path / "run", data), model=tiny_model(seed=0), tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("setting, message", [
    ({"data.packing": True}, "objective=dpo trains pairs as padded rows"),
    ({"data.padding_free": True}, "data.padding_free=false"),
    ({"dpo.label_smoothing": 0.5}, r"dpo.label_smoothing must be in \[0, 0.5\)"),
    ({"dpo.beta": 0}, "dpo.beta must be above 0"),
    ({"dpo.loss_type": "ipo", "dpo.label_smoothing": 0.1}, "loss_type=sigmoid only"),
    ({"dpo.loss_type": "hinge"}, "hinge"),
])
def test_bad_dpo_settings_are_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        dpo_config(tmp_path, "pairs.jsonl", **setting)


def test_lomo_is_refused(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(2))
    with pytest.raises(ConfigError, match="objective=dpo needs an optimizer method"):
        train(dpo_config(tmp_path / "run", data, **{"method.name": "lomo"}), model=tiny_model(seed=0),
              tokenizer=tiny_tokenizer)
