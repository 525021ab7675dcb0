"""Generate completions for a JSONL file of prompts, resumably.

Input rows (one JSON object per line)::

    {"id": "q1", "prompt": "Once upon a time"}                       # raw text, used as is
    {"id": "q2", "messages": [{"role": "user", "content": "Hi"}]}    # chat template applied

Output rows, in input order, one per input row::

    {"id": "q2", "messages": [...], "output": "Hello! How can I help?",
     "finish_reason": "stop", "prompt_tokens": 31, "completion_tokens": 9}

Rows are written and flushed chunk by chunk, so an interrupted run loses at most the chunk
in flight. A rerun with the same output path keeps the complete lines already there
(checking their ids against the input), drops a half-written last line, and continues
after them: nothing is generated twice. The resolved settings go to ``OUT.config.yaml``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftlab.errors import DataError
from sftlab.infer.base import Generator, Prompt, SamplingConfig
from sftlab.types import ROLES, Message


@dataclass
class GenerateConfig:
    """Settings of one ``sftlab generate`` run (saved beside the output)."""

    model: str = "default"
    adapter: str | None = None
    input: str = ""
    output: str = ""
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def read_prompts(path: str | Path) -> list[tuple[str, Prompt, dict[str, Any]]]:
    """``(id, prompt, row)`` for every line; ids default to the 0-based line index as a string.

    Raises ``DataError`` naming the file and line for malformed rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("input file not found", file=str(path))
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON ({exc.msg})", file=str(path), line=number) from None
            prompt = _row_prompt(row, str(path), number)
            row_id = str(row.get("id", len(prompts)))
            prompts.append((row_id, prompt, row))
    return prompts


def _row_prompt(row: Any, file: str, line: int) -> Prompt:
    if not isinstance(row, dict):
        raise DataError("a row must be a JSON object", file=file, line=line)
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    messages = row.get("messages")
    hint = 'give "prompt": "text" or "messages": [{"role": "user", "content": "..."}]'
    if not isinstance(messages, list) or not messages:
        raise DataError("no prompt", file=file, line=line, field="prompt/messages", hint=hint)
    out = []
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise DataError(f"bad message {m!r}", file=file, line=line, field="messages", hint=hint)
        out.append(Message(m["role"], m["content"]))
    return out


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


def generate_file(generator: Generator, config: GenerateConfig, progress: bool = True) -> dict[str, Any]:
    """Run the generator over ``config.input`` into ``config.output``; returns a summary.

    Summary: ``{"rows", "skipped_existing", "generated", "completion_tokens", "seconds",
    "tokens_per_second", "output", "config"}``.
    """
    from tqdm import tqdm

    from sftlab.config import dump_config

    rows = read_prompts(config.input)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = completed_rows(output, [row_id for row_id, _, _ in rows])
    stem = output.with_suffix("") if output.suffix else output
    config_path = Path(f"{stem}.config.yaml")
    dump_config(asdict(config), config_path)
    todo = rows[done:]
    # several batches per chunk keeps sorting by length useful and losses on a crash small
    chunk = max(1, getattr(generator, "batch_size", 8)) * 4
    tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(rows), initial=done, desc="generate", unit="row", disable=not progress)
    with output.open("a", encoding="utf-8") as handle:
        for offset in range(0, len(todo), chunk):
            part = todo[offset:offset + chunk]
            generations = generator.generate([prompt for _, prompt, _ in part], config.sampling)
            for (row_id, _, row), gen in zip(part, generations):
                handle.write(json.dumps(_output_row(row_id, row, gen), ensure_ascii=False) + "\n")
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


def _output_row(row_id: str, row: dict[str, Any], gen) -> dict[str, Any]:
    out = {"id": row_id}
    for key in ("prompt", "messages"):
        if key in row:
            out[key] = row[key]
    out.update(output=gen.text, finish_reason=gen.finish_reason, prompt_tokens=gen.prompt_tokens,
               completion_tokens=gen.completion_tokens)
    return out
