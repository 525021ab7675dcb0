"""``objective: spin`` through sftlab's one training loop: the first step is log 2 and the
margin grows, resume is exact, ``sftlab train`` reads what ``sftlab synth spin`` writes,
bad records and settings fail with one clear line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sftlab.config import build_config
from sftlab.errors import ConfigError, DataError
from sftlab.train.config import TrainConfig
from sftlab.train.pairwise import collate_pairs, pair_from_record, read_pairs, sequence_logps


def spin_records(n: int) -> list[dict]:
    """Pair records in ``sftlab synth spin``'s layout (no reference log-probs): a fixed
    human answer per prompt vs a repetitive 'generated' one."""
    return [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Write the number {i} in words."}],
             "chosen": [{"role": "assistant", "content": f"The answer is number {i}, my friend."}],
             "rejected": [{"role": "assistant", "content": "sun sea tree " * (1 + i % 3)}],
             "meta": {"iteration": 0}} for i in range(n)]


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def spin_config(tmp_path, **settings) -> TrainConfig:
    base = {"objective": "spin", "spin": {"beta": 0.1}, "output_dir": str(tmp_path),
            "progress": False, "plot": False, "save_model": False, "seed": 0,
            "optim": {"lr": 1e-3, "schedule": "constant"}}
    for key, value in settings.items():
        section, _, leaf = key.rpartition(".")
        (base.setdefault(section, {}) if section else base)[leaf] = value
    return build_config(TrainConfig, base)


def margins(model, pairs, pad_id) -> torch.Tensor:
    with torch.no_grad():
        logps = sequence_logps(model.eval(), collate_pairs(pairs, pad_id))
    return logps[:len(pairs)] - logps[len(pairs):]


def test_first_step_is_log2_and_the_margin_grows(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    pairs = [pair_from_record(r, tiny_tokenizer, 128)[0] for r in spin_records(8)]
    model = tiny_model(seed=0).double()
    before = margins(model, pairs, tiny_tokenizer.pad_token_id)
    result = train(spin_config(tmp_path, batch_size=4, epochs=3), model=model,
                   tokenizer=tiny_tokenizer, train_examples=pairs)
    history = result.history
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    # policy == reference (metrics.jsonl rounds to 6 decimals; references are float32)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=2e-6)
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-4) and history[0]["pairs"] == 4
    assert history[-1]["margin"] > history[2]["margin"] > 0.1 and history[-1]["loss"] < math.log(2)
    assert history[-1]["accuracy"] == 1.0
    after = margins(model, pairs, tiny_tokenizer.pad_token_id)
    assert float((after - before).mean()) > 1.0
    # the loop filled the reference with the initial model (its margin-0 point)
    torch.testing.assert_close(torch.tensor([p.ref_real - p.ref_generated for p in pairs]).double(),
                               before, rtol=0, atol=1e-4)


def test_resume_after_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path, tiny_tokenizer,
                                                                   monkeypatch, capsys):
    from sftlab.models.tiny import tiny_model
    from sftlab.train import sft

    records = spin_records(8)

    def run(out, **extra):
        model = tiny_model(seed=0)
        pairs = [pair_from_record(r, tiny_tokenizer, 128)[0] for r in records]
        config = spin_config(out, batch_size=2, grad_accumulation=1, max_steps=6, save_every=2,
                             **{"optim.schedule": "cosine", "optim.warmup_steps": 2}, **extra)
        result = sft.train(config, model=model, tokenizer=tiny_tokenizer, train_examples=pairs)
        return model, result

    straight, _ = run(tmp_path / "straight")

    class Stop(Exception):
        pass

    real_save = sft.save

    def save_then_die(r):  # the process dies right after checkpoint step 4 is on disk
        path = real_save(r)
        if r.state.step == 4:
            raise Stop
        return path

    monkeypatch.setattr(sft, "save", save_then_die)
    with pytest.raises(Stop):
        run(tmp_path / "killed")
    monkeypatch.undo()
    saved = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert saved == ["step-000002", "step-000004"]
    capsys.readouterr()
    resumed, result = run(tmp_path / "killed", resume=True)  # 8 pairs / 2: crosses an epoch
    assert "step-000004 (step 4 of 6)" in capsys.readouterr().out
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in
                     (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["margin"]) for r in rows] == [(r["loss"], r["margin"]) for r in straight_rows]
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_train_cli_on_a_spin_jsonl_writes_model_and_metrics(tmp_path, tiny_model_dir, capsys):
    from sftlab.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", spin_records(6))
    out = tmp_path / "run"
    code = main(["train", "objective=spin", f"model.name={tiny_model_dir}", f"data.paths=[{data}]",
                 "data.max_length=128", "data.eval_split=0.34", "batch_size=2", "max_steps=3",
                 "optim.lr=0.001", "save_every=2", f"output_dir={out}", "progress=false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "4 train pairs" in printed and "reference log-probs of 6 pairs" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for key in ("margin", "accuracy", "reward_real", "reward_generated", "pairs", "grad_norm"):
        assert train_rows[-1][key] is not None, key
    assert train_rows[-1]["margin"] > 0
    assert [r["step"] for r in rows if "eval_loss" in r] == [3]
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["objective"] == "spin" and info["train_examples"] == 4
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "step-000002" / "optimizer.pt").is_file()
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("line, field", [
    ('{"prompt": "hi", "chosen": "a"}', "rejected"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}', "prompt"),
    ('{"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}', "chosen"),
    ('{"prompt": "hi", "chosen": "a", "rejected": "b", "meta": {"ref_logp_chosen": -3.0}}',
     "meta.ref_logp_rejected"),
    ('{"prompt": "hi", "chosen": "a", "rejected": "b"', None),  # not JSON
])
def test_bad_record_names_file_line_and_field(tmp_path, tiny_tokenizer, line, field):
    good = json.dumps(spin_records(1)[0])
    path = write_jsonl(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(DataError) as caught:
        read_pairs(path, tiny_tokenizer, 128)
    assert (caught.value.file, caught.value.line, caught.value.field) == (path, 2, field)
    assert str(caught.value).startswith(f"{path}:2: ")
    pairs, dropped = read_pairs(path, tiny_tokenizer, 128, on_error="skip")
    assert len(pairs) == 1 and sum(dropped.values()) == 1


def test_record_reference_log_probs_are_read(tiny_tokenizer):
    record = {**spin_records(1)[0], "meta": {"ref_logp_chosen": -12.5, "ref_logp_rejected": -3}}
    pair, reason = pair_from_record(record, tiny_tokenizer, 128)
    assert reason is None and (pair.ref_real, pair.ref_generated) == (-12.5, -3.0)
    assert pair.real.labels[0] == -100 and pair.real.num_trained > 0


@pytest.mark.parametrize("setting, message", [
    ({"data.packing": True}, "data.packing=false"),
    ({"data.padding_free": True}, "data.padding_free=false"),
    ({"objective": "spinn"}, "allowed: sft, spin"),
])
def test_bad_spin_settings_are_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        spin_config(tmp_path, **setting)


def test_lomo_and_token_examples_are_refused(tmp_path, tiny_tokenizer):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train
    from sftlab.types import Tokenized

    pairs = [pair_from_record(r, tiny_tokenizer, 128)[0] for r in spin_records(2)]
    with pytest.raises(ConfigError, match="needs an optimizer method"):
        train(spin_config(tmp_path, **{"method.name": "lomo"}), model=tiny_model(),
              tokenizer=tiny_tokenizer, train_examples=pairs)
    with pytest.raises(ConfigError, match="trains Pair units; train_examples holds a Tokenized"):
        train(spin_config(tmp_path), model=tiny_model(), tokenizer=tiny_tokenizer,
              train_examples=[Tokenized([1, 5, 6], [-100, 5, 6])])


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_peft_methods_train_pairs(tmp_path, tiny_tokenizer, method):
    """LoRA starts as the identity (loss log 2); prompt tuning's virtual tokens shift the
    logits (``logit_offset``) and change the policy from the first step."""
    from sftlab.models.tiny import tiny_model
    from sftlab.train.sft import train

    pairs = [pair_from_record(r, tiny_tokenizer, 128)[0] for r in spin_records(4)]
    config = spin_config(tmp_path, batch_size=2, max_steps=3, save_model=True,
                         **{"method.name": method, "optim.lr": 0.01})
    result = train(config, model=tiny_model(), tokenizer=tiny_tokenizer, train_examples=pairs)
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    if method == "lora":
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert result.saved_to.name == "adapter" and any(result.saved_to.iterdir())
