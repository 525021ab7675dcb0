"""Generation with a HINT run (``method: hint``): the instruction is encoded once, the model
then reads only the instance.

HINT trained on rows whose system turn holds the instruction (task definition, examples)
and whose rest is the instance. Generation does the same: each prompt is rendered with the
chat template and cut where its system turn ends (``InstructionSplit.boundary``); every
DISTINCT instruction is compiled once by the hypernetwork into adapters and a prefix
(``compile_task``), which go on the bare base model as hooks (``apply_task``) while that
instruction's prompts, the instance tokens alone, decode together in the base model's own
continuous batching. The hooks act per token and read the prefix outside the KV cache, so
they hold for every decode step. What is saved: no new token attends to the instruction's
tokens, and each instruction is read once, not once per prompt. A ``Generation``'s
``prompt_tokens`` counts the instance tokens the base model read.

    generator = HintGenerator.from_name("runs/hint")     # or backends.generator_for("runs/hint")
    generator.generate([[Message("system", "Reverse the words."), Message("user", "a b c")]])
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import torch

from sftlab.errors import DataError
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.infer.hf import CancelCheck, HFGenerator, TextCallback, row_seeds
from sftlab.models import ModelNotFoundError, adapter_base, load_model, load_tokenizer, resolve_adapter
from sftlab.models.hint import CONFIG_FILE, FORMAT, apply_task, compile_task, load_hint


def hint_run_dir(name_or_path) -> Path | None:
    """The HINT adapter directory of a run (``path`` or ``path/adapter``), else None."""
    try:
        adapter = resolve_adapter(name_or_path)
    except ModelNotFoundError:
        return None
    marker = adapter / CONFIG_FILE
    return adapter if marker.is_file() and json.loads(marker.read_text()).get("format") == FORMAT else None


class HintGenerator:
    """``sftlab.infer.base.Generator`` over a ``HintModel`` (see the module docstring)."""

    def __init__(self, hint, tokenizer, batch_size: int = 8, name: str | None = None) -> None:
        self.hint = hint.eval()
        self.tokenizer = tokenizer
        self.text = HFGenerator(hint.base, tokenizer, batch_size=batch_size, name=name)
        self.name = name or self.text.name
        self.samples_per_row = self.text.samples_per_row
        self._lock = threading.Lock()  # the hooks sit on the shared base model

    @classmethod
    def from_name(cls, path, *, batch_size: int = 8, dtype: str = "float32",
                  device: str = "cpu") -> "HintGenerator":
        """Load a HINT run: its base model (named in the adapter), the hypernetwork, and the
        run's tokenizer (its chat template defines the instruction split)."""
        adapter = hint_run_dir(path)
        if adapter is None:
            raise DataError("not a HINT run (no sftlab_adapter.json of format sftlab_hint in it or its adapter/)",
                            file=str(path))
        base = adapter_base(adapter)
        if not base:
            raise DataError("the HINT adapter does not name its base model (base_model)", file=str(adapter / CONFIG_FILE))
        model = load_model(base, dtype=dtype, device=device)
        tokenizer = load_tokenizer(base, adapter=adapter)  # the run's own (adapter/ or the run's top) first
        return cls(load_hint(model, adapter), tokenizer, batch_size=batch_size, name=str(path))

    def encode(self, prompt: Prompt, max_new_tokens: int) -> list[int]:
        """The whole rendered prompt's token ids (system turn included), context-checked and
        checked to split into instruction and instance."""
        ids = self.text.encode(prompt, max_new_tokens)
        self.split(ids)
        return ids

    def split(self, ids: list[int], index: int | None = None) -> tuple[tuple[int, ...], list[int]]:
        """``(instruction ids, instance ids)`` of one encoded prompt (``index``: its place in
        the batch, for the error)."""
        cut = self.hint.split.boundary(ids)
        if cut is None or cut >= len(ids):
            which = "the prompt" if index is None else f"prompt {index} of the batch"
            text = self.tokenizer.decode(ids[:60])
            raise DataError(f"{which} (it reads {text!r}) does not start with a system turn followed by the "
                            "instance: a HINT model reads its instruction from the system message",
                            field="messages", hint='give every prompt a {"role": "system"} turn first')
        return tuple(ids[:cut]), list(ids[cut:])

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 on_text: TextCallback | None = None, *, seeds: Sequence[int] | None = None,
                 cancelled: CancelCheck | None = None) -> list[Generation]:
        """Complete every prompt (as ``HFGenerator.generate``); one compile and one batched
        decode per distinct instruction, results in input order."""
        sampling = sampling or SamplingConfig()
        encoded = [self.text.encode(p, sampling.max_new_tokens) for p in prompts]  # split below, by index
        seeds = list(seeds) if seeds is not None else row_seeds(sampling.seed, len(encoded))
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for index, ids in enumerate(encoded):
            instruction, instance = self.split(ids, index)
            groups.setdefault(instruction, []).append((index, instance))
        results: list[Generation | None] = [None] * len(encoded)
        with self._lock:
            for instruction, members in groups.items():
                indices = [index for index, _ in members]
                task = compile_task(self.hint, list(instruction))
                with apply_task(self.hint.base, task), torch.inference_mode():
                    done = self.text.generate(
                        [instance for _, instance in members], sampling,
                        (lambda i, delta, at=indices: on_text(at[i], delta)) if on_text else None,
                        seeds=[seeds[i] for i in indices],
                        cancelled=(lambda i, at=indices: cancelled(at[i])) if cancelled else None)
                for index, generation in zip(indices, done):
                    results[index] = generation
        return results  # type: ignore[return-value]
