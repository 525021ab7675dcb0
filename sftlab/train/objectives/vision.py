"""``objective: vision``: LLaVA-style visual instruction tuning through the one loop.

Units are ``VisualTokenized`` examples (``sftlab.data.images``: visual rows read (LLaVA,
OpenAI image parts, an ``images`` column, or MultiInstruct task rows filled from
``vision.templates`` as ``vision.expand_templates`` says), images checked and
fingerprinted, ``<image>`` expanded to the tower's patch count, never labelled; an example
whose image tokens would be truncated is dropped and counted, ``truncated_image``). A
micro-batch is padded rows plus the batch's images as
``pixel_values`` (``sftlab.models.vision.collate_visual``); packing and padding-free are
refused (``train.config.PADDED_OBJECTIVES``: a packed row would need its images in packed
order and block masks around each example, not built yet). The loss is token
cross-entropy on the labelled tokens, as ``sft``: the step's loss is the mean over them.

The two LLaVA stages (``vision.stage``):

1. **Alignment**: only the projector trains (on captions): the method becomes ``freeze``
   with no decoder layer and ``freeze.modules = ["multi_modal_projector.*"]`` (allowed
   when ``method`` is ``full`` or ``freeze``).
2. **Visual instruction tuning**: the projector and the LM as ``method`` says: ``full``,
   ``freeze`` (the projector added to ``freeze.modules``), or ``lora``/``dora``/``qlora`` (the
   projector added to ``lora.modules_to_save``, so PEFT trains and saves it beside the
   adapter). ``vision.init_from`` starts from a stage-1 run's projector and tower.

The vision tower is frozen (it runs without autograd) unless ``vision.tune_tower`` (stage
2 only): then ``prepare`` makes its parameters up to ``vision.feature_layer`` trainable
(``sftlab.models.vision.tune_tower``: later layers never reach the projector), hands them
to the optimizer with the method's (same lr), and attaches the tower to the LM as
``vision_tower`` *after* the method ran (so LoRA never targets the tower's projections),
which puts it in the checkpoints' ``trainable.safetensors`` of adapter methods; the tower
then runs with autograd and in the loop's train/eval mode. Methods without an optimizer
(LOMO, fused updates) are refused with it.

Where the parts live: the tower is held by the objective's loss module; the projector is
attached to the LM (``sftlab.models.vision.attach_projector``) so methods, the optimizer,
checkpoints and resume treat it as model weights; ``VisionPrepared.save`` writes the LM as
the method does (a tuned tower detached, so the LM's files hold only the LM) and then the
tower (tuned or not) and ``sftlab_vision.json`` beside the LM's files: the saved
``model/`` (or ``adapter/``) directory opens with ``sftlab.models.vision.load_vision_model``
and gives the trained run's logits. ``VisionPrepared.load_full`` restores a full-model
checkpoint, the tuned tower included, on resume.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from sftlab.data.images import VisualTokenized, check_images, read_visual_file, tokenize_visual
from sftlab.errors import ConfigError, DataError
from sftlab.models import split_model
from sftlab.models.vision import (VisionLanguageModel, add_image_token, attach_projector, collate_visual,
                                  load_tower_weights, load_vision_tower, projector_weights, save_vision_parts,
                                  tokens_per_image, tune_tower, vision_settings)
from sftlab.train import data
from sftlab.train.checkpoint import load_weights
from sftlab.train.methods import Prepared, trainable_summary
from sftlab.train.loss import batch_tokens, linear_cross_entropy, next_token_targets
from sftlab.train.objectives.base import OBJECTIVES, Objective
from sftlab.types import IGNORE_INDEX

PROJECTOR_GLOB = "multi_modal_projector.*"
STAGE_2_METHODS = ("full", "freeze", "lora", "dora", "qlora")
TOWER_NAME = "vision_tower"  # the tuned tower's name inside the LM (checkpoint tensor names)


def _inner(model):
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


@contextlib.contextmanager
def _without_tower(model):
    """``model`` with an attached (tuned) tower taken off while the block runs: the LM's own
    files and ``load_weights`` see the LM only (the tower has its own directory)."""
    inner = _inner(model)
    tower = inner._modules.pop(TOWER_NAME, None)
    try:
        yield
    finally:
        if tower is not None:
            inner.add_module(TOWER_NAME, tower)


@dataclass
class VisionPrepared(Prepared):
    """The method's ``Prepared`` plus the tower and settings it saves beside the LM."""

    tower: Any = None
    settings: Any = None
    tuned: bool = False
    """The tower trains (``vision.tune_tower``): resume restores it too."""

    def save(self, path) -> Path:
        """The LM as the method saves it, then ``vision_tower/`` and ``sftlab_vision.json``."""
        with _without_tower(self.model):
            saved = super().save(path)
        return save_vision_parts(self.tower, self.settings, saved)

    def load_full(self, directory: Path) -> None:
        """Restore a ``kind == "full"`` checkpoint's ``model/`` (``checkpoint.load_checkpoint``
        calls this): the LM's weights, then a tuned tower's from ``vision_tower/``."""
        with _without_tower(self.model):
            load_weights(self.model, directory)
        if self.tuned:
            load_tower_weights(self.tower, Path(directory) / "vision_tower")


