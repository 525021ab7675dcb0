"""Generate completions for a file of prompts, resumably.

Input: a prompt file as ``sftlab.data.prompts.read_prompts`` reads it (JSON list or JSONL,
any row format ``sftlab synth`` and eval accept too), for example::

    {"id": "q1", "prompt": "Once upon a time"}                       # raw text, used as is
    {"id": "q2", "messages": [{"role": "user", "content": "Hi"}]}    # chat template applied
    {"instruction": "Add the numbers.", "input": "2 and 3"}          # alpaca: chat template applied
    {"messages": [{"role": "user", "content": "<image>\nWhat?"}], "images": ["a.png"]}  # a vision model

A row without an ``id`` is named ``<file stem>-<index>`` (``prompts-2``).

Output rows, in input order, one per input row::

    {"id": "q2", "messages": [...], "output": "Hello! How can I help?",
     "finish_reason": "stop", "prompt_tokens": 31, "completion_tokens": 9}

Rows are written and flushed chunk by chunk, so an interrupted run loses at most the chunk
in flight. A rerun with the same output path keeps the complete lines already there
(checking their ids against the input), drops a half-written last line, and continues
after them: nothing is generated twice. The resolved settings go to ``OUT.config.yaml``; a
rerun whose settings differ from those (other than ``input``, ``output`` and ``batch_size``)
is refused, so one file never mixes completions of two settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from tqdm import tqdm

from sftlab.config import dump_config, flatten
from sftlab.data.prompts import PromptRow, read_prompts
from sftlab.errors import ConfigError, DataError, SftlabError
from sftlab.infer.base import Generation, Generator, SamplingConfig


@dataclass
class GenerateConfig:
    """Settings of one ``sftlab generate`` run (saved beside the output)."""

    model: str = "default"
    """The model to generate with: ``tiny``, ``default``, a Hub name or a local directory."""
    adapter: str | None = None
    """A PEFT adapter directory to load on top of ``model`` (None: the plain model)."""
    input: str = ""
    """The prompt file (JSON list or JSONL; see ``sftlab.data.prompts``)."""
    output: str = ""
    """The JSONL file the completions are appended to (a rerun resumes it)."""
    batch_size: int = 8
    """Prompts generated together."""
    dtype: str = "float32"
    """Model weights' dtype: float32, bfloat16 or float16."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps."""
    backend: Literal["auto", "hf", "llamacpp", "vllm"] = "auto"
    """Generation engine: `auto` (llama.cpp for GGUF models, `default` and .gguf files,
    when llama-cpp-python is installed, else hf), `hf` (transformers, every model and device),
    `llamacpp` (llama.cpp's CPU kernels on the same float32 weights: same greedy tokens,
    faster; `pip install 'sftlab[llamacpp]'`; `vllm`: needs the vllm package and a GPU). The saved config names the one that ran."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Decoding settings: max_new_tokens, temperature, top_p, seed, stop."""


def completed_rows(output: Path, ids: list[str]) -> int:
    """How many complete rows the output already has; truncates a half-written last line.

    Raises ``DataError`` when a kept row's id differs from the input's id at that position
    (the output belongs to another input file).
    """
    if not output.exists():
        return 0
    data = output.read_bytes()
    keep = data[:data.rfind(b"\n") + 1]  # bytes after the last newline are a partial row
    if len(keep) != len(data):
        output.write_bytes(keep)
    lines = keep.decode("utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        row_id = str(json.loads(line).get("id"))
        if number > len(ids) or row_id != ids[number - 1]:
            raise DataError(f"existing output row has id {row_id!r} but the input's row {number} is "
                            f"{ids[number - 1] if number <= len(ids) else 'missing'!r}",
                            file=str(output), line=number,
                            hint="use a new output path, or delete the old output to start over")
    return len(lines)


RESUME_MAY_CHANGE = ("input", "output", "batch_size")
"""Settings a rerun may change: the kept rows' ids are checked against the input, and the
batch size does not change what a prompt generates."""


def check_same_settings(config_path: Path, config: GenerateConfig) -> None:
    """Refuse to continue an output whose saved settings (``OUT.config.yaml``) differ from
    ``config`` in anything but ``RESUME_MAY_CHANGE``: the rows already there were generated
    with the saved ones, and the file would be overwritten to claim the new ones."""
    if not config_path.exists():
        return
    saved = flatten(yaml.safe_load(config_path.read_text()) or {})
    current = flatten(yaml.safe_load(yaml.safe_dump(asdict(config), sort_keys=False)))
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
               if key not in RESUME_MAY_CHANGE and key in saved and saved[key] != value]
    if changed:
        raise ConfigError(
            f"cannot continue {config.output}: its rows were generated with other settings "
            f"({'; '.join(changed)}; saved in {config_path}). Fix: rerun with those settings, "
            f"or use a new output path (or delete the old output) to start over")


