"""A LLaVA-style vision-language model: a Hugging Face vision tower, an MLP projector and
any causal LM of sftlab's.

    tower   = load_vision_tower("tiny-clip")         # or a CLIP / SigLIP directory or hub id
    model   = build_vision_model(load_model("tiny"), tokenizer, tower)   # adds <image> to tokenizer
    output  = model(input_ids, pixel_values=pixels, attention_mask=mask)  # .logits [B, T, V]
    model.save_pretrained("runs/vlm/model"); tokenizer.save_pretrained("runs/vlm/model")
    model, tokenizer = load_vision_model("runs/vlm/model")

How an image enters the LM (Liu et al. 2023, LLaVA): the tower encodes ``pixel_values
[N, 3, S, S]``; the hidden states of layer ``feature_layer`` (the penultimate, as LLaVA-1.5)
are the image's features, one per patch (CLIP's class token is dropped; SigLIP has none),
so ``tokens_per_image = (S / patch_size)^2``; the 2-layer MLP projector (Linear, GELU,
Linear: LLaVA-1.5's ``mlp2x_gelu``) maps them to the LM's embedding width; ``embed`` writes
them, in order, into the positions of ``input_ids`` that hold the image token (one added
special token, ``add_image_token``), which ``sftlab.data.images.render_visual`` expanded to
``tokens_per_image`` positions per ``<image>``. If the numbers differ the forward fails
loudly ("image features and image tokens do not match"), never truncates silently.

The projector is a submodule of the LM (``multi_modal_projector``; ``VisionLanguageModel``
says why). Saved layout (``save_pretrained``): the LM's own directory (``config.json`` and
safetensors, which also hold ``multi_modal_projector.*``; ``AutoModelForCausalLM`` opens it
and reports those keys as unused), ``vision_tower/`` (opens with ``CLIPVisionModel`` /
``SiglipVisionModel``) and ``sftlab_vision.json`` (``VisionSettings``); the caller saves
the tokenizer beside them.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from sftlab.data.collate import collate_padded
from sftlab.data.images import MAX_PIXELS
from sftlab.errors import ConfigError
from sftlab.models import ModelNotFoundError, apply_adapter, load_model, resolve_model, split_adapter_run

IMAGE_TOKEN = "<image>"
VISION_CONFIG_FILE = "sftlab_vision.json"
TINY_TOWERS = ("tiny-clip", "tiny-siglip")
# normalisation the towers were trained with (transformers' OPENAI_CLIP_MEAN/STD; SigLIP's 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------
# Vision towers
# ---------------------------------------------------------------------------------------
def tiny_vision_tower(kind: str = "clip", *, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32,
                      layers: int = 2, seed: int = 0):
    """A random CLIP or SigLIP vision model built from a small config (tests, CPU demos):
    ``(32 / 8)^2 = 16`` patch tokens per image by default."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    values = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=4)
    config_class, model_class = {"clip": (CLIPVisionConfig, CLIPVisionModel),
                                 "siglip": (SiglipVisionConfig, SiglipVisionModel)}[kind]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config_class(**values)).float()


def load_vision_tower(name_or_path: str | Path, dtype: torch.dtype = torch.float32):
    """``tiny-clip``/``tiny-siglip``, or a CLIP/SigLIP vision (or full CLIP/SigLIP) model
    directory or hub id, loaded with ``from_pretrained`` (safetensors only)."""
    name = str(name_or_path)
    if name in TINY_TOWERS:
        return tiny_vision_tower(name.removeprefix("tiny-")).to(dtype)
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    resolved = resolve_model(name)
    try:
        model_type = AutoConfig.from_pretrained(resolved).model_type
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load vision tower '{resolved}': {str(exc).splitlines()[0]}") from None
    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
               "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    if model_type not in classes:
        raise ConfigError(f"vision tower '{resolved}' is a {model_type!r} model; a CLIP or SigLIP "
                          "(vision) model is needed")
    return classes[model_type].from_pretrained(resolved, dtype=dtype, use_safetensors=True)


def tower_kind(tower) -> str:
    """``clip`` or ``siglip`` (from the tower's config)."""
    return "siglip" if "siglip" in tower.config.model_type else "clip"


