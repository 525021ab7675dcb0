"""``sftlab models | generate | chat | serve | export | check``: using a model once it exists.

``generate`` runs on ``sftlab.infer.files.GenerateConfig``; ``chat``, ``serve`` and ``export``
on the configs below (their code takes plain arguments). Every command's options come from
its config through ``sftlab.cli.options``: flags, ``--config FILE.yaml`` and ``KEY=VALUE``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sftlab.cli.options import Flag, add_config_arguments, config_from_args
from sftlab.errors import ConfigError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.files import GenerateConfig

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ChatConfig:
    """``sftlab chat``: an interactive conversation with one model."""

    model: str = "default"
    """`default` (SmolLM2-135M-Instruct, embedded), `tiny` (random, for tests), a model
    directory, a training run directory, an adapter directory or a hub id."""
    adapter: str | None = None
    """A PEFT adapter directory (or run directory with adapter/) to apply to the model."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model weights' dtype."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps."""
    trust_remote_code: bool = False
    """Allow model code from the model directory or hub to run (off by default)."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """Generation engine: `auto` (llama.cpp for GGUF models, `default` and .gguf files,
    when llama-cpp-python is installed, else hf), `hf` (transformers, every model and device),
    `llamacpp` (llama.cpp's CPU kernels on the same float32 weights: same greedy tokens,
    faster; `pip install 'sftlab[llamacpp]'`). The saved config names the one that ran."""
    system: str | None = None
    """System message that opens the conversation (`/system TEXT` changes it)."""
    images: list[str] = field(default_factory=list)
    """Image files sent with the first message (repeat --image; `/image PATH` attaches one to
    the next message); needs a vision model directory (one with sftlab_vision.json)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=512, temperature=0.7))
    """Decoding settings of each reply."""


@dataclass
class ServeConfig:
    """``sftlab serve``: one model behind an OpenAI-compatible HTTP API."""

    model: str = "default"
    """`default` (SmolLM2-135M-Instruct, embedded), `tiny` (random, for tests), a model
    directory, a training run directory, an adapter directory or a hub id."""
    adapter: str | None = None
    """A PEFT adapter directory (or run directory with adapter/) to apply to the model."""
    batch_size: int = 8
    """Most prompts generated together; concurrent requests fill the batch."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model weights' dtype."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps."""
    trust_remote_code: bool = False
    """Allow model code from the model directory or hub to run (off by default)."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """Generation engine: `auto` (llama.cpp for GGUF models, `default` and .gguf files,
    when llama-cpp-python is installed, else hf), `hf` (transformers, every model and device),
    `llamacpp` (llama.cpp's CPU kernels on the same float32 weights: same greedy tokens,
    faster; `pip install 'sftlab[llamacpp]'`). The saved config names the one that ran."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback without an API key is open to anyone who can
    reach it."""
    port: int = 8000
    """TCP port to listen on."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every request (401 otherwise). A key on the
    command line shows in `ps`: prefer api_key_file or $SFTLAB_API_KEY. None: api_key_file's
    key, else $SFTLAB_API_KEY if set, else no key."""
    api_key_file: str | None = None
    """A file holding the API key (its first line; surrounding whitespace ignored), used when
    api_key is not set."""
    served_model_name: list[str] = field(default_factory=list)
    """The model name(s) requests may ask for (repeat the flag); the first is reported in
    /v1/models and in answers to requests naming none; any other name is 404
    model_not_found. None given: the model argument as written."""
    batch_window_ms: float = 10.0
    """How long to collect concurrent requests into one batch, in milliseconds."""
    max_tokens: int = 256
    """Completion length of a request that does not set max_tokens."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body in bytes (default 4 MiB); a larger one is refused with 413 before
    it is read. Prompts that do not fit the model's context are 400 context_length_exceeded."""
    shutdown_timeout_s: float = 5.0
    """On SIGTERM or Ctrl-C: seconds requests in flight get to finish before they are
    cancelled. SIGTERM then exits with status 0."""


