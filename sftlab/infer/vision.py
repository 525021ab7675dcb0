"""Generation with images: a ``Generator`` over a saved sftlab vision model.

    generator = VisionGenerator.from_name("runs/vision/model")     # or backends.generator_for(name)
    example = read_visual({"images": ["cat.png"], "messages": [
        {"role": "user", "content": "<image>\\nWhat is this?"}]})
    generator.generate([example], SamplingConfig(max_new_tokens=16))[0].text

A prompt may be a ``sftlab.data.images.VisualConversation`` (text with one ``<image>`` per
image, and the images), or any text prompt (messages, a ``Conversation``, a raw string).
How one call runs:

1. ``encode``: the text is rendered by the training renderer (``prompt_text``: the chat
   template with the generation prompt), tokenised, each image token expanded to the
   tower's ``tokens_per_image`` positions (``expand_image_tokens``) and the images loaded
   (``ImageRef.load``: a missing, corrupt or too large image is a ``DataError``) into
   ``pixel_values``. A prompt whose image tokens and images differ in number is a
   ``DataError`` (``image_count_mismatch``); one whose expanded length plus
   ``max_new_tokens`` exceeds the context is ``PromptTooLong``, saying how many of its
   tokens the images take.
2. ``generate``: the prompts, longest first, in left-padded batches of ``batch_size``: the
   image features are scattered into the embeddings (``VisionLanguageModel.embed``) and the
   LM's own ``generate`` decodes from ``inputs_embeds``; the row tracker of
   ``sftlab.infer.hf`` ends rows at end-of-sequence and stop strings and streams text.

Greedy decoding gives the same text batched or one prompt at a time
(``tests/unit/infer/test_vision_generation.py``). Sampling draws from one generator seeded by
``sampling.seed`` per call (``samples_per_row`` is False), as ``HFGenerator``'s
``model.generate`` fallback does. Continuous batching is not offered here.

``sftlab.infer.backends.generator_for(name)`` picks this generator for a vision model directory (one holding
``sftlab_vision.json``, or a run with it in ``model/`` or ``adapter/``) and ``HFGenerator``
for anything else; a text-only ``HFGenerator`` refuses prompts with images
(``ImagesNotSupported``).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from sftlab.data.images import IMAGE_PLACEHOLDER, MAX_PIXELS, VisualConversation
from sftlab.errors import ConfigError, DataError
from sftlab.infer.base import Generation, Prompt, SamplingConfig
from sftlab.infer.hf import (CancelCheck, HFGenerator, PromptTooLong, TextCallback, _criteria, _rng_devices, _Row,
                             _RowTracker, prompt_text, prompt_to_ids)
from sftlab.models import context_length
from sftlab.models.vision import expand_image_tokens, load_vision_model, pixel_values, vision_model_dir


@dataclass
class VisualPrompt:
    """A prompt ready for the vision model: ids with every image's positions expanded, and
    the pixels of its images (``[N, 3, S, S]``, ``N`` may be 0)."""

    ids: list[int]
    pixel_values: torch.Tensor
    images: int


class VisionGenerator:
    """``sftlab.infer.base.Generator`` over a ``VisionLanguageModel`` (see the module docstring).

    ``max_pixels``: images with more pixels are refused before they are decoded.
    """

    accepts_images = True
    samples_per_row = False

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str | None = None,
                 max_pixels: int = MAX_PIXELS) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = model.settings
        self.batch_size = max(1, int(batch_size))
        self.max_pixels = max_pixels
        # the LM's text generator: its end-of-sequence ids, pad id and generation settings
        self.text = HFGenerator(model.language_model, tokenizer, batch_size=batch_size, name=name)
        self.name = name or self.text.name
        self.prompts_generated = 0
        self._lock = threading.Lock()

    @classmethod
    def from_name(cls, path, *, batch_size: int = 8, dtype: str = "float32", device: str = "cpu",
                  max_pixels: int = MAX_PIXELS) -> "VisionGenerator":
        """Load a saved vision model (``load_vision_model``) from ``path`` or its run's
        ``model/`` / ``adapter/``."""
        directory = vision_model_dir(path)
        if directory is None:
            raise ConfigError(f"{path} is not a vision model (no sftlab_vision.json in it, its model/ or adapter/)")
        model, tokenizer = load_vision_model(directory, dtype=dtype)
        return cls(model.to(device), tokenizer, batch_size=batch_size, name=str(path), max_pixels=max_pixels)

    # -- prompts -> ids and pixels ----------------------------------------------------------

    def encode(self, prompt: Prompt | VisualConversation | VisualPrompt, max_new_tokens: int) -> VisualPrompt:
        """``prompt`` as a ``VisualPrompt``, checked (see the module docstring, step 1)."""
        if isinstance(prompt, VisualPrompt):
            self._check_context(prompt.ids, prompt.images, max_new_tokens)
            return prompt
        images = prompt.images if isinstance(prompt, VisualConversation) else []
        if isinstance(prompt, VisualConversation):
            text = prompt_text(self.tokenizer, prompt.conversation)
            if self.settings.image_token != IMAGE_PLACEHOLDER:
                text = text.replace(IMAGE_PLACEHOLDER, self.settings.image_token)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        else:  # a text prompt: a literal <image> in it is a placeholder without an image
            ids = prompt_to_ids(self.tokenizer, prompt)
        found = ids.count(self.settings.image_token_id)
        if found != len(images):
            raise DataError(f"the prompt holds {found} {self.settings.image_token} placeholders for "
                            f"{len(images)} images", reason="image_count_mismatch",
                            hint=f"write one {self.settings.image_token} per image, where it belongs")
        expanded = expand_image_tokens(ids, self.settings)
        self._check_context(expanded, len(images), max_new_tokens)  # before any image is decoded
        loaded = [ref.load(self.max_pixels) for ref in images]
        return VisualPrompt(expanded, pixel_values(loaded, self.settings), len(images))

    def _check_context(self, ids: list[int], images: int, max_new_tokens: int) -> None:
        limit = context_length(self.model.language_model)
        if limit and len(ids) + max_new_tokens > limit:
            image_tokens = images * self.settings.tokens_per_image
            raise PromptTooLong(f"the prompt has {len(ids)} tokens ({image_tokens} of them for "
                                f"{images} images x {self.settings.tokens_per_image}); with "
                                f"max_new_tokens={max_new_tokens} it exceeds the model's context of {limit} tokens")

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompts: Sequence, sampling: SamplingConfig | None = None,
                 on_text: TextCallback | None = None, *, seeds: Sequence[int] | None = None,
                 cancelled: CancelCheck | None = None) -> list[Generation]:
        """Complete every prompt; results in input order (``HFGenerator.generate``'s contract;
        ``seeds`` is accepted and unused: one seeded generator per call)."""
        sampling = sampling or SamplingConfig()
        encoded = [self.encode(p, sampling.max_new_tokens) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        rows: dict[int, _Row] = {}
        sampled = sampling.temperature > 0
        rng = torch.random.fork_rng(devices=_rng_devices(self.model.language_model)) if sampled \
            else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), rng:
            if sampled:
                torch.manual_seed(sampling.seed) if sampling.seed >= 0 else torch.seed()
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for row in self._generate_batch([encoded[i] for i in batch], batch, sampling, on_text, cancelled):
                    rows[row.index] = row
        self.prompts_generated += len(encoded)
        return [Generation(r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason, r.token_ids)
                for r in (rows[i] for i in range(len(encoded)))]

    def _generate_batch(self, batch: list[VisualPrompt], indices: list[int], sampling: SamplingConfig,
                        on_text: TextCallback | None, cancelled: CancelCheck | None) -> list[_Row]:
        """One left-padded batch decoded from embeddings (padding is masked out)."""
        device = next(self.model.parameters()).device
        rows_embeds = [self.model.embed(torch.tensor([p.ids], device=device), p.pixel_values.to(device))[0]
                       for p in batch]
        width = max(e.shape[0] for e in rows_embeds)
        embeds = rows_embeds[0].new_zeros((len(batch), width, rows_embeds[0].shape[-1]))
        attention = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for r, row_embeds in enumerate(rows_embeds):
            embeds[r, width - row_embeds.shape[0]:] = row_embeds
            attention[r, width - row_embeds.shape[0]:] = 1
        rows = [_Row(index=i, prompt_tokens=len(p.ids)) for i, p in zip(indices, batch)]
        # from inputs_embeds alone, generate returns only the new tokens: the prompt width is 0
        tracker = _RowTracker(self.tokenizer, rows, 0, self.text.eos_ids, sampling.stop, on_text, cancelled)
        output = self.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention, generation_config=self.text._generation_config(sampling),
            stopping_criteria=_criteria(tracker))
        tracker.finish(output)
        return rows