def tune_tower(vision_tower: nn.Module, feature_layer: int = -2) -> list[nn.Parameter]:
    """Make trainable the tower parameters that the ``feature_layer`` features depend on and
    freeze the rest; returns the trainable ones (in the tower's order).

    Hidden state ``k`` (``hidden_states[k]``, ``k`` in ``0..L`` for ``L`` layers; negative
    counts from the end) is the output of encoder layers ``0..k-1``: later layers, the
    ``post_layernorm`` and SigLIP's pooling ``head`` never reach the projector, so they get
    no gradient and stay as loaded (a gradient-less parameter would also stall DDP).

    >>> tower = tiny_vision_tower("clip", layers=2)
    >>> names = {n for n, p in tower.named_parameters() if p in set(tune_tower(tower, -2))}
    >>> any(".layers.0." in n for n in names), any(".layers.1." in n for n in names)
    (True, False)
    """
    layers = vision_tower.config.num_hidden_layers
    used = feature_layer % (layers + 1)  # hidden state index in 0..L: layers below it are used
    trainable = []
    for name, parameter in vision_tower.named_parameters():
        layer = re.search(r"(?:^|\.)encoder\.layers\.(\d+)\.", name)
        keep = not re.search(r"(?:^|\.)(?:post_layernorm|head)\.", name) and (layer is None or int(layer[1]) < used)
        parameter.requires_grad_(keep)
        if keep:
            trainable.append(parameter)
    return trainable


