"""SPIN end to end on the tiny model: generation with θ_t, frozen reference, training, resume."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sftlab.config import build_config
from sftlab.synth import spin
from sftlab.errors import ConfigError
from sftlab.models import load_model, load_tokenizer
from sftlab.train.pairwise import collate_pairs, sequence_logps


def _config(tmp_path, shared_data, iterations=1):
    return build_config(spin.SpinConfig, {}, [
        "model=tiny", f"data={shared_data / 'formats' / 'alpaca_en_demo.json'}", "limit=8",
        f"output={tmp_path / 'pairs.jsonl'}", f"output_dir={tmp_path / 'spin'}",
        f"iterations={iterations}", "generation.max_new_tokens=12", "train.max_length=96",
        "train.epochs=3", "train.batch_size=4", "train.optim.lr=0.001", "train.optim.schedule=constant",
        "train.optim.warmup_ratio=0.0", "progress=false"])


def _logps(model, tokenizer, records):
    """θ's log-probs of (chosen, rejected) for each record, as the pipeline tokenizes them."""
    pairs = [spin._pair(r, tokenizer, 96, None) for r in records]
    with torch.no_grad():
        logps = sequence_logps(model.eval(), collate_pairs(pairs, tokenizer.pad_token_id))
    return logps[:len(pairs)], logps[len(pairs):]


