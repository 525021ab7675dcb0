"""Batched generation with a Hugging Face causal LM: the default backend.

    from sftlab.infer.hf import HFGenerator
    from sftlab.infer.base import SamplingConfig
    from sftlab.types import Message

    gen = HFGenerator.from_name("default", batch_size=8)
    out = gen.generate([[Message("user", "Name three colours.")], "Once upon a time"],
                       SamplingConfig(max_new_tokens=32))
    out[0].text, out[0].finish_reason          # ('Red, green and blue.', 'stop')

How a call runs:

1. every prompt becomes token ids: a message list through the tokenizer's chat template
   (with the assistant generation prompt), a raw string as is;
2. ``sftlab.infer.continuous`` decodes them with continuous batching: up to ``batch_size``
   sequences in flight, each prompt prefilled alone and unpadded, a finished sequence
   replaced at once by the next prompt (see that module);
3. after every token, a per-row tracker decodes the row, detects end-of-sequence and stop
   strings, finishes the row and, when asked, streams new text to a callback;
4. results go back in input order.

Greedy decoding of a batch gives the same tokens as one prompt at a time (padding is
masked and position ids are per row); ``tests/unit/infer/test_hf.py`` checks it. Sampling
draws every row from its own generator seeded by ``(seed, prompt index)`` (or by the
caller's ``seeds``, one per row: the server batches requests with different seeds), so a
seeded call returns the same text whatever the batch size.

A prompt may also be given as token ids (``HFGenerator.encode`` makes them): the server
renders and tokenises in its request handlers, off the batching thread.

Models the continuous engine cannot drive (a PEFT prompt-learning adapter, a sliding-window
or linear-attention cache) run through ``model.generate`` in fixed left-padded batches.
"""
from __future__ import annotations

import contextlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from sftlab.data.chat import apply_template
from sftlab.data.images import VisualConversation
from sftlab.errors import ConfigError
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.infer.continuous import generate_continuously, supports_continuous
from sftlab.models import context_length, load_model, load_tokenizer, pad_id
from sftlab.types import Conversation, Message

# on_text(index_in_input_order, new_text): called as text becomes final, for streaming
TextCallback = Callable[[int, str], None]
# cancelled(index_in_input_order): True when nobody waits for that row any more
CancelCheck = Callable[[int], bool]


class PromptTooLong(ConfigError):
    """A prompt plus its ``max_new_tokens`` does not fit the model's context."""


class ImagesNotSupported(ConfigError):
    """A prompt with images sent to a text-only model (``sftlab.infer.vision`` serves images)."""


def refuse_images(prompt, model_name: str) -> None:
    """``ImagesNotSupported`` when ``prompt`` is a ``VisualConversation`` with images: a
    text-only model would otherwise see the ``<image>`` placeholders as text."""
    count = len(getattr(prompt, "images", None) or []) if isinstance(prompt, VisualConversation) else 0
    if count:
        raise ImagesNotSupported(f"model {model_name} is text-only: it cannot take the prompt's {count} image(s); "
                                 "use a vision model directory (one with sftlab_vision.json, from `sftlab train` "
                                 "with objective=vision)")


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The text a prompt is tokenised from: for messages (or a ``Conversation``, with its
    tools) the chat template with the generation prompt, rendered by the same function
    training renders with (``sftlab.data.chat.apply_template``); a raw string as is."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, VisualConversation):  # rendered with its <image> placeholders as text
        prompt = prompt.conversation
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this tokenizer has no chat template; pass raw string prompts instead "
                          "of messages, or use a chat model")
    if isinstance(prompt, Conversation):
        return apply_template(tokenizer, prompt.messages, tools=prompt.tools, add_generation_prompt=True)
    messages = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in prompt]
    return apply_template(tokenizer, messages, add_generation_prompt=True)


def prompt_to_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of one prompt: chat template + generation prompt for messages, raw text as is.

    >>> tok.decode(prompt_to_ids(tok, [Message("user", "Hi")]))
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return _tokenise(tokenizer, prompt_text(tokenizer, prompt), raw=isinstance(prompt, str))


def _tokenise(tokenizer, text: str, raw: bool) -> list[int]:
    # a chat template already writes any BOS it wants: special tokens only for raw text
    return list(tokenizer(text, add_special_tokens=raw)["input_ids"])


def row_seeds(seed: int, count: int) -> list[int]:
    """Seeds of the ``count`` rows of a call (or request) with sampling ``seed``: row ``i``'s
    generator is seeded by ``(seed, i)``; ``seed < 0`` draws fresh randomness."""
    base = seed if seed >= 0 else secrets.randbits(62)
    return [hash((base, i)) & (2 ** 62 - 1) for i in range(count)]


