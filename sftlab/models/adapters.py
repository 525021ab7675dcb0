"""Houlsby bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning").

Each chosen linear layer (by default the attention output ``o_proj`` and the MLP output
``down_proj`` of every decoder layer, i.e. "after attention and after the MLP", before the
residual add) is wrapped so that its output ``h`` (batch × seq × d) becomes::

    h + up(act(down(h)))        down: d -> bottleneck,  up: bottleneck -> d

``up`` starts at exactly zero, so a freshly adapted model computes exactly what the base
model computes (adding a zero tensor is exact in floating point), and training starts from
the base model. As in the paper, the normalisation layers' weights train too
(``adapter.train_norms``, default on; they are saved with the adapters); everything else
stays frozen.

Saved format (a directory)::

    sftlab_adapter.json          {"format": "sftlab_adapter", "version": 1, "bottleneck": 64,
                                  "activation": "gelu", "after": [...], "init_std": 0.01,
                                  "train_norms": true, "base_model": "<name or path>"}
    sftlab_adapter.safetensors   "model.layers.0.self_attn.o_proj.adapter.down.weight", ...,
                                 "model.layers.0.input_layernorm.weight", ... (train_norms)

    save_adapter(model, "out/adapter");  load_adapter(fresh_base_model, "out/adapter")

The settings are a plain dict, as the JSON file records them (the training config's
``method.adapter`` section, ``sftlab.train.config.AdapterSection``, as a dict); training
(``sftlab.train.methods.prepare_adapter``) freezes the base and picks what trains.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sftlab.errors import ConfigError
from sftlab.models import intrinsic

CONFIG_FILE = "sftlab_adapter.json"
WEIGHTS_FILE = "sftlab_adapter.safetensors"
FORMAT_VERSION = 1

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``; ``h``: (..., dim). ``up`` is zero at init (identity map)."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "gelu",
                 init_std: float = 0.01, dtype=None, device=None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, dtype=dtype, device=device)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim, dtype=dtype, device=device)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class AdaptedLinear(nn.Module):
    """A frozen base linear layer followed by a trainable ``BottleneckAdapter``."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


# the settings an adapter file records (all required: save_adapter writes every one)
SETTINGS = ("bottleneck", "activation", "after", "init_std", "train_norms")


def add_adapters(model: nn.Module, settings: dict) -> list[BottleneckAdapter]:
    """Wrap every ``nn.Linear`` named in ``settings["after"]``.

    ``settings``: ``{"bottleneck": 64, "activation": "gelu", "after": ["o_proj",
    "down_proj"], "init_std": 0.01, "train_norms": True}`` (``SETTINGS``). Returns the new
    adapters (their parameters are the ones to train). The base model's own parameters are
    left as they are; ``prepare_adapter`` freezes them first.
    """
    missing = [key for key in SETTINGS if key not in settings]
    if missing:
        raise ConfigError(f"adapter settings lack {', '.join(missing)}")
    bottleneck, after = settings["bottleneck"], settings["after"]
    if bottleneck < 1:
        raise ConfigError(f"adapter.bottleneck must be >= 1, got {bottleneck}")
    adapters = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child_name not in after or not isinstance(child, nn.Linear):
                continue
            weight = child.weight
            adapter = BottleneckAdapter(child.out_features, bottleneck, settings["activation"],
                                        settings["init_std"], dtype=weight.dtype,
                                        device=weight.device)
            setattr(parent, child_name, AdaptedLinear(child, adapter))
            adapters.append(adapter)
    if not adapters:
        raise ConfigError(f"adapter.after={after}: no nn.Linear of that name in the "
                          f"model (Llama names: o_proj, down_proj)")
    model.sftlab_adapter = {key: settings[key] for key in SETTINGS}  # what save_adapter writes
    return adapters


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights (and biases) of every normalisation layer (``*Norm`` classes: LayerNorm,
    LlamaRMSNorm, ...), by full name: ``{"model.layers.0.input_layernorm.weight": ...}``."""
    found = {}
    for module_name, module in model.named_modules():
        if type(module).__name__.endswith("Norm"):
            for name, param in module.named_parameters(recurse=False):
                found[f"{module_name}.{name}"] = param
    return found


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter file holds: the adapters' tensors, plus the norms' when trained."""
    state = {name: t for name, t in model.state_dict().items() if ".adapter." in name}
    if getattr(model, "sftlab_adapter", {}).get("train_norms"):
        state.update({name: p.detach() for name, p in norm_parameters(model).items()})
    return state


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``sftlab_adapter.safetensors`` + ``sftlab_adapter.json`` into directory ``path``
    (bottleneck adapters, or an intrinsic delta: ``sftlab.models.intrinsic``)."""
    path = Path(path)
    base = getattr(getattr(model, "config", None), "_name_or_path", None)
    if hasattr(model, "sftlab_intrinsic"):  # theta, scales and the projection's seed
        config = {"format": intrinsic.FORMAT, "version": intrinsic.FORMAT_VERSION,
                  **intrinsic.intrinsic_config(model), "base_model": base}
        return _write(path, config, intrinsic.intrinsic_tensors(model))
    if not hasattr(model, "sftlab_adapter"):
        raise ConfigError("save_adapter: the model has no sftlab adapter")
    config = {"format": "sftlab_adapter", "version": FORMAT_VERSION, **model.sftlab_adapter,
              "base_model": base}
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    return _write(path, config, tensors)


def _write(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def is_adapter_dir(path: str | Path) -> bool:
    """True if ``path`` holds an sftlab adapter (as opposed to a PEFT adapter)."""
    return (Path(path) / CONFIG_FILE).is_file()


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Add the adapters saved in ``path`` to a base ``model`` (in place) and return it.

    Every saved tensor must land on an adapter of the same shape, and every adapter must get
    a saved tensor; otherwise this is a ConfigError naming the first mismatch.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        raise ConfigError(f"{path}: not an sftlab adapter (no {CONFIG_FILE})")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") == intrinsic.FORMAT and config.get("version") == intrinsic.FORMAT_VERSION:
        return intrinsic.load_intrinsic(model, config, load_file(str(path / WEIGHTS_FILE)),
                                        source=str(path))  # merged: W <- W0 + delta
    if config.get("format") != "sftlab_adapter" or config.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{path / CONFIG_FILE}: unknown format/version "
                          f"{config.get('format')!r}/{config.get('version')!r}")
    add_adapters(model, config)
    saved = load_file(str(path / WEIGHTS_FILE))
    expected = adapter_state_dict(model)
    if set(saved) != set(expected):
        odd = sorted(set(saved) ^ set(expected))[0]
        raise ConfigError(f"{path}: adapter tensors do not match this model (e.g. '{odd}')")
    with torch.no_grad():
        for name, tensor in expected.items():
            if tensor.shape != saved[name].shape:
                raise ConfigError(f"{path}: '{name}' has shape {tuple(saved[name].shape)}, "
                                  f"the model needs {tuple(tensor.shape)}")
            tensor.copy_(saved[name])
    return model