def check_output(output: Path) -> None:
    """Refuse an output path that is a directory or whose folder cannot be created (before
    any model loads); the folder is created."""
    if output.is_dir():
        raise DataError("the output is a directory", file=str(output), hint="give a file name inside it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output's folder ({exc.strerror or exc})", file=str(output),
                        hint="check that its folder can be created and written") from None


def generate_file(generator: Generator, config: GenerateConfig, progress: bool = True) -> dict[str, Any]:
    """Run the generator over ``config.input`` into ``config.output``; returns a summary.

    Summary: ``{"rows", "skipped_existing", "generated", "completion_tokens", "seconds",
    "tokens_per_second", "output", "config"}``.
    """
    rows = read_prompts(config.input)
    output = Path(config.output)
    check_output(output)
    done = completed_rows(output, [row.id for row in rows])
    stem = output.with_suffix("") if output.suffix else output
    config_path = Path(f"{stem}.config.yaml")
    if done:
        check_same_settings(config_path, config)
    dump_config(asdict(config), config_path)
    todo = rows[done:]
    check_prompts(generator, todo, config)
    # several batches per chunk keeps sorting by length useful and losses on a crash small
    chunk = max(1, getattr(generator, "batch_size", 8)) * 4
    tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(rows), initial=done, desc="generate", unit="row", disable=not progress)
    with output.open("a", encoding="utf-8") as handle:
        for offset in range(0, len(todo), chunk):
            part = todo[offset:offset + chunk]
            generations = generator.generate([row.prompt for row in part], config.sampling)
            for row, gen in zip(part, generations):
                handle.write(json.dumps(_output_row(row, gen), ensure_ascii=False) + "\n")
                tokens += gen.completion_tokens
            handle.flush()
            bar.update(len(part))
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {"rows": len(rows), "skipped_existing": done, "generated": len(todo),
            "completion_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 and todo else 0.0,
            "output": str(output), "config": str(config_path)}


def check_prompts(generator: Generator, rows: list[PromptRow], config: GenerateConfig) -> None:
    """Encode every prompt before generating any (where the generator can: a local one's
    ``encode``), so that a prompt the model cannot take (too long for its context, a HINT
    prompt without a system turn, image placeholders that do not match its images) stops
    the run at once with the file, line and id of its row, not mid-file."""
    encode = getattr(generator, "encode", None)
    if encode is None:
        return
    for row in rows:
        try:
            encode(row.prompt, config.sampling.max_new_tokens)
        except SftlabError as error:
            raise row.located(error, config.input) from None


def _output_row(prompt: PromptRow, gen: Generation) -> dict[str, Any]:
    """The input row's id and prompt fields (``prompt``, ``messages``), then the completion."""
    out = {"id": prompt.id}
    for key in ("prompt", "messages", "image", "images"):
        if isinstance(prompt.row, dict) and key in prompt.row:
            out[key] = prompt.row[key]
    out.update(output=gen.text, finish_reason=gen.finish_reason, prompt_tokens=gen.prompt_tokens,
               completion_tokens=gen.completion_tokens)
    return out