@dataclass
class ExportConfig:
    """``sftlab export``: a standalone model directory from a run, adapter or model."""

    source: str = ""
    """A run directory (with adapter/ or model/), an adapter directory or a model directory."""
    output: str = ""
    """The new directory to write (safetensors, tokenizer, chat template, sftlab_export.json)."""
    merge: bool = False
    """Fold the adapter into the base weights, so the result loads without PEFT (LoRA, DoRA,
    QLoRA and IA3 adapters; prompt, prefix and bottleneck adapters cannot be merged)."""
    base: str | None = None
    """Base model of the adapter; none: the one its adapter_config.json names."""
    gguf: bool = False
    """Also write OUTPUT/gguf/<name>-<gguf_type>.gguf (llama.cpp, Ollama, LM Studio) with the chat
    template and stop tokens inside; an adapter is merged first. Llama- and Qwen2-style
    models with byte-level BPE tokenizers."""
    gguf_type: Literal["f32", "f16", "q8_0"] = "f16"
    """GGUF weight type: f32 (exact), f16 (half the size), q8_0 (8-bit blocks, a quarter)."""
    ollama: bool = False
    """Also write an Ollama Modelfile beside the GGUF (needs --gguf): the chat template in
    Ollama's Go syntax, the stop tokens and the system prompt (`ollama create NAME -f
    OUTPUT/gguf/Modelfile`)."""
    system: str | None = None
    """The Modelfile's SYSTEM prompt; none: the chat template's own default, if it has one."""


@dataclass
class CheckConfig:
    """``sftlab check``: prove that what was trained is what is served."""

    source: str = ""
    """A run directory, a model, adapter or exported directory, or ``default`` / ``tiny``."""
    gguf: str | None = None
    """A GGUF file to check too; none: the one in SOURCE/gguf/, if any."""
    modelfile: str | None = None
    """An Ollama Modelfile to check too; none: SOURCE/gguf/Modelfile, if any."""
    output: str | None = None
    """Also write the findings as JSON to this file."""


# the options every model-loading command shares
MODEL_FLAGS = {
    "model": Flag("model", nargs="?", metavar="MODEL", required=True),
    "adapter": "--adapter",
    "dtype": Flag("--dtype", choices=DTYPES),
    "device": "--device",
    "backend": "--backend",
}

SAMPLING_FLAGS = {
    "sampling.max_new_tokens": "--max-new-tokens",
    "sampling.temperature": "--temperature",
    "sampling.top_p": "--top-p",
    "sampling.top_k": "--top-k",
    "sampling.seed": "--seed",
    "sampling.stop": Flag("--stop", append=True, metavar="TEXT"),
}


def register(subparsers) -> None:
    _register_models(subparsers)
    _register_generate(subparsers)
    _register_chat(subparsers)
    _register_serve(subparsers)
    _register_export(subparsers)
    _register_check(subparsers)


def _parser(subparsers, name: str, help: str, description: str):
    return subparsers.add_parser(name, help=help, description=description)


def _trust_remote_code_flag(parser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model directory or hub to run (off by default)")


def _generator(config, *, trust_remote_code: bool = False):
    """The generator of ``config.backend`` for the model the config names; ``config.backend``
    becomes the backend that runs (``auto`` resolved), so a saved config records it."""
    from sftlab.infer.backends import generator_for, resolve_backend  # lazy: loads torch and transformers

    config.backend = resolve_backend(config.backend, config.model, adapter=config.adapter, dtype=config.dtype,
                                     device=config.device)
    return generator_for(config.model, backend=config.backend, adapter=config.adapter,
                         batch_size=getattr(config, "batch_size", 1), dtype=config.dtype, device=config.device,
                         trust_remote_code=trust_remote_code)


# -- models -----------------------------------------------------------------------------------


def _register_models(subparsers) -> None:
    parser = _parser(subparsers, "models", "list the models available locally",
                     "List the models sftlab can load without a network: the embedded default "
                     "model (converted to the cache or not yet), tiny, and cached models.")
    parser.epilog = "example:\n  sftlab models"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.set_defaults(handler=_models)


def _models(args) -> int:
    from sftlab.models import available_models  # lazy: loads torch and transformers

    rows = available_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['kind']:<22}  {r['status']}" + (f"  [{r['path']}]" if r["path"] else ""))
    return 0


# -- generate ---------------------------------------------------------------------------------