@OBJECTIVES.register("vision")
class VisionObjective(Objective):
    name = "vision"
    unit_type = VisualTokenized

    def __init__(self, config) -> None:
        super().__init__(config)
        self.tower = None
        self.settings = None
        self.image_sha256: dict[str, str] = {}
        """image -> sha256 of its bytes, for every image of the data (provenance)."""

    @classmethod
    def check(cls, config) -> None:
        """Map ``vision.stage`` onto the method (see the module docstring)."""
        section, method = config.vision, config.method
        if section.stage == 1:
            if method.name not in ("full", "freeze"):
                raise ConfigError(f"vision.stage=1 trains the projector only; method.name={method.name!r} "
                                  "would train the LM too (use vision.stage=2, or method.name=full)")
            method.name, method.freeze.last_layers = "freeze", 0
            method.freeze.modules = [PROJECTOR_GLOB]
        elif method.name not in STAGE_2_METHODS:
            raise ConfigError(f"objective=vision trains with method {', '.join(STAGE_2_METHODS)}; "
                              f"method.name={method.name!r} is not supported with images yet")
        elif method.name == "freeze" and PROJECTOR_GLOB not in method.freeze.modules:
            method.freeze.modules = [*method.freeze.modules, PROJECTOR_GLOB]
        elif method.name in ("lora", "dora", "qlora") and "multi_modal_projector" not in method.lora.modules_to_save:
            method.lora.modules_to_save = [*method.lora.modules_to_save, "multi_modal_projector"]
        if section.tune_tower and section.stage != 2:  # VisionSection refuses it too; a config built by hand
            raise ConfigError("vision.tune_tower=true needs vision.stage=2 (stage 1 trains the projector only)")

    def _load_tower(self):
        if self.tower is None:
            source = self.config.vision.init_from
            self.tower = load_vision_tower(Path(source) / "vision_tower" if source else self.config.vision.tower)
            self.tower.requires_grad_(False).eval()
        return self.tower

    def load_data(self, tokenizer, *, progress: bool = False):
        """Read ``data.paths`` (visual rows), open and fingerprint every image, render."""
        section, vision = self.config.data, self.config.vision
        add_image_token(tokenizer, vision.image_token)
        per_image = tokens_per_image(self._load_tower().config)
        train, dropped = self._tokenize(section.paths, tokenizer, per_image)
        if not train:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in dropped.most_common()) or "no records"
            raise DataError(f"no trainable example in the visual data (dropped: {reasons})",
                            file=", ".join(section.paths), hint="raise data.max_length or check the images")
        evaluation = []
        if section.eval_path:
            evaluation, _ = self._tokenize([section.eval_path], tokenizer, per_image)
        elif section.eval_split > 0:
            train, evaluation = data.split_eval(train, section.eval_split, self.config.seed)
        summary = (f"data: {len(train)} train examples with {sum(len(e.images) for e in train)} images "
                   f"({per_image} tokens each), {sum(e.num_trained for e in train):,} trained tokens; "
                   f"{len(evaluation)} eval examples")
        return train, evaluation, summary

    def _tokenize(self, paths: list[str], tokenizer, per_image: int) -> tuple[list, Counter]:
        section, vision = self.config.data, self.config.vision
        if not paths:
            raise DataError("no training data: set data.paths", hint="data.paths=[llava.json]")
        examples = []
        for path in paths:
            read, skipped = read_visual_file(path, image_folder=vision.image_folder, on_error=section.on_error,
                                             templates=vision.templates, expand=vision.expand_templates,
                                             seed=self.config.seed)
            if skipped:
                print(f"{path}: skipped {sum(skipped.values())} bad records ({dict(skipped)})")
            examples += read
        examples = examples[:section.limit] if section.limit is not None else examples
        self.image_sha256.update(check_images(examples, vision.max_pixels))
        result = tokenize_visual(examples, tokenizer, tokens_per_image=per_image, image_token=vision.image_token,
                                 max_length=section.max_length, strategy=section.mask)
        print(f"{', '.join(paths)}: {result.summary()}")
        return result.examples, result.dropped

    def check_units(self, train: list, evaluation: list) -> None:
        super().check_units(train, evaluation)
        per_image = tokens_per_image(self._load_tower().config)
        for example in train + evaluation:
            found = example.input_ids.count(example.image_token_id)
            if found != per_image * len(example.images):
                raise ConfigError(f"example {example.id}: {found} image tokens for {len(example.images)} images, "
                                  f"but the tower {self.config.vision.tower!r} gives {per_image} per image: "
                                  "render the data for this tower (sftlab.data.images.tokenize_visual)")
        ids = {example.image_token_id for example in train + evaluation}
        if len(ids) != 1:
            raise ConfigError(f"the examples mark images with different token ids {sorted(ids)}")

    def setup(self, model, units: list, *, accelerator, pad_id: int) -> None:
        """Attach the projector to the LM (from ``vision.init_from`` if set); the tower takes
        the LM's dtype."""
        vision = self.config.vision
        tower = self._load_tower().to(next(model.parameters()).dtype)
        self.settings = vision_settings(tower, units[0].image_token_id, image_token=vision.image_token,
                                        feature_layer=vision.feature_layer)
        projector = attach_projector(model, tower, seed=self.config.seed)
        if vision.init_from:
            projector.load_state_dict(projector_weights(Path(vision.init_from)))

    def prepare(self, prepared: Prepared) -> VisionPrepared:
        """The method's result with the tower to save beside it; with ``vision.tune_tower``
        the tower's used layers train too (see the module docstring)."""
        values = {f.name: getattr(prepared, f.name) for f in fields(Prepared)}
        vision = self.config.vision
        result = VisionPrepared(**values, tower=self.tower, settings=self.settings, tuned=vision.tune_tower)
        if (vision.tune_tower or vision.projector_lr) and prepared.fused_backward is not None:
            raise ConfigError(f"vision.tune_tower / vision.projector_lr: method {prepared.method!r} updates "
                              "parameters inside its backward with no optimizer, so the tower cannot join it "
                              "and the projector has no learning rate of its own; use full, freeze or lora")
        tower = tune_tower(self.tower, vision.feature_layer) if result.tuned else []
        if result.tuned:
            _inner(prepared.model).add_module(TOWER_NAME, self.tower)
            result.summary = trainable_summary(result.model)
        result.parameters = self._groups(prepared, tower)
        return result

    def _groups(self, prepared: Prepared, tower: list) -> list:
        """The trained tensors; as optimizer groups with ``lr_scale`` where the projector or
        the tower has a learning rate of its own (``sftlab.train.optim.build_optimizer``)."""
        vision, lr = self.config.vision, self.config.optim.lr
        if vision.projector_lr is None and vision.tower_lr is None:
            return list(prepared.parameters) + tower
        names = {id(p): name for name, p in prepared.model.named_parameters()}
        projector = [p for p in prepared.parameters if "multi_modal_projector" in names.get(id(p), "")]
        chosen = {id(p) for p in projector}
        rest = [p for p in prepared.parameters if id(p) not in chosen]
        groups = [{"params": rest}, {"params": projector, "lr_scale": (vision.projector_lr or lr) / lr},
                  {"params": tower, "lr_scale": (vision.tower_lr or lr) / lr}]
        return [group for group in groups if group["params"]]

    def make_units(self, examples: list) -> list:
        return list(examples)

    def collate(self, items: list, pad_id: int, padding_free: bool = False) -> data.Batch:
        tensors = collate_visual(items, pad_id, self.settings, self.config.vision.max_pixels)
        return data.Batch(tensors, int(tensors["attention_mask"].sum()), tensors["input_ids"].numel())

    def loss_module(self, prepared) -> "VisionLoss":
        """The loss module (``prepared`` is ``prepare``'s: its ``save`` writes the tower too)."""
        return VisionLoss(VisionLanguageModel(self.tower, prepared.model, self.settings),
                          chunk_size=self.config.loss_chunk_size)

    def count(self, tensors: dict) -> int:
        return batch_tokens(tensors)

    def unit_key(self, unit):
        return (unit.input_ids, unit.labels, [self.image_sha256.get(ref.describe()) or ref.sha256
                                              for ref in unit.images])


class VisionLoss(nn.Module):
    """``forward(input_ids, labels, attention_mask, pixel_values) -> (sum of token losses,
    labelled tokens)``: image features scattered into the embeddings, then the LM body and
    the chunked head on labelled positions only (``sftlab.train.loss``)."""

    def __init__(self, model: VisionLanguageModel, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model, self.chunk_size = model, chunk_size
        self.metrics: dict[str, float] = {}  # no metric_names: the token loss is the only number
        self.body, self.head = split_model(model.language_model)
        if self.body is None:
            raise ConfigError("objective=vision needs a model whose LM head can be split off its body")

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for p in self.model.vision_tower.parameters()):
            self.model.vision_tower.eval()  # frozen: no dropout, whatever the loop's mode
        return self

    def forward(self, input_ids, labels, attention_mask=None, pixel_values=None):
        targets = next_token_targets(labels)
        keep = targets != IGNORE_INDEX
        embeds = self.model.embed(input_ids, pixel_values)
        hidden = self.body(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        loss = linear_cross_entropy(hidden[keep], self.head.weight, targets[keep], bias=self.head.bias,
                                    chunk_size=self.chunk_size)
        return loss, keep.sum()

