"""``sftlab export``: turn a training result into a standalone model directory.

    sftlab export runs/lora1 -o exported/lora1 --merge      # base + LoRA -> one model
    sftlab export runs/lora1/adapter -o exported/adapter    # the adapter alone (+ tokenizer)

The source may be:
- a PEFT adapter directory (``adapter_config.json``);
- a training run directory holding ``adapter/`` or ``model/`` (plus the tokenizer,
  in the run directory or beside the weights).

``--merge`` folds the adapter into the base weights (PEFT ``merge_and_unload``: for LoRA,
W <- W + (alpha / r) * B @ A) and writes an ordinary model: safetensors, config, tokenizer
and chat template, loadable by ``transformers`` with no PEFT at all. The base model comes
from ``base=`` or the adapter's ``base_model_name_or_path``. Output is written to a
temporary sibling directory and renamed into place, so a failed export leaves nothing.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sftlab.errors import ConfigError
from sftlab.models import (ModelNotFoundError, _auto_tokenizer, adapter_base, load_model, load_tokenizer,
                           resolve_adapter)

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
                  "sftlab_adapter.json", "sftlab_adapter.safetensors")


def find_source(source: str | Path) -> tuple[str, Path]:
    """``("adapter", dir)`` or ``("model", dir)`` for an adapter, model or run directory."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a directory")
    if any((d / m).is_file() for d in (path, path / "adapter")
           for m in ("adapter_config.json", "sftlab_adapter.json")):
        return "adapter", resolve_adapter(path)
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return "model", candidate
    raise ModelNotFoundError(f"{path} holds no adapter (adapter_config.json) or model (config.json), "
                             f"neither directly nor in adapter/ or model/")


def base_model_of(adapter_dir: Path, base: str | None = None) -> str:
    """The base model name or path an adapter was trained on (``base`` wins)."""
    if base:
        return base
    name = adapter_base(adapter_dir)
    if not name:
        raise ConfigError(f"{adapter_dir} does not name its base model; "
                          f"pass it with --base (e.g. --base default)")
    return name


def export_model(source: str | Path, output: str | Path, *, merge: bool = False,
                 base: str | None = None) -> Path:
    """Write the exported model or adapter to ``output``; returns ``output``.

    ``merge`` applies only to adapters; a full model is re-saved as safetensors either way.
    """
    kind, where = find_source(source)
    if merge and kind == "adapter" and (where / "sftlab_adapter.json").is_file():
        raise ConfigError(f"{where} holds bottleneck adapters, which add layers and cannot be merged "
                          f"into the base weights; export without --merge to copy the adapter")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"output directory {output} is not empty; choose a new one")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        info = {"source": str(Path(source)), "kind": kind, "merged": False}
        if kind == "adapter" and merge:
            info.update(base=base_model_of(where, base), merged=True)
            model = load_model(info["base"], adapter=where).merge_and_unload()
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer = load_tokenizer(info["base"], adapter=where)
        elif kind == "adapter":
            for name in _ADAPTER_FILES:
                if (where / name).is_file():
                    shutil.copy2(where / name, tmp / name)
            tokenizer = _tokenizer_beside(where) or load_tokenizer(base_model_of(where, base))
        else:
            load_model(str(where)).save_pretrained(tmp, safe_serialization=True)
            tokenizer = _tokenizer_beside(where) or load_tokenizer(str(where))
        tokenizer.save_pretrained(tmp)  # writes the chat template with it
        (tmp / "sftlab_export.json").write_text(json.dumps(info, indent=2) + "\n")
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output


def _tokenizer_beside(weights_dir: Path):
    for candidate in (weights_dir, weights_dir.parent):
        if (candidate / "tokenizer_config.json").is_file():
            return _auto_tokenizer(str(candidate))
    return None