def _register_generate(subparsers) -> None:
    parser = _parser(
        subparsers, "generate", "complete a file of prompts (resumable)",
        "Generate a completion for every row of a prompt file. Rows hold 'prompt' (raw text), "
        "'messages' (chat; the chat template is applied) or an instruction format, and an optional "
        "'id'. Output rows keep the id and prompt and add 'output', 'finish_reason' and token "
        "counts. Rerunning with the same -o continues after the last complete row. Settings go "
        "to OUT.config.yaml.")
    add_config_arguments(parser, GenerateConfig, flags={
        **MODEL_FLAGS, "batch_size": "--batch-size",
        "input": Flag("--input", "-i", required=True), "output": Flag("--output", "-o", required=True),
        **SAMPLING_FLAGS},
        epilog="example:\n  sftlab generate default --input ../shared/data/self_instruct/"
               "user_oriented_instructions.jsonl -o out/answers.jsonl --max-new-tokens 128")
    _trust_remote_code_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_generate)


def _generate(args) -> int:
    # lazy: the prompt reader pulls in the data formats, generation torch
    from sftlab.data.prompts import read_prompts
    from sftlab.infer.files import check_output, generate_file

    config = config_from_args(GenerateConfig, args)
    read_prompts(config.input)  # a malformed input or output path fails before the model loads
    check_output(Path(config.output))
    generator = _generator(config, trust_remote_code=args.trust_remote_code)
    summary = generate_file(generator, config, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


# -- chat -------------------------------------------------------------------------------------


def _register_chat(subparsers) -> None:
    parser = _parser(subparsers, "chat", "chat with a model in the terminal",
                     "Interactive chat with streaming replies and history. Commands: /reset, "
                     "/system TEXT, /image PATH, /exit (or end of input, Ctrl-D). Reads one message "
                     "per line from a pipe as well.")
    add_config_arguments(parser, ChatConfig, flags={
        **MODEL_FLAGS, "trust_remote_code": "--trust-remote-code", **SAMPLING_FLAGS, "system": "--system",
        "images": Flag("--image", append=True, metavar="PATH")},
        epilog="examples:\n  sftlab chat default --system 'You are terse.'\n"
               "  sftlab chat runs/qs-vision/stage2 --image runs/qs-vision/data/tasks/images/heldout_image-0.png")
    parser.set_defaults(handler=_chat)


def _chat(args) -> int:
    from sftlab.infer.chat import chat_loop  # lazy: loads torch and transformers

    config = config_from_args(ChatConfig, args)
    chat_loop(_generator(config, trust_remote_code=config.trust_remote_code), config.sampling,
              system=config.system, images=config.images)
    return 0


# -- serve ------------------------------------------------------------------------------------


def _register_serve(subparsers) -> None:
    parser = _parser(
        subparsers, "serve", "serve a model over an OpenAI-compatible HTTP API",
        "Serve /v1/chat/completions, /v1/completions (both with streaming) and /v1/models. "
        "Concurrent requests are batched into one generate call. Binds to 127.0.0.1 unless "
        "--host says otherwise; with --api-key-file (or $SFTLAB_API_KEY, or --api-key) requests "
        "need 'Authorization: Bearer KEY'. SIGTERM shuts down gracefully and exits 0.")
    add_config_arguments(parser, ServeConfig, flags={
        **MODEL_FLAGS, "batch_size": "--batch-size", "trust_remote_code": "--trust-remote-code",
        "host": "--host", "port": "--port", "api_key": "--api-key", "api_key_file": "--api-key-file",
        "served_model_name": Flag("--served-model-name", append=True, metavar="NAME"),
        "batch_window_ms": "--batch-window-ms", "max_tokens": "--max-tokens", "max_body_bytes": "--max-body-bytes",
        "shutdown_timeout_s": "--shutdown-timeout-s"},
        epilog="example:\n  sftlab serve default --port 8000   # then: OpenAI(base_url='http://127.0.0.1:8000/v1')")
    parser.set_defaults(handler=_serve)


def _serve(args) -> int:
    from sftlab.infer.server import serve  # lazy: loads fastapi, uvicorn and torch

    config = config_from_args(ServeConfig, args)
    api_key = _api_key(config)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {config.host} without an API key: anyone who can reach it can use it",
              file=sys.stderr)
    serve(_generator(config, trust_remote_code=config.trust_remote_code), host=config.host, port=config.port,
          api_key=api_key, model_name=config.served_model_name or config.model,
          batch_window_ms=config.batch_window_ms, default_max_tokens=config.max_tokens,
          max_body_bytes=config.max_body_bytes, shutdown_timeout_s=config.shutdown_timeout_s)
    return 0


