"""Where an evaluation's answers come from: a local model, a served endpoint, or a file.

``EvalBackend`` loads what a task needs, once, when it first needs it:

- log-likelihood tasks always read a local model's logits (``local_model``);
- generation tasks use ``generator()``: an ``OpenAIGenerator`` when ``base_url`` is set,
  else an ``HFGenerator`` over the local model (a ``LlamaCppGenerator`` over the same
  weights with ``engine="llamacpp"``; ``sftlab.infer.backends``);
- with ``responses`` set, nothing generates: ``read_responses`` + ``match_responses``
  pair every item with its precomputed answer, and no model is loaded at all.

    backend = EvalBackend("tiny", batch_size=8)
    backend.generator().generate(["Q: 2+2?\\nA:"], SamplingConfig(max_new_tokens=8))
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sftlab.data.io import read_objects, record_error
from sftlab.errors import ConfigError, DataError
from sftlab.eval.remote import OpenAIGenerator
from sftlab.data.images import VisualConversation
from sftlab.infer.hf import HFGenerator, prompt_text, prompt_to_ids
from sftlab.infer.llamacpp import LlamaCppGenerator
from sftlab.infer.vision import VisionGenerator
from sftlab.models.vision import vision_model_dir
from sftlab.models import context_length, load_model, load_tokenizer


class EvalBackend:
    """The model, tokenizer or remote generator of one evaluation, loaded lazily.

    ``generator`` / ``model`` + ``tokenizer`` may be given ready-made (tests, the
    quickstart); otherwise they are loaded from ``model`` (a name or directory).
    """

    def __init__(self, model: str | None, *, adapter: str | None = None, dtype: str = "float32",
                 device: str = "cpu", engine: str = "hf", batch_size: int = 8, base_url: str | None = None,
                 api_model: str | None = None, responses: str | None = None,
                 generator=None, loaded_model=None, tokenizer=None) -> None:
        self.model_name, self.adapter, self.dtype, self.device = model, adapter, dtype, device
        self.engine = engine  # "hf" or "llamacpp": what generates with the local model
        self.batch_size, self.base_url, self.api_model, self.responses = batch_size, base_url, api_model, responses
        self._generator, self._model, self._tokenizer = generator, loaded_model, tokenizer

    def local_model(self):
        """``(model, tokenizer)``, the model in eval mode on ``device``."""
        if self._model is None:
            self._model = load_model(self._name(), adapter=self.adapter, dtype=self.dtype,
                                     device=self.device).eval()
        return self._model, self.tokenizer()

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._name(), adapter=self.adapter)
        return self._tokenizer

    def generator(self):
        """The remote generator when ``base_url`` is set, else one over the local model."""
        if self._generator is None:
            if self.base_url:
                self._generator = OpenAIGenerator(self.base_url, self.api_model)
            elif vision_model_dir(self._name()) is not None:  # prompts with images need the vision generator
                if self.adapter:
                    raise ConfigError("a vision model takes no --adapter: evaluate its run's adapter/ directory")
                self._generator = VisionGenerator.from_name(self._name(), batch_size=self.batch_size,
                                                            dtype=self.dtype, device=self.device)
                self._tokenizer = self._generator.tokenizer
            else:
                model, tokenizer = self.local_model()
                engine = LlamaCppGenerator if self.engine == "llamacpp" else HFGenerator
                self._generator = engine(model, tokenizer, batch_size=self.batch_size, name=self.model_name)
        return self._generator

    def render(self, prompt) -> Any:
        """The prompt as the model sees it: chat-templated text when we hold the tokenizer,
        else the messages themselves (a remote server applies its own template)."""
        if isinstance(prompt, str):
            return prompt
        tokenizer = self._tokenizer if self.responses is None else None
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return prompt_text(tokenizer, prompt)  # what the server and training render
        if isinstance(prompt, VisualConversation):
            prompt = prompt.conversation.messages
        return [m.to_dict() for m in prompt]

    def context_length(self) -> int | None:
        """The local model's context in tokens; None for a remote model."""
        if self.base_url or (self._model is None and self._generator is not None):
            return None
        model, _ = self.local_model()
        return context_length(model)

    def count_tokens(self, prompt) -> int:
        return len(prompt_to_ids(self.tokenizer(), prompt))

    def chat_template_hash(self) -> str | None:
        template = getattr(self._tokenizer, "chat_template", None)
        return hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None

    def _name(self) -> str:
        if not self.model_name:
            raise ConfigError("this evaluation needs a MODEL (log-likelihood tasks and generation "
                              "without --responses run one)")
        return self.model_name


