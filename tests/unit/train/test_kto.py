"""``objective: kto`` end to end: examples/kto.yaml trains through ``sftlab train`` (LoRA,
the LLaMA-Factory sample), TRL files train with full fine-tuning and write every KTO metric,
and bad settings or data fail with one clear line naming the file, line and field."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftlab.config import build_config
from sftlab.errors import ConfigError, DataError
from sftlab.train.config import TrainConfig
from sftlab.train.objectives.kto import read_completions

REPO = Path(__file__).resolve().parents[3]
METRICS = ("loss", "kl", "reward_chosen", "reward_rejected")


def unpaired_rows(n: int) -> list[dict]:
    """TRL rows: the right number in words is desirable, a repetitive answer is not."""
    return [{"prompt": f"Write the number {i} in words.", "completion":
             f"The answer is number {i}." if i % 2 == 0 else "sun sea tree " * (1 + i % 3),
             "label": i % 2 == 0} for i in range(n)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def kto_config(tmp_path, data, **settings) -> TrainConfig:
    base = {"objective": "kto", "output_dir": str(tmp_path), "progress": False, "plot": False,
            "save_model": False, "seed": 0, "data": {"paths": [data], "max_length": 128},
            "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_the_example_config_trains_on_the_llamafactory_sample(tmp_path, monkeypatch, capsys):
    from sftlab.cli import main

    monkeypatch.chdir(REPO)  # the example names ../shared/data relative to the repository
    out = tmp_path / "run"
    code = main(["train", "examples/kto.yaml", "max_steps=2", f"output_dir={out}",
                 "progress=false", "plot=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    # one undesirable row is longer than the tiny model's 1024 positions: dropped and counted
    assert "19 train completions (7 desirable, 12 undesirable) (1 dropped" in printed
    assert "reference log-probs of 19" in printed
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["completions"] == 4
    assert all(math.isfinite(r[key]) for r in rows for key in METRICS)
    assert rows[0]["kl"] == 0.0 and rows[0]["reward_chosen"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "run.json").read_text())["config"]["kto"]["desirable_weight"] == 1.33


def test_a_short_full_run_separates_desirable_from_undesirable(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    data = write_jsonl(tmp_path / "kto.jsonl", unpaired_rows(8))
    config = kto_config(tmp_path / "run", data, batch_size=4, epochs=4)
    result = train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    rows = metric_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 9)) and len(result.history) == 8
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference: 1 - σ(0)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.01
    assert rows[-1]["reward_chosen"] > rows[-1]["reward_rejected"]


def test_mismatched_rows_pair_each_prompt_with_the_next_rows_completion(tmp_path, tiny_tokenizer):
    units, dropped = read_completions(write_jsonl(tmp_path / "k.jsonl", unpaired_rows(3)),
                                      tiny_tokenizer, 128)
    assert not dropped and [u.desirable for u in units] == [True, False, True]
    for i, unit in enumerate(units):
        other = units[(i + 1) % 3].example
        text = tiny_tokenizer.decode(unit.mismatched.input_ids)
        assert f"number {i} in words" in text
        trained = [t for t, label in zip(unit.mismatched.input_ids, unit.mismatched.labels) if label != -100]
        assert trained == [t for t, label in zip(other.input_ids, other.labels) if label != -100]


def test_a_bad_label_in_training_data_names_file_line_and_field(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    rows = unpaired_rows(3)
    rows[1]["label"] = "yes"
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    with pytest.raises(DataError, match=r"kto.jsonl:2: field 'label': must be true or false"):
        train(kto_config(tmp_path / "run", data), model=tiny_model(seed=0), tokenizer=tiny_tokenizer)


def test_a_pair_file_given_to_kto_says_to_use_dpo(tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: not an unpaired row.*objective=dpo"):
        read_completions(data, tiny_tokenizer, 128)


@pytest.mark.parametrize("setting, message", [
    ({"data.packing": True}, "objective=kto trains completions as padded rows"),
    ({"kto.beta": 0}, "kto.beta must be above 0"),
    ({"kto.undesirable_weight": -1.0}, "kto.undesirable_weight must be above 0"),
])
def test_bad_kto_settings_are_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        kto_config(tmp_path, "kto.jsonl", **setting)