def _is_token_ids(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)


@dataclass
class _Row:
    """Decoding state of one prompt while its batch generates."""

    index: int              # position in the caller's prompt list
    prompt_tokens: int
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    emitted: int = 0        # characters of text already streamed
    token_ids: list[int] = field(default_factory=list)  # the completion as sampled (eos included)


class _RowTracker:
    """Watches every row after each new token: decodes it, marks it done on an
    end-of-sequence token or a stop string (text is cut before the stop string), and streams
    the text that can no longer change. ``on_token`` serves the continuous engine;
    ``__call__`` is a stopping criterion for ``model.generate`` (returns a (batch,) bool
    tensor, as transformers' StoppingCriteriaList expects).
    """

    def __init__(self, tokenizer, rows: list[_Row], prompt_len: int, eos_ids: set[int],
                 stop: list[str], on_text: TextCallback | None, cancelled: CancelCheck | None = None) -> None:
        # prompt_len: the padded prompt width of a ``model.generate`` batch (0 otherwise)
        self.tokenizer, self.rows, self.prompt_len = tokenizer, rows, prompt_len
        self.eos_ids, self.stop, self.on_text = eos_ids, [s for s in stop if s], on_text
        self.cancelled = cancelled
        # a stop string may start in text we have not seen yet: hold back that many chars
        self.hold = max((len(s) for s in self.stop), default=1) - 1

    def __call__(self, input_ids, scores, **kwargs):
        done = []
        for row, ids in zip(self.rows, input_ids[:, self.prompt_len:].tolist()):
            if row.finish_reason is None:
                self._update(row, ids)
            done.append(row.finish_reason is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def on_token(self, row: _Row, ids: list[int], max_new_tokens: int) -> bool:
        """After ``ids`` (the row's completion so far) grew by one token: True when the row is done."""
        self._update(row, ids)
        if row.finish_reason is None and len(ids) >= max_new_tokens:
            row.finish_reason = "length"
            self._emit(row)
        return row.finish_reason is not None

    def _update(self, row: _Row, ids: list[int]) -> None:
        row.completion_tokens = len(ids)
        row.token_ids = list(ids)
        if ids[-1] in self.eos_ids:
            row.finish_reason = "stop"
            ids = ids[:-1]
        row.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        self._cut_at_stop(row)
        if row.finish_reason is None and self.cancelled is not None and self.cancelled(row.index):
            row.finish_reason = "stop"  # nobody reads it: free the row's batch slot now
        self._emit(row)

    def _cut_at_stop(self, row: _Row) -> None:
        hits = [i for i in (row.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            row.text = row.text[:min(hits)]
            row.finish_reason = "stop"

    def _emit(self, row: _Row) -> None:
        if self.on_text is None:
            return
        end = len(row.text)
        if row.finish_reason is None:
            end -= self.hold
            # a trailing U+FFFD is half of a multi-byte character still being generated
            while end > row.emitted and row.text[end - 1] == "\ufffd":
                end -= 1
        if end > row.emitted:
            self.on_text(row.index, row.text[row.emitted:end])
            row.emitted = end

    def finish(self, input_ids) -> None:
        """After generate returns: rows still open ran out of tokens (``length``)."""
        for row, ids in zip(self.rows, input_ids[:, self.prompt_len:].tolist()):
            if row.finish_reason is None:
                self._update(row, ids)
                if row.finish_reason is None:
                    row.finish_reason = "length"
                self._emit(row)


class HFGenerator:
    """``sftlab.infer.base.Generator`` over a transformers model (optionally PEFT-wrapped).

    ``batch_size``: sequences decoded together (in flight at once). Sampling is
    reproducible: a call with the same prompts, settings and ``seed`` returns the same text
    whatever the batch size (``seed=-1``: fresh randomness every call).
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.pad_id = pad_id(tokenizer)
        self.eos_ids = self._eos_ids()
        # counters: prompts completed, and batched decode steps of the continuous engine
        self.prompts_generated = 0
        self.decode_steps = 0
        # one call at a time: calls share the model and seed torch's global generator
        self._lock = threading.Lock()
        # no token's text is longer: a prompt longer than this times the context cannot fit
        self._longest_token = max(map(len, tokenizer.get_vocab()), default=1)

    @classmethod
    def from_name(cls, name_or_path: str, *, adapter=None, batch_size: int = 8, dtype: str = "float32",
                  device: str = "cpu", trust_remote_code: bool = False) -> "HFGenerator":
        """Load with ``sftlab.models`` (``default``, ``tiny``, a directory or hub id)."""
        model = load_model(name_or_path, adapter=adapter, dtype=dtype, device=device,
                           trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(name_or_path, adapter=adapter, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, batch_size=batch_size, name=str(name_or_path))

    @property
    def samples_per_row(self) -> bool:
        """True when ``generate(seeds=...)`` samples every row from its own generator (the
        continuous engine); the ``model.generate`` fallback seeds one generator per call."""
        return supports_continuous(self.model)

    def encode(self, prompt: Prompt, max_new_tokens: int) -> list[int]:
        """Token ids of ``prompt`` (a message list, a string, or token ids), checked to fit the
        context with ``max_new_tokens``; raises ``PromptTooLong`` before tokenising a text
        too long for any tokenisation to fit."""
        refuse_images(prompt, self.name)
        if not _is_token_ids(prompt):
            text, limit = prompt_text(self.tokenizer, prompt), context_length(self.model)
            if limit and len(text) > limit * self._longest_token:
                raise PromptTooLong(f"the prompt has {len(text)} characters: more than the model's context "
                                    f"of {limit} tokens can hold; shorten it")
            prompt = _tokenise(self.tokenizer, text, raw=isinstance(prompt, str))
        self._check_context([prompt], max_new_tokens)
        return prompt

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None,
                 on_text: TextCallback | None = None, *, seeds: Sequence[int] | None = None,
                 cancelled: CancelCheck | None = None) -> list[Generation]:
        """Complete every prompt (message lists, strings or token ids); results in input order.

        ``on_text(i, delta)`` (optional) receives the text of prompt ``i`` piece by piece as
        it is generated (stop strings never leak into it); used for streaming.
        ``seeds`` (optional, one per prompt): the seed of each row's sampling generator,
        instead of ``row_seeds(sampling.seed, len(prompts))`` (only where ``samples_per_row``;
        the ``model.generate`` fallback seeds its one generator with ``sampling.seed``).
        ``cancelled(i)`` (optional): when it turns True, row ``i`` ends at its next token.
        """
        sampling = sampling or SamplingConfig()
        for prompt in prompts:
            refuse_images(prompt, self.name)
        encoded = [p if _is_token_ids(p) else prompt_to_ids(self.tokenizer, p) for p in prompts]
        self._check_context(encoded, sampling.max_new_tokens)
        with self._lock, torch.inference_mode():
            if self.samples_per_row:
                seeds = list(seeds) if seeds is not None else row_seeds(sampling.seed, len(encoded))
                rows = self._generate_continuously(encoded, sampling, on_text, seeds, cancelled)
            else:
                rows = self._generate_with_hf(encoded, sampling, on_text, cancelled)
        self.prompts_generated += len(encoded)
        return [Generation(r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason, r.token_ids)
                for r in rows]

    def _generate_continuously(self, encoded: list[list[int]], sampling: SamplingConfig,
                               on_text: TextCallback | None, seeds: list[int],
                               cancelled: CancelCheck | None) -> list[_Row]:
        rows = [_Row(index=i, prompt_tokens=len(ids)) for i, ids in enumerate(encoded)]
        tracker = _RowTracker(self.tokenizer, rows, 0, self.eos_ids, sampling.stop, on_text, cancelled)
        completions: list[list[int]] = [[] for _ in encoded]

        def on_token(index: int, token: int) -> bool:
            completions[index].append(token)
            return tracker.on_token(rows[index], completions[index], sampling.max_new_tokens)

        pick = _greedy if sampling.temperature <= 0 else _Sampler(sampling, seeds, self._logits_device)
        self.decode_steps += self._decode(encoded, pick, on_token, sampling.max_new_tokens)
        return rows

    @property
    def _logits_device(self):
        """Where ``_decode`` hands ``pick`` its logits (the samplers' generators live there)."""
        return self.model.device

    def _decode(self, encoded: list[list[int]], pick, on_token, max_new_tokens: int) -> int:
        """The decode loop: every prompt until ``on_token`` says it is done (at most
        ``max_new_tokens`` each); returns the batched steps taken. Another engine
        (``sftlab.infer.llamacpp``) replaces only this."""
        return generate_continuously(self.model, encoded, self.batch_size, pick, on_token)

    def _generate_with_hf(self, encoded: list[list[int]], sampling: SamplingConfig,
                          on_text: TextCallback | None, cancelled: CancelCheck | None) -> list[_Row]:
        """``model.generate`` in fixed left-padded batches, longest prompts first."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        rows: dict[int, _Row] = {}
        rng = torch.random.fork_rng(devices=_rng_devices(self.model)) if sampling.temperature > 0 \
            else contextlib.nullcontext()
        with rng:
            if sampling.temperature > 0:
                # seed < 0 asks for fresh randomness (the server's requests without a seed)
                torch.manual_seed(sampling.seed) if sampling.seed >= 0 else torch.seed()
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for row in self._generate_batch([encoded[i] for i in batch], batch, sampling, on_text, cancelled):
                    rows[row.index] = row
        return [rows[i] for i in range(len(encoded))]

    def _generate_batch(self, batch_ids: list[list[int]], indices: list[int], sampling: SamplingConfig,
                        on_text: TextCallback | None, cancelled: CancelCheck | None) -> list[_Row]:
        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for r, ids in enumerate(batch_ids):  # left padding: every row ends at the same column
            input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[r, width - len(ids):] = 1
        rows = [_Row(index=i, prompt_tokens=len(ids)) for i, ids in zip(indices, batch_ids)]
        tracker = _RowTracker(self.tokenizer, rows, width, self.eos_ids, sampling.stop, on_text, cancelled)
        device = self.model.device
        output = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device),
            generation_config=self._generation_config(sampling),
            stopping_criteria=_criteria(tracker))
        tracker.finish(output)
        return rows

    def _generation_config(self, sampling: SamplingConfig):
        sample = sampling.temperature > 0
        # a fresh config: the checkpoint's own defaults (e.g. top_k=50, repetition penalty)
        # must not silently change what the caller asked for
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=sampling.top_k if sample else None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            use_cache=True,
        )

    def _check_context(self, encoded: list[list[int]], max_new_tokens: int) -> None:
        limit = context_length(self.model)
        for i, ids in enumerate(encoded):
            which = "the prompt" if len(encoded) == 1 else f"prompt {i}"
            if not ids:
                raise ConfigError(f"{which} is empty (no tokens): give every prompt some text")
            if limit and len(ids) + max_new_tokens > limit:
                raise PromptTooLong(f"{which} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                                    f"it exceeds the model's context of {limit} tokens")

    def _eos_ids(self) -> set[int]:
        return eos_ids_of(self.model.config, getattr(self.model, "generation_config", None), self.tokenizer)


def eos_ids_of(config, generation_config, tokenizer) -> set[int]:
    """The token ids generation stops at: every ``eos_token_id`` of the generation config and
    the model config (an id or a list), and the tokenizer's eos."""
    ids: set[int] = set()
    for source in (generation_config, config):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _greedy(logits, indices: list[int]) -> list[int]:
    return logits.argmax(-1).tolist()


class _Sampler:
    """Temperature, top-k and top-p (nucleus) sampling, in that order (as transformers does),
    one ``torch.Generator`` per prompt seeded by its entry of ``seeds`` (see ``row_seeds``),
    so a row's draws do not depend on which rows share its batch."""

    def __init__(self, sampling: SamplingConfig, seeds: list[int], device) -> None:
        self.sampling = sampling
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, logits, indices: list[int]) -> list[int]:
        probs = filter_logits(logits.float() / self.sampling.temperature,
                              self.sampling.top_k, self.sampling.top_p).softmax(-1)
        return [int(torch.multinomial(row, 1, generator=self.generators[i]))
                for row, i in zip(probs, indices)]


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """``logits [B, vocab]`` with everything outside the top ``k`` and outside the smallest set
    whose probability reaches ``top_p`` set to ``-inf`` (the most likely token always stays)."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop[..., 0] = False  # top_p <= 0 would drop every token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


class _TrackerCriteria(StoppingCriteria):
    """A ``_RowTracker`` as a transformers stopping criterion (``model.generate`` wants a
    ``StoppingCriteria`` instance)."""

    def __init__(self, tracker: _RowTracker) -> None:
        self.tracker = tracker

    def __call__(self, input_ids, scores, **kwargs):
        return self.tracker(input_ids, scores, **kwargs)


def _criteria(tracker: _RowTracker) -> StoppingCriteriaList:
    return StoppingCriteriaList([_TrackerCriteria(tracker)])


def _rng_devices(model) -> list:
    device = getattr(model, "device", None)
    return [device] if device is not None and device.type == "cuda" else []


def generate(model: str, prompts: Sequence[Prompt], sampling: SamplingConfig | None = None, *,
             adapter=None, batch_size: int = 8, device: str = "cpu") -> list[Generation]:
    """Load ``model`` (``default``, ``tiny``, a directory, a run or a hub id) and complete
    ``prompts`` (strings are raw text; message lists get the chat template)::

        generate("default", [[Message("user", "Name three primes.")]],
                 SamplingConfig(max_new_tokens=32))[0].text
    """
    generator = HFGenerator.from_name(model, adapter=adapter, batch_size=batch_size, device=device)
    return generator.generate(prompts, sampling)