def load_tower_weights(vision_tower: nn.Module, directory: str | Path) -> None:
    """Copy the safetensors weights of a saved ``vision_tower/`` directory into
    ``vision_tower`` in place (a resumed run's tuned tower); every tensor must match."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        weights.update(load_file(str(file)))
    if not weights:
        raise ModelNotFoundError(f"{directory} holds no vision tower weights (*.safetensors)")
    vision_tower.load_state_dict(weights, strict=True)


def tokens_per_image(tower_config) -> int:
    """Patch features per image the projector emits: ``(image_size / patch_size)^2``
    (CLIP's class token is dropped).

    >>> from transformers import CLIPVisionConfig
    >>> tokens_per_image(CLIPVisionConfig(image_size=32, patch_size=8))
    16
    """
    return (tower_config.image_size // tower_config.patch_size) ** 2


# ---------------------------------------------------------------------------------------
# The composed model
# ---------------------------------------------------------------------------------------
@dataclass
class VisionSettings:
    """What ties the parts together; saved as ``sftlab_vision.json``."""

    image_token: str
    image_token_id: int
    tokens_per_image: int
    image_size: int
    tower_kind: str
    feature_layer: int = -2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD


class Projector(nn.Module):
    """``[N, P, vision_hidden] -> [N, P, lm_hidden]``: Linear, GELU, Linear."""

    def __init__(self, vision_hidden: int, lm_hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, lm_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(lm_hidden, lm_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class VisionLanguageModel(nn.Module):
    """Tower + causal LM (which carries the projector); ``forward`` is the LM's, with
    ``pixel_values`` added.

    The projector lives *inside* the LM, as its submodule ``multi_modal_projector``
    (``attach_projector``): so every training method (full, freeze, LoRA's
    ``modules_to_save``), the optimizer, checkpoints and resume see it as part of the model,
    without the training loop knowing about images. ``language_model`` may be PEFT-wrapped.
    """

    def __init__(self, vision_tower: nn.Module, language_model: nn.Module, settings: VisionSettings) -> None:
        super().__init__()
        self.vision_tower, self.language_model, self.settings = vision_tower, language_model, settings

    @property
    def projector(self) -> nn.Module:
        # through PEFT's attribute forwarding: with modules_to_save this is PEFT's trained copy
        return self.language_model.multi_modal_projector

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [N, 3, S, S]`` -> projected features ``[N, tokens_per_image, H_lm]``.
        A frozen tower runs without autograd (no activations kept for a backward it skips);
        a tuned one (``tune_tower``: some parameter requires grad) runs with it."""
        first = next(self.vision_tower.parameters())
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):
            out = self.vision_tower(pixel_values=pixel_values.to(first.dtype), output_hidden_states=True)
        features = out.hidden_states[self.settings.feature_layer]
        if self.settings.tower_kind == "clip":
            features = features[:, 1:]  # the class token is not a patch
        return self.projector(features)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``[B, T, H]`` with image features written into the image positions.

        The image token id need not have an embedding row (LLaVA's id is even negative):
        its positions are looked up as id 0 and then overwritten. Raises ``ValueError``
        ("image features and image tokens do not match") when the image positions are not
        ``images x tokens_per_image``.
        """
        positions = input_ids == self.settings.image_token_id
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(positions, 0))
        n_positions = int(positions.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_positions:
                raise ValueError(f"image features and image tokens do not match: {n_positions} image tokens, "
                                 "no images")
            return embeds
        features = self.image_features(pixel_values)
        if features.shape[0] * features.shape[1] != n_positions:
            raise ValueError(f"image features and image tokens do not match: {n_positions} image tokens, "
                             f"{features.shape[0]} images x {features.shape[1]} features = "
                             f"{features.shape[0] * features.shape[1]}")
        return embeds.masked_scatter(positions[..., None], features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs):
        return self.language_model(inputs_embeds=self.embed(input_ids, pixel_values), **kwargs)

    def save_pretrained(self, path: str | Path) -> Path:
        """The LM's own ``save_pretrained`` into ``path`` (its weights include
        ``multi_modal_projector.*``), then ``save_vision_parts``."""
        path = Path(path)
        self.language_model.save_pretrained(str(path))
        return save_vision_parts(self.vision_tower, self.settings, path)


def save_vision_parts(vision_tower: nn.Module, settings: VisionSettings, path: str | Path) -> Path:
    """``vision_tower/`` and ``sftlab_vision.json`` into ``path`` (beside the LM's files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vision_tower.save_pretrained(str(path / "vision_tower"))
    (path / VISION_CONFIG_FILE).write_text(json.dumps({"format": 1, **asdict(settings)}, indent=2) + "\n")
    return path


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """Add ``image_token`` as a special token (if it is not one yet); returns its id."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]},
                                     replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(image_token)


def vision_settings(vision_tower: nn.Module, image_token_id: int, *, image_token: str = IMAGE_TOKEN,
                    feature_layer: int = -2) -> VisionSettings:
    """The settings tying ``vision_tower`` to a tokenizer whose image token has ``image_token_id``."""
    kind = tower_kind(vision_tower)
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if kind == "siglip" else (CLIP_MEAN, CLIP_STD)
    return VisionSettings(image_token, image_token_id, tokens_per_image(vision_tower.config),
                          vision_tower.config.image_size, kind, feature_layer, mean, std)


def attach_projector(language_model: nn.Module, vision_tower: nn.Module, seed: int = 0) -> Projector:
    """A freshly initialised (seeded) projector, set as ``language_model.multi_modal_projector``
    in the LM's dtype; an existing one is kept."""
    existing = getattr(language_model, "multi_modal_projector", None)
    if existing is not None:
        return existing
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        projector = Projector(vision_tower.config.hidden_size, language_model.get_input_embeddings().embedding_dim)
    language_model.add_module("multi_modal_projector", projector.to(next(language_model.parameters()).dtype))
    return projector


def build_vision_model(language_model: nn.Module, tokenizer, vision_tower: nn.Module, *,
                       image_token: str = IMAGE_TOKEN, feature_layer: int = -2, seed: int = 0) -> VisionLanguageModel:
    """Compose a new model: adds ``image_token`` to ``tokenizer`` and a fresh projector to the
    LM; the tower takes the LM's dtype. The LM's vocabulary is not resized (``embed``)."""
    token_id = add_image_token(tokenizer, image_token)
    settings = vision_settings(vision_tower, token_id, image_token=image_token, feature_layer=feature_layer)
    attach_projector(language_model, vision_tower, seed)
    vision_tower = vision_tower.to(next(language_model.parameters()).dtype)
    return VisionLanguageModel(vision_tower, language_model, settings)


def load_vision_model(path: str | Path, dtype: str = "float32"):
    """``(model, tokenizer)`` from a directory ``save_pretrained`` (or a vision training run's
    ``model/``) wrote, tokenizer beside it."""
    from transformers import AutoTokenizer

    path = Path(path)
    config_file = path / VISION_CONFIG_FILE
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} has no {VISION_CONFIG_FILE}: not a saved sftlab vision model")
    config = json.loads(config_file.read_text())
    config.pop("format", None)
    settings = VisionSettings(**{**config, "image_mean": tuple(config["image_mean"]),
                                 "image_std": tuple(config["image_std"])})
    tower = load_vision_tower(path / "vision_tower").eval()
    split = split_adapter_run(path)
    if split is not None:  # a LoRA run: the base, a projector, then the adapter (its modules_to_save restore the projector)
        language_model = load_model(split[0], dtype=dtype)
        attach_projector(language_model, tower)
        language_model = apply_adapter(language_model, split[1]).eval()
    else:
        with _errors_only():  # the LM's loader reports the projector's keys as unexpected: they are loaded next
            language_model = load_model(str(path), dtype=dtype)
        attach_projector(language_model, tower)
        language_model.multi_modal_projector.load_state_dict(projector_weights(path))
    tower = tower.to(next(language_model.parameters()).dtype)
    return VisionLanguageModel(tower, language_model, settings).eval(), AutoTokenizer.from_pretrained(str(path))


