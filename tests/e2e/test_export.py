"""`sftlab export`: a merged LoRA model gives the adapter's logits; adapter and run dirs work."""
from __future__ import annotations

import json

import pytest

from sftlab.data.template_fallbacks import with_fallbacks
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
    assert tokenizer.chat_template == with_fallbacks(tiny_tokenizer.chat_template)  # as sftlab saves it
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


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_merge_of_a_prompt_or_prefix_adapter_is_a_clear_error(tmp_path, tiny_tokenizer, capsys, method):
    from sftlab.models.tiny import tiny_model
    from sftlab.train.methods import MethodConfig, prepare_model

    prepared = prepare_model(tiny_model(seed=0), MethodConfig(name=method), tiny_tokenizer)
    prepared.model.peft_config["default"].base_model_name_or_path = "tiny"
    prepared.save(tmp_path / "run" / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "cannot be merged" in err and "without --merge" in err and "LoRA" in err
    assert "TUNING" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapter_config.json").is_file()


# -- GGUF and Ollama ------------------------------------------------------------------------

# max |logit difference| to the adapter's own logits, per GGUF type (measured on this tiny
# LoRA model: f32 0, f16 ~2e-4, q8_0 ~7e-3; logits are ~0.6 in size)
GGUF_TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 5e-2}


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_gguf_export_loads_back_into_transformers(tmp_path, tiny_tokenizer, gguf_type):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, peft_model = _lora_run(tmp_path, tiny_tokenizer)
    out = tmp_path / "exported"
    assert main(["export", str(run), "-o", str(out), "--gguf", "--gguf-type", gguf_type]) == 0
    gguf_file = f"exported-{gguf_type}.gguf"
    info = json.loads((out / "sftlab_export.json").read_text())
    assert info["gguf"] == f"gguf/{gguf_file}" and info["merged"] is True and info["stop_tokens"] == ["<|im_end|>"]
    model = AutoModelForCausalLM.from_pretrained(out / "gguf", gguf_file=gguf_file, dtype=torch.float32)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count 3 words!"}]
    ids = torch.tensor([tiny_tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                           return_dict=True)["input_ids"]])
    difference = (_logits(model, ids) - _logits(peft_model, ids)).abs().max().item()
    assert difference <= GGUF_TOLERANCE[gguf_type]

    tokenizer = AutoTokenizer.from_pretrained(out / "gguf", gguf_file=gguf_file)
    assert tokenizer.chat_template == with_fallbacks(tiny_tokenizer.chat_template)  # as sftlab saves it
    text = tiny_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_start|>", "<pad>")
    fields = GGUFReader(str(out / "gguf" / gguf_file)).fields
    assert fields["tokenizer.ggml.eot_token_id"].contents() == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_gguf_sizes_shrink_with_the_type(tmp_path, tiny_model_dir):
    sizes = {}
    for gguf_type in ("f32", "f16", "q8_0"):
        out = tmp_path / gguf_type
        assert main(["export", str(tiny_model_dir), "-o", str(out), "--gguf", "--gguf-type", gguf_type]) == 0
        sizes[gguf_type] = (out / "gguf" / f"{gguf_type}-{gguf_type}.gguf").stat().st_size
    assert sizes["f32"] > 1.9 * sizes["f16"] > 1.9 * 1.7 * sizes["q8_0"]


