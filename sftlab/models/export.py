"""``sftlab export``: turn a training result into a standalone model directory.

    sftlab export runs/lora1 -o exported/lora1 --merge      # base + LoRA -> one model
    sftlab export runs/lora1/adapter -o exported/adapter    # the adapter alone (+ tokenizer)
    sftlab export runs/lora1 -o exported/lora1 --gguf --gguf-type q8_0 --ollama
        # + gguf/lora1-q8_0.gguf (merged) and gguf/Modelfile: ollama create lora1 -f exported/lora1/gguf/Modelfile

The source may be:
- a PEFT adapter directory (``adapter_config.json``);
- a training run directory holding ``adapter/`` or ``model/`` (plus the tokenizer,
  in the run directory or beside the weights).

``--merge`` folds the adapter into the base weights (PEFT ``merge_and_unload``: for LoRA,
W <- W + (alpha / r) * B @ A) and writes an ordinary model: safetensors, config, tokenizer
and chat template, loadable by ``transformers`` with no PEFT at all. Only adapters that
change existing weights merge (LoRA, DoRA, QLoRA, IA3: ``MERGEABLE_PEFT_TYPES``; and
sftlab's intrinsic-subspace results, ``W0 + P theta``, folded in by ``merge_intrinsic``); prompt
tuning, prefix tuning and bottleneck adapters are refused before anything is loaded. The
base model comes from ``base=`` or the adapter's ``base_model_name_or_path``. Output is
written to a temporary sibling directory and renamed into place, so a failed export leaves
nothing.

``--gguf`` adds one GGUF file (``sftlab.models.gguf``: weights, tokenizer, chat template,
stop tokens) and ``--ollama`` a Modelfile for it (``sftlab.models.ollama``). An adapter's
``base_model_name_or_path`` names the model as the user did (``default``, a hub id), never
sftlab's cache directory (``portable_name``), in training and in copied adapters alike.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sftlab.data.chat import serving_template
from sftlab.errors import ConfigError
from sftlab.models import (BUILTIN, ModelNotFoundError, _auto_tokenizer, adapter_base, load_model,
                           load_tokenizer, resolve_adapter)
from sftlab.models.default import default_dir
from sftlab.models.gguf import stop_token_ids, write_gguf
from sftlab.models.ollama import modelfile

# PEFT types whose update is a change of existing weights, which ``merge_and_unload`` folds
# in; prompt and prefix tuning add virtual tokens / key-value prefixes instead
MERGEABLE_PEFT_TYPES = ("LORA", "ADALORA", "IA3", "LOHA", "LOKR")
# sftlab.models.intrinsic.FORMAT (not imported: that module needs torch, this one does not)
INTRINSIC_FORMAT = "sftlab_intrinsic"
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
                 base: str | None = None, gguf_type: str | None = None, ollama: bool = False,
                 system: str | None = None) -> Path:
    """Write the exported model or adapter to ``output``; returns ``output``.

    ``merge`` applies only to adapters; a full model is re-saved as safetensors either way.
    ``gguf_type`` (``f32``, ``f16``, ``q8_0``) adds ``gguf/<output name>-<type>.gguf`` (an
    adapter is merged first: a GGUF holds whole weights); ``ollama`` adds ``gguf/Modelfile``,
    with ``system`` (else the chat template's own default) as its SYSTEM prompt. ``gguf/``
    is self-contained: the file holds the tokenizer too, and loaders given a directory with
    both would mix the two tokenizers.
    """
    kind, where = find_source(source)
    if ollama and not gguf_type:
        raise ConfigError("--ollama writes a Modelfile for a GGUF file: add --gguf")
    merge = merge or bool(gguf_type)
    if merge and kind == "adapter":
        check_mergeable(where)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"output directory {output} is not empty; choose a new one")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        info = {"source": str(Path(source)), "kind": kind, "merged": False}
        model, tokenizer = _write_weights(kind, where, merge, base, tmp, info)
        if tokenizer.chat_template:  # as training saves it: with the tool / reasoning fallbacks it needs
            serving_template(tokenizer)
        tokenizer.save_pretrained(tmp)  # writes the chat template with it
        if gguf_type:
            info.update(_write_gguf(model, tokenizer, tmp, output.name, gguf_type, ollama, system))
        (tmp / "sftlab_export.json").write_text(json.dumps(info, indent=2) + "\n")
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output


def _write_weights(kind: str, where: Path, merge: bool, base: str | None, tmp: Path, info: dict):
    """Save the model (merged or not) or copy the adapter into ``tmp``; ``(model or None, tokenizer)``."""
    if kind == "adapter" and merge:
        info.update(base=base_model_of(where, base), merged=True)
        model = load_model(info["base"], adapter=where)
        if not _is_intrinsic(where):  # an intrinsic delta is folded in by loading (merge_intrinsic)
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        return model, load_tokenizer(info["base"], adapter=where)
    if kind == "adapter":
        for name in _ADAPTER_FILES:
            if (where / name).is_file():
                shutil.copy2(where / name, tmp / name)
        _make_base_portable(tmp)
        return None, _tokenizer_beside(where) or load_tokenizer(base_model_of(where, base))
    model = load_model(str(where))
    model.save_pretrained(tmp, safe_serialization=True)
    return model, _tokenizer_beside(where) or load_tokenizer(str(where))


def _write_gguf(model, tokenizer, tmp: Path, name: str, gguf_type: str, ollama: bool,
                system: str | None) -> dict:
    """``gguf/<name>-<type>.gguf`` (and ``gguf/Modelfile``) into ``tmp``; what
    sftlab_export.json records."""
    gguf_name = f"{name}-{gguf_type}.gguf"
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer))
    text = modelfile(tokenizer, gguf_name, stops, system) if ollama else None  # fails before the GGUF is written
    (tmp / "gguf").mkdir()
    write_gguf(model, tokenizer, tmp / "gguf" / gguf_name, gguf_type=gguf_type, name=name)
    if text is not None:
        (tmp / "gguf" / "Modelfile").write_text(text)
    return {"gguf": f"gguf/{gguf_name}", "gguf_type": gguf_type, "stop_tokens": stops, "ollama": ollama}


def portable_name(name_or_path: str) -> str:
    """How a model is recorded as an adapter's base so the adapter finds it on another
    machine: ``default``, ``tiny`` and hub ids as given; sftlab's converted default model
    (a cache path) as ``default``; another local directory as its absolute path."""
    path = Path(str(name_or_path)).expanduser()
    if str(name_or_path) in BUILTIN or not path.exists():
        return str(name_or_path)
    if path.resolve() == default_dir().resolve():
        return "default"
    return str(path.resolve())


def record_base_name(model, name_or_path: str) -> None:
    """Make ``model`` name ``portable_name(name_or_path)`` as its origin, which PEFT writes
    to ``adapter_config.json`` (``base_model_name_or_path``) and sftlab adapters to
    ``sftlab_adapter.json``, instead of the directory it was loaded from."""
    model.config._name_or_path = model.name_or_path = portable_name(name_or_path)


def _make_base_portable(adapter_dir: Path) -> None:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = portable_name(config["base_model_name_or_path"])
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def check_mergeable(adapter_dir: Path) -> None:
    """Raise ``ConfigError`` unless the adapter's update folds into the base weights."""
    if _is_intrinsic(adapter_dir):  # W0 + P theta: a change of existing weights
        return
    if (adapter_dir / "sftlab_adapter.json").is_file():
        what = "bottleneck adapters, which add layers"
    else:
        peft_type = json.loads((adapter_dir / "adapter_config.json").read_text()).get("peft_type")
        if str(peft_type).upper() in MERGEABLE_PEFT_TYPES:
            return
        what = f"a {peft_type} adapter, which adds virtual tokens or prefixes instead of changing weights"
    raise ConfigError(f"{adapter_dir} holds {what}: it cannot be merged into the base weights (only "
                      f"LoRA, DoRA, QLoRA and IA3 adapters can: PEFT {', '.join(MERGEABLE_PEFT_TYPES)}; "
                      f"and intrinsic-subspace results); "
                      f"export without --merge to copy the adapter, and load it with its base model")


def _is_intrinsic(adapter_dir: Path) -> bool:
    """True for an intrinsic-subspace result (``sftlab.models.intrinsic``), whose delta folds
    into the base weights, unlike a bottleneck adapter in the same ``sftlab_adapter.json`` file."""
    config_path = adapter_dir / "sftlab_adapter.json"
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text()).get("format") == INTRINSIC_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False  # load_adapter names what is wrong with the file


def _tokenizer_beside(weights_dir: Path):
    for candidate in (weights_dir, weights_dir.parent):
        if (candidate / "tokenizer_config.json").is_file():
            return _auto_tokenizer(str(candidate))
    return None