# ---------------------------------------------------------------- precomputed responses

class ResponseRows(list):
    """The rows of a responses file, with the file they came from (``path``) and where each
    row sits in it (``places``: "line 3" or "record 2"), for errors."""

    path: str = "<responses>"
    places: list[str] = []


def read_responses(path: str | Path) -> ResponseRows:
    """Rows of a JSON list or JSONL file; each needs a ``response`` (or ``output``/``text``/
    ``completion``) string. A row that is not an object or lacks a response raises a
    ``DataError`` naming the file and line (or record)."""
    path = Path(path)
    rows = ResponseRows()
    rows.path, rows.places = str(path), []
    for record in read_objects(path):
        row = record.value
        response = next((row[k] for k in ("response", "output", "text", "completion") if k in row), None)
        if not isinstance(response, str):
            raise record_error(record, path, f"no response string (got {response!r:.40})", field="response",
                               hint="give each row a 'response' string")
        row["response"] = response
        rows.append(row)
        rows.places.append(f"line {record.line}" if record.line is not None else f"record {record.index}")
    return rows


def match_responses(docs, prompts, rows) -> list[str]:
    """Pair each doc with a response: by ``id``, else by prompt text, else by position (then
    the file must hold exactly one row per item). An ``id`` or ``prompt`` given twice is an
    error, not "the last one wins"."""
    file = getattr(rows, "path", None)
    by_id = _unique(rows, "id", str, file)
    by_prompt = _unique([r if isinstance(r.get("prompt"), str) else {} for r in rows], "prompt", str, file,
                        getattr(rows, "places", None))
    if not by_id and not by_prompt and len(rows) != len(docs):
        raise DataError(f"{len(rows)} responses for {len(docs)} items, matched by position", file=file,
                        hint="give one row per item, or give each row the item's 'id'")
    outputs = []
    for index, (doc, prompt) in enumerate(zip(docs, prompts)):
        messages = prompt.conversation.messages if isinstance(prompt, VisualConversation) else prompt
        text = prompt if isinstance(prompt, str) else (messages[-1].content if messages else "")
        if str(doc["id"]) in by_id:
            outputs.append(by_id[str(doc["id"])])
        elif text in by_prompt:
            outputs.append(by_prompt[text])
        elif not by_id and not by_prompt:
            outputs.append(rows[index]["response"])
        else:
            raise DataError(f"no response for item '{doc['id']}'", file=file,
                            hint="give each row the item's 'id' or its 'prompt' text")
    return outputs


def _unique(rows, key: str, convert, file: str | None, places: list[str] | None = None) -> dict[str, str]:
    """``convert(row[key]) -> response`` over the rows holding ``key``; a value twice raises."""
    places = places if places is not None else getattr(rows, "places", None)
    found: dict[str, str] = {}
    first: dict[str, int] = {}
    for index, row in enumerate(rows):
        if key not in row:
            continue
        value = convert(row[key])
        if value in found:
            where = (lambda i: places[i] if places else f"record {i}")
            raise DataError(f"{key} {value[:60]!r} is given twice ({where(first[value])} and {where(index)})",
                            file=file, field=key, hint="keep one response per item")
        found[value], first[value] = row["response"], index
    return found