def test_spin_iteration_widens_margin_against_frozen_reference_and_resumes(tmp_path, shared_data,
                                                                           capsys):
    config = _config(tmp_path, shared_data)
    report = spin.run(config)
    records = [json.loads(line) for line in open(config.output)]
    assert report.written == len(records) == 8 and report.requests == 8
    assert {r["meta"]["iteration"] for r in records} == {0}
    assert all(r["meta"]["provenance"]["pipeline"] == "spin" for r in records)

    tokenizer = load_tokenizer("tiny")
    theta0 = load_model("tiny")
    # the generated side is θ_0's greedy answer to the prompt
    from sftlab.infer.base import SamplingConfig
    from sftlab.infer.hf import HFGenerator
    from sftlab.types import Message

    prompt = [Message(m["role"], m["content"]) for m in records[0]["prompt"]]
    greedy = HFGenerator(theta0, tokenizer).generate([prompt], SamplingConfig(max_new_tokens=12))[0]
    assert records[0]["rejected"][0]["content"] == greedy.text.strip()

    # the stored reference log-probs are θ_0's: the reference was frozen at θ_0
    real0, gen0 = _logps(theta0, tokenizer, records)
    ref_real = torch.tensor([r["meta"]["ref_logp_chosen"] for r in records])
    ref_gen = torch.tensor([r["meta"]["ref_logp_rejected"] for r in records])
    assert torch.allclose(real0, ref_real, atol=1e-3) and torch.allclose(gen0, ref_gen, atol=1e-3)

    # θ_1 separates real from generated better than θ_0 did
    summary = report.extra["iterations"][0]
    assert summary["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    theta1 = load_model(str(tmp_path / "spin" / "iter_1"))
    real1, gen1 = _logps(theta1, tokenizer, records)
    assert float(((real1 - gen1) - (real0 - gen0)).mean()) > 0.5
    assert summary["last_loss"] < math.log(2)

    # trained by sftlab's one loop: its run files sit beside the iteration's model
    rows = [json.loads(line) for line in open(tmp_path / "spin" / "iter_1" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[-1]["pairs"] == 4
    assert rows[-1]["margin"] == summary["last_margin"] > 0
    run_info = json.loads((tmp_path / "spin" / "iter_1" / "run.json").read_text())
    assert run_info["config"]["objective"] == "spin" and run_info["train_examples"] == 8

    # `sftlab train` trains on the pairs file as written: its stored reference is θ_0's,
    # so the first step's loss against it is log 2
    from sftlab.cli import main

    out = tmp_path / "cli"
    capsys.readouterr()
    assert main(["train", "objective=spin", "model.name=tiny", f"data.paths=[{config.output}]",
                 "data.max_length=96", "batch_size=4", "max_steps=2", "optim.lr=0.001",
                 "save_model=false", "plot=false", "progress=false", f"output_dir={out}"]) == 0
    assert "reference log-probs of" not in capsys.readouterr().out  # read from meta
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and first["pairs"] == 4

    # rerun: nothing generated or trained again
    weights = (tmp_path / "spin" / "iter_1" / "model.safetensors").stat().st_mtime_ns
    again = spin.run(config)
    assert again.written == 0 and again.requests == 0 and again.total == 8
    assert (tmp_path / "spin" / "iter_1" / "model.safetensors").stat().st_mtime_ns == weights


def test_second_iteration_uses_theta1_as_generator_and_reference(tmp_path, shared_data):
    spin.run(_config(tmp_path, shared_data, iterations=1))
    report = spin.run(_config(tmp_path, shared_data, iterations=2))  # continue from iter_1
    assert report.written == 8 and (tmp_path / "spin" / "iter_2" / spin.MARKER).exists()
    records = [json.loads(line) for line in open(tmp_path / "pairs.jsonl")]
    second = [r for r in records if r["meta"]["iteration"] == 1]
    theta1 = load_model(str(tmp_path / "spin" / "iter_1"))
    real, gen = _logps(theta1, load_tokenizer("tiny"), second)
    assert torch.allclose(real, torch.tensor([r["meta"]["ref_logp_chosen"] for r in second]), atol=1e-3)
    assert torch.allclose(gen, torch.tensor([r["meta"]["ref_logp_rejected"] for r in second]), atol=1e-3)


def test_unmergeable_method_is_a_config_error():
    with pytest.raises(ConfigError, match="full model every iteration"):
        build_config(spin.SpinConfig, {}, ["train.method.name=prompt"])


SFT_ROWS = [{"instruction": "Name a colour.", "output": "Blue."}, {"instruction": "Name a fruit.", "output": "A pear."},
            {"instruction": "Name a colour.", "output": "Blue."}, {"id": "own", "instruction": "Say hi.", "output": "Hi."}]


def _sft_file(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_pairs_resume_when_the_data_file_is_prepended_to_renamed_or_reordered(tmp_path, monkeypatch):
    """Conversations without an id were keyed by <file stem>-<index>: a line added on top, or a
    renamed file, generated (and trained on) every pair again."""
    from sftlab.synth.base import SynthReport
    from sftlab.synth.store import RecordStore

    def examples(path):
        return spin.sft_examples(build_config(spin.SpinConfig, {}, [f"data={path}"]), SynthReport("spin"))

    config = build_config(spin.SpinConfig, {}, [f"data={_sft_file(tmp_path / 'sft.jsonl', SFT_ROWS)}"])
    first = examples(config.data)
    keys = [e[3] for e in first]
    assert keys[3] == "own" and keys[2] == f"{keys[0]}-1" and len(set(keys)) == 4
    moved = _sft_file(tmp_path / "renamed.jsonl", [{"instruction": "New.", "output": "Yes."}] + SFT_ROWS)
    assert [e[3] for e in examples(moved)][1:] == keys

    # pairs stored from the first file; rerun on a reordered, renamed file: none generated again
    with RecordStore(tmp_path / "pairs.jsonl") as store:
        for example in first:
            example_id, prompt, real, _ = example
            store.write({"id": spin._record_id(config, 0, example), "prompt": [m.to_dict() for m in prompt],
                         "chosen": [{"role": "assistant", "content": real}],
                         "rejected": [{"role": "assistant", "content": "Gen."}],
                         "meta": {"iteration": 0, "example_id": example_id}})
    monkeypatch.setattr(spin, "load_model", lambda *a, **k: pytest.fail("a pair was generated again"))
    reordered = _sft_file(tmp_path / "reordered.jsonl", SFT_ROWS[::-1])
    report = SynthReport("spin")
    with RecordStore(tmp_path / "pairs.jsonl") as store:
        pairs = spin.iteration_pairs(config, 0, "tiny", load_tokenizer("tiny"), examples(reordered), store, report)
    assert report.written == 0 and len(pairs) == 4
