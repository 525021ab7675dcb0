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
