"""release_memory: malloc_trim runs after every few decoder layers of the forward pass."""
from __future__ import annotations

import torch

from sftlab.models.layers import decoder_layers
from sftlab.models.tiny import tiny_model
from sftlab.train import memory


def test_trims_after_every_nth_layer(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    model = tiny_model(num_hidden_layers=4)
    assert decoder_layers(model) is model.model.layers
    hooks = memory.trim_during_forward(model, every=2)
    assert len(hooks) == 2
    model(input_ids=torch.tensor([[5, 6, 7]]))
    assert calls == [0, 0]                       # malloc_trim(0) after layers 2 and 4
    for hook in hooks:
        hook.remove()
    assert memory.trim_during_forward(model, every=0) == []


def test_glibc_trim_is_found_on_linux():
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory._malloc_trim() is not None
    else:
        assert memory._malloc_trim() is None


def test_large_blocks_get_a_fixed_mmap_threshold(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda option, value: calls.append((option, value)) or 1)
    assert memory.mmap_large_blocks() is True
    assert memory.mmap_large_blocks(1 << 20) is True
    # M_MMAP_THRESHOLD (-3): 4 MiB by default, above the short-sequence activations
    assert calls == [(-3, 4 * 1024 * 1024), (-3, 1 << 20)]
    monkeypatch.setattr(memory, "_mallopt", lambda: None)  # no glibc
    assert memory.mmap_large_blocks() is False


def test_glibc_mallopt_accepts_the_threshold():
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory.mmap_large_blocks() is True
    else:
        assert memory.mmap_large_blocks() is False


def test_training_on_cpu_sets_it_only_with_release_memory(monkeypatch, tmp_path, tiny_tokenizer):
    from sftlab.config import build_config
    from sftlab.train import sft
    from sftlab.train.config import TrainConfig
    from sftlab.types import Tokenized

    calls = []
    monkeypatch.setattr(sft, "mmap_large_blocks", lambda: calls.append("mmap") or True)
    for release in (True, False):
        config = build_config(TrainConfig, {
            "max_steps": 1, "batch_size": 1, "output_dir": str(tmp_path / str(release)),
            "progress": False, "plot": False, "save_model": False, "release_memory": release})
        sft.train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer,
                  train_examples=[Tokenized([1, 5, 6, 7, 2], [-100, -100, 6, 7, 2])])
    assert calls == ["mmap"]