@contextlib.contextmanager
def _errors_only():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def projector_weights(path: Path) -> dict[str, torch.Tensor]:
    """The ``multi_modal_projector.*`` tensors of the safetensors files in ``path``."""
    from safetensors import safe_open

    prefix, weights = "multi_modal_projector.", {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    weights[key.removeprefix(prefix)] = handle.get_tensor(key)
    if not weights:
        raise ModelNotFoundError(f"{path} holds no multi_modal_projector weights")
    return weights


def pixel_values(images: list, settings: VisionSettings) -> torch.Tensor:
    """RGB ``PIL`` images -> ``FloatTensor[N, 3, S, S]``: resized (bicubic) to the tower's
    size, scaled to [0, 1], normalised with the tower's mean and std."""
    import numpy as np
    from PIL import Image

    if not images:
        size = settings.image_size
        return torch.zeros((0, 3, size, size))
    size = (settings.image_size, settings.image_size)
    arrays = [np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
              for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(settings.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(settings.image_std).view(1, 3, 1, 1)
    return (batch - mean) / std


def collate_visual(examples: list, pad_id: int, settings: VisionSettings, max_pixels: int | None = None) -> dict:
    """``VisualTokenized`` examples -> ``collate_padded``'s tensors plus ``pixel_values
    [N, 3, S, S]``: every example's images in order (what ``embed`` scatters, row by row).

    Images are loaded here, lazily (``ImageRef.load``: a bad one is a ``DataError``).
    Packing is not offered: a packed row would need its images in packed order and its
    block mask to keep image tokens apart (see ``sftlab.train.objectives.vision``).
    """
    batch = collate_padded(examples, pad_id)
    images = [ref.load(max_pixels or MAX_PIXELS) for example in examples for ref in example.images]
    batch["pixel_values"] = pixel_values(images, settings)
    return batch


def expand_image_tokens(ids: list[int], settings: VisionSettings) -> list[int]:
    """Each image token of ``ids`` repeated ``tokens_per_image`` times (the positions
    ``embed`` fills), as ``sftlab.data.images.render_visual`` expands training text.

    >>> settings = VisionSettings("<image>", 9, 3, 32, "clip")
    >>> expand_image_tokens([1, 9, 2], settings)
    [1, 9, 9, 9, 2]
    """
    expanded: list[int] = []
    for token in ids:
        expanded += [token] * (settings.tokens_per_image if token == settings.image_token_id else 1)
    return expanded


def vision_model_dir(name_or_path: str | Path) -> Path | None:
    """The directory holding ``sftlab_vision.json`` for ``name_or_path`` (itself, or a
    training run's ``model/`` or ``adapter/``); None for anything else (a text model, a
    name such as ``default``)."""
    path = Path(name_or_path)
    for candidate in (path, path / "model", path / "adapter"):
        if (candidate / VISION_CONFIG_FILE).is_file():
            return candidate
    return None


def save_tiny_vision(path: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """A random tiny vision model (the tiny LM, a tiny tower, a seeded projector) and its
    tokenizer saved as a vision model directory: what tests load through
    ``load_vision_model``, ``sftlab generate`` and ``sftlab serve``."""
    from sftlab.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = build_vision_model(tiny_model(seed=seed), tokenizer, tiny_vision_tower(kind, seed=seed), seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(str(path))
    return Path(path)


def generate_answer(model: VisionLanguageModel, tokenizer, conversation, max_new_tokens: int = 16) -> str:
    """Greedy answer to a ``VisualConversation`` whose last turn is the user's (its images
    loaded and expanded as in training); the decoded new text, special tokens dropped.

    The one-prompt reference path; ``sftlab.infer.vision.VisionGenerator`` (what
    ``sftlab generate``, ``chat``, ``serve`` and ``eval`` use) batches the same steps.
    """
    from sftlab.data.chat import apply_template  # the one place a template is applied

    prompt = apply_template(tokenizer, conversation.conversation.messages, add_generation_prompt=True)
    if model.settings.image_token != IMAGE_TOKEN:
        prompt = prompt.replace(IMAGE_TOKEN, model.settings.image_token)
    ids = expand_image_tokens(tokenizer(prompt, add_special_tokens=False)["input_ids"], model.settings)
    images = [ref.load() for ref in conversation.images]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    with torch.no_grad():
        embeds = model.embed(input_ids, pixel_values(images, model.settings).to(device))
        out = model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids),
                                            max_new_tokens=max_new_tokens, do_sample=False,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()