def test_merge_of_a_whole_model_says_it_changes_nothing(tmp_path, tiny_model_dir, capsys):
    assert main(["export", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--merge"]) == 0
    assert "--merge changes nothing here" in capsys.readouterr().err
    assert main(["export", str(tiny_model_dir), "-o", str(tmp_path / "plain")]) == 0
    assert "--merge" not in capsys.readouterr().err


def test_ollama_modelfile_renders_like_the_chat_template(tmp_path, tiny_tokenizer):
    from sftlab.models.ollama import render_go

    run, _ = _lora_run(tmp_path, tiny_tokenizer)
    out = tmp_path / "exported"
    assert main(["export", str(run), "-o", str(out), "--gguf", "--ollama", "--system", "Be brief."]) == 0
    text = (out / "gguf" / "Modelfile").read_text()
    assert text.splitlines()[0] == "FROM ./exported-f16.gguf" and (out / "gguf" / "exported-f16.gguf").is_file()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert [line for line in text.splitlines() if line.startswith("PARAMETER")] == ['PARAMETER stop "<|im_end|>"']
    assert text.endswith('SYSTEM """Be brief."""\n')
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count to 3."}]
    expected = tiny_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert render_go(template, conversation) == expected
    assert expected.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n")


def test_ollama_needs_gguf_and_a_known_template(tmp_path, tiny_model_dir, capsys):
    assert main(["export", str(tiny_model_dir), "-o", str(tmp_path / "a"), "--ollama"]) == 2
    assert "add --gguf" in capsys.readouterr().err
    (tmp_path / "odd").mkdir()
    for item in tiny_model_dir.iterdir():
        (tmp_path / "odd" / item.name).write_bytes(item.read_bytes())
    config_path = tmp_path / "odd" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    config_path.write_text(json.dumps(config))
    (tmp_path / "odd" / "chat_template.jinja").unlink(missing_ok=True)
    assert main(["export", str(tmp_path / "odd"), "-o", str(tmp_path / "b"), "--gguf", "--ollama"]) == 2
    err = capsys.readouterr().err
    assert "no known Ollama template family (chatml)" in err and "without --ollama" in err
    assert not (tmp_path / "b").exists()


def test_adapter_records_the_base_name_not_a_cache_path(tmp_path, tiny_tokenizer, monkeypatch):
    from sftlab.models.default import default_dir
    from sftlab.models.export import portable_name

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    default_dir().mkdir(parents=True)
    assert portable_name(str(default_dir())) == "default"
    assert portable_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.chdir(tmp_path)
    assert portable_name("cache") == str(tmp_path / "cache")  # a local directory: absolute

    run, _ = _lora_run(tmp_path, tiny_tokenizer, base_name=str(default_dir()))  # as older runs wrote it
    assert main(["export", str(run / "adapter"), "-o", str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "default"


@pytest.mark.parametrize("model_name", ["tiny", "model-dir"])
def test_training_records_the_model_name_it_was_given(tmp_path, tiny_model_dir, monkeypatch, model_name):
    from sftlab.config import build_config
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train
    from sftlab.types import Tokenized

    monkeypatch.chdir(tiny_model_dir.parent)
    name = "tiny" if model_name == "tiny" else tiny_model_dir.name  # relative, as a user types it
    config = build_config(TrainConfig, {
        "model": {"name": name}, "method": {"name": "lora"}, "output_dir": str(tmp_path / "run"),
        "batch_size": 2, "max_steps": 1, "plot": False, "progress": False})
    train(config, train_examples=[Tokenized([1, 5, 9, 11, 2], [-100, -100, 9, 11, 2])] * 4)
    recorded = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert recorded["base_model_name_or_path"] == ("tiny" if name == "tiny" else str(tiny_model_dir.resolve()))


@pytest.mark.slow
def test_default_model_gguf_and_modelfile(tmp_path):
    """SmolLM2 (tied head, smollm pre-tokenizer, a default system prompt): f16 GGUF logits
    within 0.1 (logits reach ~40), the same greedy text, and its system prompt as SYSTEM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.models import resolve_model

    reference, tokenizer = load_model("default"), load_tokenizer("default")
    out = tmp_path / "smol"
    assert main(["export", resolve_model("default"), "-o", str(out), "--gguf", "--ollama"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out / "gguf", gguf_file="smol-f16.gguf", dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(out / "gguf", gguf_file="smol-f16.gguf")
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                                      add_generation_prompt=True, return_dict=True)["input_ids"]])
    assert (_logits(model, ids) - _logits(reference, ids)).abs().max() < 0.1
    with torch.no_grad():
        greedy = [m.generate(ids, max_new_tokens=24, do_sample=False)[0].tolist() for m in (model, reference)]
    assert greedy[0] == greedy[1]
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in (out / "gguf" / "Modelfile").read_text()
