"""Resolving names, paths, run dirs and adapters; the `sftlab models` listing."""
from __future__ import annotations

import json

import pytest
import torch

from sftlab.cli import main
from sftlab.models import (ModelNotFoundError, available_models, load_model, load_tokenizer,
                           resolve_adapter, resolve_model)


def test_model_dir_and_run_dir_resolve(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert resolve_model(str(run)) == str(run / "model")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a dot is not a file suffix


@pytest.mark.parametrize("name", ["./missing", "/no/such/dir", "a/b/c"])
def test_missing_paths_are_clear_errors(name):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(name)


def test_dir_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        resolve_adapter(tmp_path)


def test_saved_tiny_dir_loads_like_tiny(tiny_model_dir, tiny_model):
    model = load_model(str(tiny_model_dir))
    ids = torch.tensor([[4, 9, 30, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert not model.training
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_bf16_and_bad_dtype():
    from sftlab.errors import ConfigError

    assert load_model("tiny", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        load_model("tiny", dtype="float8")


def test_adapter_on_a_model_dir(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load_model(str(tiny_model_dir)),
                                LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "run" / "adapter", save_embedding_layers=False)
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    ids = torch.tensor([[4, 9, 30]])
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
        for model in (load_model(str(tiny_model_dir), adapter=tmp_path / "run"), load_model(str(tmp_path / "run"))):
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-6)


def test_models_listing(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    rows = {r["name"]: r for r in available_models()}
    assert rows["default"]["status"].startswith("not converted") and rows["tiny"]["status"].startswith("ready")
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "tiny" in out and "mine" in out


def test_full_run_dir_with_tokenizer_at_the_top(tmp_path, tiny_model, tiny_tokenizer):
    run = tmp_path / "run"
    tiny_model.save_pretrained(run / "model")
    tiny_tokenizer.save_pretrained(run)
    ids = torch.tensor([[4, 9, 30]])
    with torch.no_grad():
        assert torch.equal(load_model(str(run))(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert load_tokenizer(str(run)).chat_template == tiny_tokenizer.chat_template


def test_a_name_that_fails_as_a_hub_id_says_it_is_no_local_directory_either(monkeypatch):
    from transformers import AutoModelForCausalLM

    def unreachable(*args, **kwargs):  # what transformers raises without a network
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", unreachable)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # online: the hub is tried, and fails
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelNotFoundError, match="couldn't connect.*'my-modle' is not a local directory "
                                                 "either.*HF_HUB_OFFLINE=1"):
        load_model("my-modle")
