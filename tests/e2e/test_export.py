"""`sftlab export`: a merged LoRA model gives the adapter's logits; adapter and run dirs work."""
from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.models import load_model, load_tokenizer


def _lora_run(tmp_path, tiny_tokenizer, base_name: str | None = "tiny"):
    """A run dir with adapter/ (random, non-zero B) and the tokenizer; returns (run, peft model)."""
    from peft import LoraConfig, get_peft_model

    from sftlab.models.tiny import tiny_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)  # B random, so the adapter changes the output
    peft_model = get_peft_model(tiny_model(seed=0), config)
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    run = tmp_path / "run"
    # save_embedding_layers=False: otherwise PEFT looks the base name up on the hub
    peft_model.save_pretrained(run / "adapter", save_embedding_layers=False)
    tiny_tokenizer.save_pretrained(run)
    return run, peft_model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_export_equals_adapter(tmp_path, tiny_tokenizer):
    run, peft_model = _lora_run(tmp_path, tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer("The water cycle, explained to a child!")["input_ids"]])
    base = load_model("tiny")
    assert (_logits(peft_model, ids) - _logits(base, ids)).abs().max() > 1e-3  # the adapter matters

    assert main(["export", str(run), "-o", str(tmp_path / "merged"), "--merge"]) == 0
    merged_dir = tmp_path / "merged"
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = load_model(str(merged_dir))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, ids), _logits(peft_model, ids), atol=1e-4)
    tokenizer = load_tokenizer(str(merged_dir))
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert json.loads((merged_dir / "sftlab_export.json").read_text())["merged"] is True


def test_adapter_export_and_loading_a_run_dir(tmp_path, tiny_tokenizer):
    run, peft_model = _lora_run(tmp_path, tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer("count the letters")["input_ids"]])
    assert main(["export", str(run / "adapter"), "-o", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "tokenizer_config.json").is_file()
    # the run dir itself loads as base + adapter (base named in adapter_config.json)
    for source in (run, tmp_path / "adapter"):
        model = load_model(str(source))
        assert torch.allclose(_logits(model, ids), _logits(peft_model, ids), atol=1e-5)


def test_export_needs_a_base_model_name(tmp_path, tiny_tokenizer, capsys):
    run, _ = _lora_run(tmp_path, tiny_tokenizer, base_name=None)
    assert main(["export", str(run), "-o", str(tmp_path / "out"), "--merge"]) == 2
    assert "--base" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["export", str(run), "-o", str(tmp_path / "out"), "--merge", "--base", "tiny"]) == 0


def test_export_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "-o", str(tmp_path / "x")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_bottleneck_adapter_loads_by_directory_and_refuses_merge(tmp_path):
    """An sftlab adapter saved from the tiny model reloads through load_model(adapter_dir)."""
    import torch

    from sftlab.errors import ConfigError
    from sftlab.models import load_model
    from sftlab.models.export import export_model
    from sftlab.models.tiny import tiny_model
    from sftlab.train.methods import MethodConfig, prepare_model

    prepared = prepare_model(tiny_model(), MethodConfig(name="adapter"))
    with torch.no_grad():  # make the adapters do something
        for name, parameter in prepared.model.named_parameters():
            if ".adapter." in name:
                parameter.normal_(std=0.1)
    prepared.save(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = prepared.model(ids).logits
    loaded = load_model(str(tmp_path / "adapter"))  # base found from the adapter's own file
    assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)
    assert not torch.allclose(load_model("tiny")(ids).logits, expected, atol=1e-3)
    with pytest.raises(ConfigError, match="cannot be merged"):
        export_model(tmp_path / "adapter", tmp_path / "out", merge=True)