def _api_key(config: ServeConfig) -> str | None:
    """The key from api_key, else api_key_file, else $SFTLAB_API_KEY; None: no key."""
    if config.api_key:
        return config.api_key
    if config.api_key_file:
        try:
            with open(config.api_key_file, encoding="utf-8") as handle:
                key = handle.readline().strip()
        except OSError as exc:
            raise ConfigError(f"api_key_file {config.api_key_file}: cannot read it ({exc.strerror}); "
                              "give a readable file holding the key") from None
        if not key:
            raise ConfigError(f"api_key_file {config.api_key_file}: the first line is empty; write the key there")
        return key
    return os.environ.get("SFTLAB_API_KEY") or None


# -- export -----------------------------------------------------------------------------------


def _register_export(subparsers) -> None:
    parser = _parser(
        subparsers, "export", "export a trained model or adapter (optionally merged)",
        "Write a standalone model directory from a run, adapter or model directory: safetensors, "
        "tokenizer and chat template. --merge folds a LoRA adapter into the base weights so the "
        "result loads without PEFT. --gguf adds a GGUF file, --ollama a Modelfile for it.")
    add_config_arguments(parser, ExportConfig, flags={
        "source": Flag("source", nargs="?", metavar="RUN_OR_ADAPTER", required=True),
        "output": Flag("--output", "-o", required=True), "merge": "--merge", "base": "--base",
        "gguf": "--gguf", "gguf_type": "--gguf-type",
        "ollama": "--ollama", "system": "--system"},
        epilog="examples:\n  sftlab export runs/lora1 -o exported/lora1 --merge\n"
               "  sftlab export runs/lora1 -o exported/lora1 --gguf --gguf-type q8_0 --ollama")
    parser.set_defaults(handler=_export)


def _export(args) -> int:
    from sftlab.models.export import export_model  # lazy: loads torch and transformers

    config = config_from_args(ExportConfig, args)
    out = export_model(config.source, config.output, merge=config.merge, base=config.base,
                       gguf_type=config.gguf_type if config.gguf else None, ollama=config.ollama,
                       system=config.system)
    if config.merge and json.loads((out / "sftlab_export.json").read_text())["kind"] != "adapter":
        print(f"note: --merge changes nothing here: {config.source} is a whole model, not an adapter "
              "(it was re-saved as it is)", file=sys.stderr)
    print(f"exported to {out}")
    return 0


# -- check ------------------------------------------------------------------------------------


def _register_check(subparsers) -> None:
    parser = _parser(
        subparsers, "check", "prove a model is served as it was trained (templates, stops, parsing)",
        "Render probe conversations (system prompt and several turns, a weight-0 turn, a tool "
        "call, reasoning) through every path a model takes: the training renderer, the saved "
        "chat template, the OpenAI server's prompt and reply parser, a GGUF file's template and "
        "an Ollama Modelfile. Checks identical token ids, that every trained turn ends with a "
        "labelled end-of-turn token that is also a stop token, and that tool calls and "
        "reasoning come back as trained. Exits 1 naming the path and the first differing token "
        "when anything disagrees.")
    add_config_arguments(parser, CheckConfig, flags={
        "source": Flag("source", nargs="?", metavar="RUN_OR_MODEL", required=True),
        "gguf": "--gguf", "modelfile": "--modelfile", "output": "--output"},
        epilog="examples:\n  sftlab check runs/lora1\n  sftlab check exported/lora1   # + gguf/*.gguf, gguf/Modelfile\n"
               "  sftlab check default")
    parser.set_defaults(handler=_check)


def _check(args) -> int:
    from sftlab.infer.conformance import check  # lazy: loads transformers

    config = config_from_args(CheckConfig, args)
    report = check(config.source, gguf=config.gguf, modelfile=config.modelfile)
    print(report.text())
    if config.output:
        report.save(config.output)
    return 0 if report.ok else 1
