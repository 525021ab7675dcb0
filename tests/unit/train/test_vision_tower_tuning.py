"""``vision.tune_tower``: the tower trains in stage 2 (its layers up to ``feature_layer``),
reaches the optimizer, is saved beside the model so a reload gives the trained logits, and
resumes; without it the tower stays bit-identical. Stage 1 and optimizer-free methods are
refused with it. Tiny LM + tiny random CLIP tower, a few steps on CPU."""
from __future__ import annotations

import pytest
import torch

from sftlab.config import build_config
from sftlab.data.images import read_visual_file, tokenize_visual
from sftlab.data.visual_tasks import generate_visual_tasks, write_visual_tasks
from sftlab.errors import ConfigError
from sftlab.models.export import record_base_name
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.models.vision import (VisionLanguageModel, add_image_token, collate_visual, load_vision_model,
                                  tiny_vision_tower)
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    paths = write_visual_tasks(tmp_path_factory.mktemp("visual"), generate_visual_tasks(n_train=8, n_eval=0, seed=0))
    tokenizer = tiny_tokenizer()
    add_image_token(tokenizer)
    return tokenize_visual(read_visual_file(paths["train"])[0], tokenizer, tokens_per_image=16,
                           max_length=128).examples


def _config(tmp_path, **settings):
    values = {"objective": "vision", "output_dir": str(tmp_path), "save_model": False, "plot": False,
              "progress": False, "seed": 0, "batch_size": 4, "max_steps": 2,
              "data": {"shuffle": False, "max_length": 128},
              "optim": {"lr": 1e-2, "schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.0}}
    for key, value in settings.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    return build_config(TrainConfig, values)


def _run(tmp_path, examples, **settings):
    model = tiny_model(seed=0)
    record_base_name(model, "tiny")
    tokenizer = tiny_tokenizer()
    add_image_token(tokenizer)
    return train(_config(tmp_path, **settings), model=model, tokenizer=tokenizer, train_examples=list(examples))


def _tower_state(tower) -> dict:
    return {name: p.detach().clone() for name, p in tower.named_parameters()}


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], pixel_values=batch["pixel_values"],
                     attention_mask=batch["attention_mask"]).logits


def _check_tower_trained(tower):
    start = _tower_state(tiny_vision_tower())
    for name, value in _tower_state(tower).items():
        used = ".layers.1." not in name and "post_layernorm" not in name  # feature_layer=-2 of 2 layers
        if used:
            assert not torch.equal(value, start[name]), f"{name} did not train"
        else:  # never reaches the projector: no gradient, left as loaded
            torch.testing.assert_close(value, start[name], rtol=0, atol=0, msg=name)


def test_tune_tower_trains_the_tower_and_the_saved_model_gives_the_same_logits(tmp_path, examples):
    result = _run(tmp_path, examples, vision={"tune_tower": True}, save_model=True)
    prepared = result.prepared
    tower = prepared.tower
    trainable = [p for p in tower.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in prepared.parameters) for p in trainable)  # in the optimizer
    _check_tower_trained(tower)
    assert not any(k.startswith("vision_tower.") for k in _saved_lm_keys(result.saved_to))  # LM files: LM only
    reloaded, _ = load_vision_model(result.saved_to)
    batch = collate_visual(examples[:2], pad_id=3, settings=reloaded.settings)
    live = VisionLanguageModel(tower, prepared.model, reloaded.settings).eval()
    expected = _logits(live, batch)
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=1e-5, atol=1e-5)
    # the reload's tower is the tuned one: the untuned tower gives other logits
    untuned = VisionLanguageModel(tiny_vision_tower().eval(), reloaded.language_model, reloaded.settings)
    assert (_logits(untuned, batch) - expected).abs().max() > 1e-4


def _saved_lm_keys(path):
    from safetensors import safe_open

    keys = []
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            keys += list(handle.keys())
    assert keys
    return keys


