"""``export --merge`` of an intrinsic-subspace result: a plain model whose logits are the
adapter-loaded model's; bottleneck adapters (same sftlab_adapter.json file) are still refused."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlab.config import build_config
from sftlab.errors import ConfigError
from sftlab.models import load_model
from sftlab.models.export import check_mergeable, export_model
from sftlab.models.tiny import tiny_model
from sftlab.train.config import MethodConfig
from sftlab.train.methods import prepare_model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _intrinsic_run(tmp_path, tiny_tokenizer):
    prepared = prepare_model(tiny_model(), build_config(MethodConfig, {"name": "intrinsic"},
                                                        ["intrinsic.dimension=64"]))
    with torch.no_grad():  # a non-zero delta, so the merge has something to fold in
        prepared.model.sftlab_intrinsic.theta.normal_(std=2.0)
    run = tmp_path / "run"
    prepared.save(run / "adapter")
    tiny_tokenizer.save_pretrained(run)
    return run, prepared.model.eval()


def test_merged_intrinsic_export_is_a_plain_model_with_the_adapters_logits(tmp_path, tiny_tokenizer):
    run, trained = _intrinsic_run(tmp_path, tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer("The water cycle, explained to a child!")["input_ids"]])
    expected = _logits(load_model("tiny", adapter=run / "adapter"), ids)
    assert torch.allclose(expected, _logits(trained, ids), atol=1e-5)
    assert (expected - _logits(tiny_model(), ids)).abs().max() > 1e-3  # the delta matters

    out = export_model(run, tmp_path / "merged", merge=True)
    assert (out / "model.safetensors").is_file() and not (out / "sftlab_adapter.json").exists()
    assert json.loads((out / "sftlab_export.json").read_text())["merged"] is True
    merged = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True).eval()
    assert not any("parametrizations" in name or "sftlab_intrinsic" in name
                   for name, _ in merged.named_parameters())
    assert torch.equal(_logits(merged, ids), expected)  # W0 + delta, saved bit for bit


def test_bottleneck_adapters_are_still_refused(tmp_path):
    prepared = prepare_model(tiny_model(), MethodConfig(name="adapter"))
    prepared.save(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="bottleneck adapters.*cannot be merged"):
        check_mergeable(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="cannot be merged"):
        export_model(tmp_path / "adapter", tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()
