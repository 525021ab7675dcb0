"""``sftlab models | generate | chat | serve | export``: using a model once it exists."""
from __future__ import annotations

import argparse
import json
import os
import sys

MODEL_HELP = ("'default' (SmolLM2-135M-Instruct, embedded), 'tiny' (random, for tests), a model "
              "directory, a training run directory, an adapter directory or a hub id")


def register(subparsers) -> None:
    _register_models(subparsers)
    _register_generate(subparsers)
    _register_chat(subparsers)
    _register_serve(subparsers)
    _register_export(subparsers)


def _parser(subparsers, name: str, help: str, description: str, example: str):
    return subparsers.add_parser(name, help=help, description=f"{description}\n\nexample:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def _model_arguments(parser, batch_size: int = 8) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--adapter", help="a PEFT adapter directory (or run dir with adapter/) to apply")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"prompts per forward batch "
                        f"(default {batch_size})")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the model directory or hub to run (off by default)")


def _sampling_arguments(parser, max_new_tokens: int, temperature: float) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                        help=f"completion length limit (default {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"0 = greedy (default {temperature})")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop string (repeatable); the output ends before it")


def _sampling(args):
    from sftlab.infer.base import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=list(args.stop))


def _generator(args):
    if getattr(args, "backend", "hf") == "vllm":
        from sftlab.infer.vllm import VLLMGenerator

        return VLLMGenerator(args.model, adapter=args.adapter, trust_remote_code=args.trust_remote_code)
    from sftlab.infer.hf import HFGenerator

    return HFGenerator.from_name(args.model, adapter=args.adapter, batch_size=args.batch_size,
                                 dtype=args.dtype, device=args.device,
                                 trust_remote_code=args.trust_remote_code)


# -- models -----------------------------------------------------------------------------------


def _register_models(subparsers) -> None:
    parser = _parser(subparsers, "models", "list the models available locally",
                     "List the models sftlab can load without a network: the embedded default "
                     "model (converted to the cache or not yet), tiny, and cached models.",
                     "sftlab models")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.set_defaults(handler=_models)


def _models(args) -> int:
    from sftlab.models import available_models

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
        subparsers, "generate", "complete a JSONL file of prompts (resumable)",
        "Generate a completion for every row of a JSONL file. Rows hold 'prompt' (raw text) or "
        "'messages' (chat; the chat template is applied) and an optional 'id'. Output rows keep "
        "the id and prompt and add 'output', 'finish_reason' and token counts. Rerunning with the "
        "same -o continues after the last complete row. Settings go to OUT.config.yaml.",
        "sftlab generate default --input prompts.jsonl -o out.jsonl --max-new-tokens 128")
    _model_arguments(parser)
    parser.add_argument("--input", "-i", required=True, help="JSONL prompts")
    parser.add_argument("--output", "-o", required=True, help="JSONL completions (appended on resume)")
    _sampling_arguments(parser, max_new_tokens=256, temperature=0.0)
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                        help="hf: batched transformers (default); vllm: needs the vllm package and a GPU")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_generate)


def _generate(args) -> int:
    from sftlab.infer.files import GenerateConfig, generate_file, read_prompts

    read_prompts(args.input)  # a malformed input fails before the model loads
    config = GenerateConfig(model=args.model, adapter=args.adapter, input=args.input, output=args.output,
                            batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                            sampling=_sampling(args))
    summary = generate_file(_generator(args), config, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


# -- chat -------------------------------------------------------------------------------------


def _register_chat(subparsers) -> None:
    parser = _parser(subparsers, "chat", "chat with a model in the terminal",
                     "Interactive chat with streaming replies and history. Commands: /reset, "
                     "/system TEXT, /exit. Reads one message per line from a pipe as well.",
                     "sftlab chat default --system 'You are terse.'")
    _model_arguments(parser, batch_size=1)
    _sampling_arguments(parser, max_new_tokens=512, temperature=0.7)
    parser.add_argument("--system", help="system message for the conversation")
    parser.set_defaults(handler=_chat)


def _chat(args) -> int:
    from sftlab.infer.chat import chat_loop

    chat_loop(_generator(args), _sampling(args), system=args.system)
    return 0


# -- serve ------------------------------------------------------------------------------------


def _register_serve(subparsers) -> None:
    parser = _parser(
        subparsers, "serve", "serve a model over an OpenAI-compatible HTTP API",
        "Serve /v1/chat/completions, /v1/completions (both with streaming) and /v1/models. "
        "Concurrent requests are batched into one generate call. Binds to 127.0.0.1 unless "
        "--host says otherwise; with --api-key (or $SFTLAB_API_KEY) requests need "
        "'Authorization: Bearer KEY'.",
        "sftlab serve default --port 8000   # then: OpenAI(base_url='http://127.0.0.1:8000/v1')")
    _model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("SFTLAB_API_KEY"),
                        help="require this bearer key (default: $SFTLAB_API_KEY, else none)")
    parser.add_argument("--batch-window-ms", type=float, default=10.0,
                        help="how long to collect concurrent requests into one batch (default 10)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="completion length when a request does not set max_tokens (default 256)")
    parser.set_defaults(handler=_serve)


def _serve(args) -> int:
    from sftlab.infer.server import serve

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    serve(_generator(args), host=args.host, port=args.port, api_key=args.api_key,
          batch_window_ms=args.batch_window_ms, default_max_tokens=args.max_tokens)
    return 0


# -- export -----------------------------------------------------------------------------------


def _register_export(subparsers) -> None:
    parser = _parser(
        subparsers, "export", "export a trained model or adapter (optionally merged)",
        "Write a standalone model directory from a run, adapter or model directory: safetensors, "
        "tokenizer and chat template. --merge folds a LoRA adapter into the base weights so the "
        "result loads without PEFT.",
        "sftlab export runs/lora1 -o exported/lora1 --merge")
    parser.add_argument("source", metavar="RUN_OR_ADAPTER", help="run dir (with adapter/ or model/), "
                        "adapter dir or model dir")
    parser.add_argument("--output", "-o", required=True, help="new output directory")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    parser.add_argument("--base", help="base model of the adapter (default: the one its config names)")
    parser.set_defaults(handler=_export)


def _export(args) -> int:
    from sftlab.models.export import export_model

    out = export_model(args.source, args.output, merge=args.merge, base=args.base)
    print(f"exported to {out}")
    return 0