def test_without_tune_tower_the_tower_stays_bit_identical(tmp_path, examples):
    result = _run(tmp_path, examples)
    tower = result.prepared.tower
    assert not any(p.requires_grad for p in tower.parameters())
    assert not any(p is q for p in tower.parameters() for q in result.prepared.parameters)
    start = _tower_state(tiny_vision_tower())
    for name, value in _tower_state(tower).items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0, msg=name)
    start = dict(tiny_model(seed=0).named_parameters())
    trained = dict(result.prepared.model.named_parameters())
    assert not torch.equal(trained["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # the LM trained


def test_lora_with_tune_tower_trains_the_whole_tower_not_lora_in_it(tmp_path, examples):
    result = _run(tmp_path, examples, method={"name": "lora", "lora": {"rank": 4}},
                  vision={"tune_tower": True}, save_model=True)
    tower = result.prepared.tower
    assert not any("lora_" in name for name, _ in tower.named_parameters())
    _check_tower_trained(tower)
    reloaded, _ = load_vision_model(result.saved_to)
    batch = collate_visual(examples[:2], pad_id=3, settings=reloaded.settings)
    live = VisionLanguageModel(tower, result.prepared.model, reloaded.settings).eval()
    torch.testing.assert_close(_logits(reloaded, batch), _logits(live, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "lora": {"rank": 4}}])
def test_resume_restores_the_tuned_tower(tmp_path, examples, method):
    """2 steps, a checkpoint, resume to 4 == 4 steps straight (the tower included)."""
    settings = {"method": method, "vision": {"tune_tower": True}, "batch_size": 2}
    straight = _tower_state(_run(tmp_path / "a", examples, max_steps=4, **settings).prepared.tower)
    _run(tmp_path / "b", examples, max_steps=2, save_every=2, **settings)
    result = _run(tmp_path / "b", examples, max_steps=4, save_every=2, resume=True, **settings)
    assert [row["step"] for row in result.history if "loss" in row] == [1, 2, 3, 4]
    resumed = _tower_state(result.prepared.tower)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-6, atol=1e-7, msg=name)


def test_tower_and_projector_learning_rates_set_their_first_adam_steps(tmp_path, examples):
    """Adam's first step moves every weight with a gradient by its group's lr (g / |g|): the
    largest change per part is its learning rate."""
    from sftlab.models.vision import attach_projector

    result = _run(tmp_path, examples, max_steps=1,
                  vision={"tune_tower": True, "tower_lr": 1e-3, "projector_lr": 5e-2})
    model = result.prepared.model
    start_lm = tiny_model(seed=0)
    start_projector = attach_projector(start_lm, tiny_vision_tower(), seed=0)
    lm = dict(start_lm.named_parameters())

    def largest_change(pairs):
        return max(float((after.detach() - before.detach()).abs().max()) for after, before in pairs)

    lm_pairs = [(p, lm[n]) for n, p in model.named_parameters() if n in lm and "multi_modal_projector" not in n]
    projector_pairs = zip(model.multi_modal_projector.parameters(), start_projector.parameters())
    tower_start = _tower_state(tiny_vision_tower())
    tower_pairs = [(p, tower_start[n]) for n, p in result.prepared.tower.named_parameters()]
    assert largest_change(lm_pairs) == pytest.approx(1e-2, rel=1e-3)
    assert largest_change(projector_pairs) == pytest.approx(5e-2, rel=1e-3)
    assert largest_change(tower_pairs) == pytest.approx(1e-3, rel=1e-3)


def test_a_tower_lr_without_tune_tower_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="vision.tower_lr"):
        _config(tmp_path, vision={"tower_lr": 1e-5})


def test_stage_1_with_tune_tower_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="vision.tune_tower"):
        _config(tmp_path, vision={"stage": 1, "tune_tower": True})


def test_an_optimizer_free_method_cannot_tune_the_tower(tmp_path):
    from sftlab.train.methods import Prepared
    from sftlab.train.objectives.vision import VisionObjective

    objective = VisionObjective(_config(tmp_path, vision={"tune_tower": True}))
    objective.tower = tiny_vision_tower().requires_grad_(False)  # as the objective loads it
    prepared = Prepared(model=tiny_model(), parameters=[], kind="full", method="lomo",
                        fused_backward=lambda loss, lr: None)
    with pytest.raises(ConfigError, match="vision.tune_tower"):
        objective.prepare(prepared)
    assert not any(p.requires_grad for p in objective.tower.parameters())  # refused before touching it
