"""Generation on llama.cpp's CPU kernels: the ``llamacpp`` backend (an optional extra).

    pip install 'sftlab[llamacpp]'     # llama-cpp-python 0.3.16; pip builds it from source (~5 min)
    sftlab generate default -i prompts.jsonl -o out.jsonl        # auto: llama.cpp, when installed
    sftlab eval runs/full1 --tasks gsm8k --backend llamacpp      # any model GGUF can describe

Why: on a CPU, llama.cpp decodes a small model about twice as fast as transformers at one
to eight prompts in flight (``bench/generate_peers.py``; the README has the figures).

How a ``LlamaCppGenerator`` runs:

1. the model sftlab loaded (a PEFT adapter merged into a copy) is written as a float32 GGUF
   (``sftlab.models.gguf.write_gguf``, about 2 s for 135M parameters) to a temporary file
   that llama.cpp maps and that is unlinked at once. So llama.cpp runs the very weights the
   HF backend runs, with a float32 KV cache, whatever file the model came from;
2. everything but the decode loop is ``HFGenerator``'s (this subclasses it): prompts become
   token ids through sftlab's tokenizer and chat template, completions are decoded by it, and
   stop strings, streaming, cancellation, seeds and token counts behave the same;
3. the decode loop (``LlamaCppEngine.decode``) is continuous batching over llama.cpp
   sequences: up to ``batch_size`` sequence ids in one context, each prompt prefilled alone,
   then one ``llama_decode`` per step carrying one token of every unfinished sequence; a
   finished sequence's cache is cleared and its id goes to the next waiting prompt. The
   tokens every prompt of a call starts with (a chat template's system prompt, few-shot
   examples: ``continuous.common_prefix``) are prefilled once, into a sequence of their own
   whose cache each prompt's sequence copies before its own tokens are prefilled.

A ``.gguf`` file given as the model runs as it is (``LlamaCppGenerator.from_gguf``): its own
weight types, tokenizer and chat template; a quantized file then decodes with llama.cpp's
quantized kernels, faster at few prompts in flight, with tokens of its own.

Greedy tokens equal the HF backend's (``tests/unit/infer/test_llamacpp.py``). Sampling runs
the HF backend's own sampler on llama.cpp's logits, so a seed draws the same tokens as long as
the two engines' logits agree (they differ by float rounding: a near-tie may go either way).
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import weakref
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sftlab.errors import ConfigError
from sftlab.infer.continuous import common_prefix
from sftlab.infer.hf import HFGenerator
from sftlab.models import gguf_file, load_model, load_tokenizer

INSTALL_HINT = "pip install 'sftlab[llamacpp]' (llama-cpp-python; pip builds it from source), or use --backend hf"
PREFILL_CHUNK = 512     # prompt tokens per llama_decode call while prefilling
BLOCK = 256             # a sequence's room in the context grows in multiples of this many tokens
MAX_SEQUENCES = 256     # llama.cpp's limit on sequence ids in one context (LLAMA_MAX_SEQ)


def available() -> bool:
    """True when llama-cpp-python can be imported."""
    try:
        require()
    except ConfigError:
        return False
    return True


def require():
    """The ``llama_cpp`` module, with its logging silenced (it writes every load to stderr);
    a ``ConfigError`` saying how to install it when it is missing."""
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from None
    global _QUIET
    if _QUIET is None:
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # kept: C holds it
        llama_cpp.llama_log_set(_QUIET, None)
        llama_cpp.llama_backend_init()
    return llama_cpp


_QUIET = None


class LlamaCppEngine:
    """A llama.cpp model and one context, which grows to the largest call so far.

    ``decode(prompts, slots, max_new_tokens, pick, on_token)`` is the contract of
    ``sftlab.infer.continuous.generate_continuously``: ``pick(logits [n, vocab], indices)``
    chooses the next tokens, ``on_token(index, token)`` says when a prompt is finished.
    """

    def __init__(self, gguf_path: str | Path, threads: int | None = None) -> None:
        self.lib = lib = require()
        self.threads = threads or torch.get_num_threads()
        model = lib.llama_model_load_from_file(str(gguf_path).encode(), lib.llama_model_default_params())
        if not model:
            raise ConfigError(f"llama.cpp could not load {gguf_path}; use --backend hf")
        # the C handles, freed with the engine (a finalizer must not hold the engine itself)
        self._handles = {"model": model, "context": None, "batch": None}
        weakref.finalize(self, _free, lib, self._handles)
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        self.sequences = 0      # sequence ids the context holds
        self.room = 0           # tokens each sequence may hold

    @classmethod
    def from_model(cls, model, tokenizer, threads: int | None = None) -> "LlamaCppEngine":
        """An engine over the float32 weights of a transformers model (a PEFT model's adapter
        merged into a copy; the caller's model is left as it is)."""
        from sftlab.models.gguf import write_gguf  # lazy: the gguf writer is only needed here

        from peft import PeftModel  # lazy: as in sftlab.models

        if isinstance(model, PeftModel):
            model = copy.deepcopy(model).merge_and_unload()
        handle, name = tempfile.mkstemp(suffix=".gguf", prefix="sftlab-llamacpp-")
        os.close(handle)
        try:
            with _float32(model):
                write_gguf(model, tokenizer, name, gguf_type="f32")
            return cls(name, threads)  # llama.cpp maps the file: it may go from the folder now
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def decode(self, prompts: Sequence[Sequence[int]], slots: int, max_new_tokens: int, pick, on_token) -> int:
        """Decode every prompt until ``on_token`` says it is finished, up to ``slots`` at a time;
        returns the batched decode steps taken."""
        shared = common_prefix(prompts)           # tokens every prompt starts with (0: none)
        slots = max(1, min(slots, len(prompts), MAX_SEQUENCES - bool(shared)))
        self._reserve(slots + bool(shared), max(len(p) for p in prompts) + max_new_tokens)
        memory = self.lib.llama_get_memory(self._handles["context"])
        self.lib.llama_memory_clear(memory, True)
        if shared:  # prefilled once into a sequence of its own, copied into each prompt's
            self._prefill(prompts[0][:shared], slots, logits=False)
        free = list(range(slots - 1, -1, -1))   # sequence ids not in use (the next one popped last)
        waiting = deque(range(len(prompts)))
        active: list[list[int]] = []            # [sequence id, prompt index, next position, pending token]
        steps = 0
        while waiting or active:
            while waiting and free:
                index, sequence = waiting.popleft(), free.pop()
                if shared:
                    self.lib.llama_memory_seq_cp(memory, slots, sequence, -1, -1)
                token = pick(self._prefill(prompts[index], sequence, start=shared), [index])[0]
                if on_token(index, token):
                    self.lib.llama_memory_seq_rm(memory, sequence, -1, -1)
                    free.append(sequence)
                else:
                    active.append([sequence, index, len(prompts[index]), token])
            if not active:
                continue
            logits = self._run([(token, position, sequence, True) for sequence, _, position, token in active])
            steps += 1
            chosen = pick(logits, [entry[1] for entry in active])
            still = []
            for entry, token in zip(active, chosen):
                entry[2], entry[3] = entry[2] + 1, token
                if on_token(entry[1], token):
                    self.lib.llama_memory_seq_rm(memory, entry[0], -1, -1)  # its cache, now free
                    free.append(entry[0])
                else:
                    still.append(entry)
            active = still
        return steps

    def _prefill(self, prompt: Sequence[int], sequence: int, start: int = 0,
                 logits: bool = True) -> torch.Tensor | None:
        """``prompt[start:]`` into ``sequence``'s cache (which holds its first ``start`` tokens),
        in chunks; the last position's logits [1, vocab] (None when ``logits`` is False)."""
        out = None
        for begin in range(start, len(prompt), PREFILL_CHUNK):
            chunk = prompt[begin:begin + PREFILL_CHUNK]
            last = begin + len(chunk) == len(prompt)
            out = self._run([(token, begin + i, sequence, logits and last and i == len(chunk) - 1)
                             for i, token in enumerate(chunk)])
        return out

    def _run(self, entries: list[tuple[int, int, int, bool]]) -> torch.Tensor | None:
        """One ``llama_decode`` of ``entries`` (token, position, sequence id, wants logits);
        the logits of the entries that want them, in order, as a float32 tensor [n, vocab]."""
        batch, context = self._handles["batch"], self._handles["context"]
        for i, (token, position, sequence, wants) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, wants
        batch.n_tokens = len(entries)
        status = self.lib.llama_decode(context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} on a batch of {len(entries)} tokens")
        outputs = sum(entry[3] for entry in entries)
        if not outputs:
            return None
        rows = np.ctypeslib.as_array(self.lib.llama_get_logits(context), shape=(outputs, self.n_vocab))
        return torch.from_numpy(rows.copy())  # llama.cpp reuses that buffer on the next decode

    def _reserve(self, sequences: int, length: int) -> None:
        """A context with room for ``sequences`` sequences of ``length`` tokens each; the current
        one when it is big enough, else a bigger one (never smaller than before)."""
        if self._handles["context"] and sequences <= self.sequences and length <= self.room:
            return
        sequences, room = max(sequences, self.sequences), max(-(-length // BLOCK) * BLOCK, self.room)
        _free(self.lib, self._handles, keep_model=True)
        params = self.lib.llama_context_default_params()
        params.n_seq_max, params.n_ctx = sequences, sequences * room  # each sequence gets n_ctx / n_seq_max
        params.n_batch = params.n_ubatch = max(PREFILL_CHUNK, sequences)
        params.n_threads = params.n_threads_batch = self.threads
        params.type_k = params.type_v = self.lib.GGML_TYPE_F32  # the HF backend's cache is float32 too
        context = self.lib.llama_init_from_model(self._handles["model"], params)
        if not context:
            raise RuntimeError(f"llama.cpp could not make a context of {sequences} x {room} tokens "
                               "(out of memory?); lower batch_size or max_new_tokens")
        self._handles["context"] = context
        self._handles["batch"] = self.lib.llama_batch_init(params.n_batch, 0, 1)
        self.sequences, self.room = sequences, room


def _free(lib, handles: dict, keep_model: bool = False) -> None:
    """Free the context and batch in ``handles`` (and the model unless ``keep_model``)."""
    batch, context = handles["batch"], handles["context"]
    handles["batch"] = handles["context"] = None
    if batch is not None:
        lib.llama_batch_free(batch)
    if context:
        lib.llama_free(context)
    if not keep_model and handles["model"]:
        lib.llama_model_free(handles["model"])
        handles["model"] = None


@contextlib.contextmanager
def _float32(model):
    """``model`` in float32 while it is written (a bfloat16 or float16 model goes back after)."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield
        return
    model.float()
    try:
        yield
    finally:
        model.to(dtype)


class LlamaCppGenerator(HFGenerator):
    """``HFGenerator`` with llama.cpp's decode loop (see the module docstring).

    ``model`` must be one ``write_gguf`` can describe (Llama-family architectures); it stays
    usable by the caller (evaluation reads its log-likelihoods), but generation never runs it.
    ``threads``: llama.cpp's CPU threads (default: torch's).
    """

    backend = "llamacpp"
    samples_per_row = True

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str | None = None,
                 threads: int | None = None, engine: LlamaCppEngine | None = None) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size, name=name)
        # engine: given by from_gguf (a file run as it is), else made from the model's weights
        self.engine = engine or LlamaCppEngine.from_model(model, tokenizer, threads)

    @classmethod
    def from_name(cls, name_or_path: str, *, adapter=None, batch_size: int = 8, dtype: str = "float32",
                  device: str = "cpu", trust_remote_code: bool = False) -> "LlamaCppGenerator":
        """Load with ``sftlab.models`` and hand the weights to llama.cpp; the torch copy of
        the weights is released (only its config stays)."""
        if device != "cpu":
            raise ConfigError(f"the llamacpp backend runs on the CPU (device={device!r}); use --backend hf")
        if gguf_file(name_or_path) is not None:
            if adapter:
                raise ConfigError(f"{name_or_path}: the llamacpp backend runs a GGUF file as it is, without an "
                                  "adapter; use --backend hf (it dequantizes the file), or merge and export "
                                  "(`sftlab export RUN --merge --gguf`)")
            return cls.from_gguf(name_or_path, batch_size=batch_size)
        model = load_model(name_or_path, adapter=adapter, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(name_or_path, adapter=adapter, trust_remote_code=trust_remote_code)
        generator = cls(model, tokenizer, batch_size=batch_size, name=str(name_or_path))
        generator.model = model.to("meta")  # config and generation config stay; 4 bytes a weight go
        return generator

    @classmethod
    def from_gguf(cls, path: str | Path, *, batch_size: int = 8, threads: int | None = None) -> "LlamaCppGenerator":
        """A GGUF file run as it is, in its own weight types (a quantized file decodes with
        llama.cpp's quantized kernels: tokens differ from the dequantized HF model's). The
        tokenizer, chat template and end-of-sequence ids are the file's own, read by transformers."""
        from transformers import AutoConfig, AutoModelForCausalLM  # lazy: as in sftlab.models

        path = Path(path).expanduser()
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        with torch.device("meta"):  # a weightless stand-in: HFGenerator reads its configs only
            stand_in = AutoModelForCausalLM.from_config(config)
        return cls(stand_in, load_tokenizer(str(path)), batch_size=batch_size, name=str(path),
                   engine=LlamaCppEngine(path, threads))

    @property
    def _logits_device(self):
        return torch.device("cpu")

    def _decode(self, encoded: list[list[int]], pick, on_token, max_new_tokens: int) -> int:
        return self.engine.decode(encoded, self.batch_size, max_new_tokens, pick, on_token)
