"""`sftlab train` end to end on the tiny model and real Alpaca data: outputs the ecosystem
loads, the run directory's provenance, and one-line errors before training."""
from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main


def _args(shared_data, out, *extra):
    return ["train", f"data.paths={shared_data / 'formats' / 'alpaca_en_demo.json'}",
            "data.limit=24", "data.max_length=128", "batch_size=4", "max_steps=3",
            f"output_dir={out}", "progress=false", *extra]


def test_full_run_writes_a_loadable_model_and_provenance(shared_data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    code = main(_args(shared_data, out, "data.eval_split=0.2", "eval_every=2", "save_every=2",
                      "optim.lr=0.001"))
    printed = capsys.readouterr().out
    assert code == 0
    assert "training 139,584 of 139,584 parameters (100.0000%)" in printed
    assert "[[" in printed  # the mask preview, trained tokens marked
    info = json.loads((out / "run.json").read_text())
    for key in ("config", "versions", "git_revision", "chat_template_sha256", "data_fingerprint", "seed"):
        assert key in info, key
    assert info["config"]["optim"]["lr"] == 0.001 and len(info["data_fingerprint"]) == 64
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in ("lr", "grad_norm", "tokens_per_s", "peak_memory_mb", "padding_fraction"):
        assert train_rows[-1][key] is not None, key
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 3]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "step-000002" / "optimizer.pt").is_file()

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], return_tensors="pt",
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    assert model(ids).logits.shape[-1] == 512


def test_lora_run_writes_a_peft_adapter(shared_data, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    assert main(_args(shared_data, out, f"model.name={tiny_model_dir}", "method.name=lora",
                      "optim.lr=0.01")) == 0
    info = json.loads((out / "run.json").read_text())
    assert 0 < info["trainable_percent"] < 100
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = base(torch.tensor([[1, 7, 9]])).logits
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    after = tuned(torch.tensor([[1, 7, 9]])).logits
    assert not torch.allclose(before, after)  # the adapter learned something and loads
    assert (out / "adapter" / "tokenizer_config.json").is_file()
    # train-to-serve: the run checked itself, and `sftlab check` agrees until the template is tampered with
    assert json.loads((out / "check.json").read_text())["ok"] is True
    assert main(["check", str(out)]) == 0
    config = out / "adapter" / "tokenizer_config.json"
    template_file = out / "adapter" / "chat_template.jinja"
    if template_file.is_file():
        template_file.write_text(template_file.read_text().replace("'<|im_start|>'", "'<|im_start|> '"))
    else:
        data = json.loads(config.read_text())
        data["chat_template"] = data["chat_template"].replace("'<|im_start|>'", "'<|im_start|> '")
        config.write_text(json.dumps(data))
    assert main(["check", str(out)]) == 1


@pytest.mark.parametrize("extra, message", [
    (["model.name=/no/such/model"], "does not exist"),
    (["data.max_length=4096"], "max_position_embeddings=1024"),
    (["data.max_length=3"], "no trainable example"),
    (["optim.rl=0.1"], "did you mean 'optim.lr'"),
])
def test_user_errors_are_one_line_before_training(shared_data, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(_args(shared_data, out, *extra)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: progress bars
    assert last.startswith("error:") and message in last
    assert not (out / "metrics.jsonl").exists()
