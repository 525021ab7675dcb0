"""The LLaVA-style model: towers loaded through from_pretrained, image-token scatter, the
mismatch error, save/reload with identical logits, parts that open in transformers."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPVisionModel, SiglipVisionModel

from sftlab.data.images import read_visual, read_visual_file, render_visual
from sftlab.data.visual_tasks import generate_visual_tasks, write_visual_tasks
from sftlab.errors import ConfigError
from sftlab.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from sftlab.models.vision import (build_vision_model, collate_visual, load_vision_model, load_vision_tower,
                                  pixel_values, tiny_vision_tower)


@pytest.fixture()
def vlm():
    tokenizer = tiny_tokenizer()
    return build_vision_model(tiny_model(), tokenizer, tiny_vision_tower("clip")).eval(), tokenizer


@pytest.fixture(scope="module")
def task_examples(tmp_path_factory):
    written = write_visual_tasks(tmp_path_factory.mktemp("tasks"), generate_visual_tasks(n_train=4, n_eval=1))
    return read_visual_file(written["train"])[0]


@pytest.mark.parametrize("kind, model_class", [("clip", CLIPVisionModel), ("siglip", SiglipVisionModel)])
def test_tower_loads_from_a_saved_directory(tmp_path, kind, model_class):
    tower = tiny_vision_tower(kind).eval()
    tower.save_pretrained(tmp_path)
    loaded = load_vision_tower(tmp_path).eval()
    assert isinstance(loaded, model_class)
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(pixel_values=pixels).last_hidden_state,
                               tower(pixel_values=pixels).last_hidden_state, rtol=0, atol=0)


def test_a_language_model_is_not_a_tower(tmp_path):
    save_tiny(tmp_path)
    with pytest.raises(ConfigError, match="CLIP or SigLIP"):
        load_vision_tower(tmp_path)


def test_build_adds_the_image_token_and_counts_patches(vlm):
    model, tokenizer = vlm
    assert model.settings.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == 512
    assert len(tokenizer) == 513  # the LM's 512 rows are not resized: image positions are overwritten
    assert model.language_model.get_input_embeddings().num_embeddings == 512
    assert isinstance(model.language_model.multi_modal_projector, torch.nn.Module)
    assert model.settings.tokens_per_image == 16
    siglip = build_vision_model(tiny_model(), tiny_tokenizer(), tiny_vision_tower("siglip"))
    assert siglip.settings.tokens_per_image == 16 and siglip.settings.image_mean == (0.5, 0.5, 0.5)


def test_image_features_land_in_the_image_positions_in_order(vlm):
    model, _ = vlm
    image = model.settings.image_token_id
    ids = torch.tensor([[1, 5] + [image] * 16 + [6] + [image] * 16 + [7]])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        features = model.image_features(pixels)
        text = model.language_model.get_input_embeddings()(ids.clamp(max=511))
    positions = ids[0] == image
    torch.testing.assert_close(embeds[0, positions], features.reshape(32, -1))
    torch.testing.assert_close(embeds[0, ~positions], text[0, ~positions])
    # a different second image changes only its own 16 positions
    with torch.no_grad():
        changed = model.embed(ids, torch.cat([pixels[:1], torch.randn(1, 3, 32, 32)]))
    moved = (changed[0] != embeds[0]).any(-1)
    assert moved.nonzero().flatten().tolist() == list(range(19, 35))


def test_counts_that_differ_fail_with_the_numbers(vlm):
    model, _ = vlm
    ids = torch.tensor([[1] + [model.settings.image_token_id] * 10 + [5]])
    with pytest.raises(ValueError, match=r"image features and image tokens do not match: 10 image tokens, "
                                         r"1 images x 16 features = 16"):
        model(ids, pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no images"):
        model(ids)


def test_rendered_examples_run_through_the_model(vlm, task_examples):
    model, tokenizer = vlm
    examples = [render_visual(e, tokenizer, tokens_per_image=model.settings.tokens_per_image)
                for e in task_examples[:3]]
    batch = collate_visual(examples, pad_id=3, settings=model.settings)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        out = model(batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"])
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.logits).all()


def test_pixel_values_normalise_with_the_tower_statistics(vlm):
    from PIL import Image

    model, _ = vlm
    white = pixel_values([Image.new("RGB", (8, 8), (255, 255, 255))], model.settings)
    assert white.shape == (1, 3, 32, 32)
    expected = (1 - torch.tensor(model.settings.image_mean)) / torch.tensor(model.settings.image_std)
    torch.testing.assert_close(white[0, :, 0, 0], expected)


def test_save_reload_gives_identical_logits_and_parts_open_in_transformers(tmp_path, vlm, task_examples):
    model, tokenizer = vlm
    with torch.no_grad():  # a trained projector, not the seeded init the loader could rebuild
        for parameter in model.projector.parameters():
            parameter.add_(0.1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_vision_model(tmp_path)
    example = render_visual(task_examples[0], loaded_tokenizer, tokens_per_image=16)
    assert example.input_ids == render_visual(task_examples[0], tokenizer, tokens_per_image=16).input_ids
    batch = collate_visual([example], pad_id=3, settings=loaded.settings)
    with torch.no_grad():
        before = model(batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        after = loaded(batch["input_ids"], pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert loaded.settings == model.settings
    assert isinstance(CLIPVisionModel.from_pretrained(tmp_path / "vision_tower"), CLIPVisionModel)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(lm.lm_head.weight, model.language_model.lm_head.weight, rtol=0, atol=0)


def test_image_token_survives_a_tokenizer_reload(tmp_path, vlm):
    model, tokenizer = vlm
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    row = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}]}
    example = render_visual(read_visual(row), reloaded, tokens_per_image=16)
    assert example.input_ids.count(model.settings.image_token_id) == 16


def test_greedy_answer_equals_argmax_decoding_of_the_forward(vlm, task_examples):
    import dataclasses

    from sftlab.data.chat import apply_template
    from sftlab.models.vision import generate_answer

    model, tokenizer = vlm
    example = task_examples[0]
    question = dataclasses.replace(example, conversation=dataclasses.replace(
        example.conversation, messages=example.conversation.messages[:1]))
    answer = generate_answer(model, tokenizer, question, max_new_tokens=4)
    prompt = apply_template(tokenizer, question.conversation.messages, add_generation_prompt=True)
    ids = []
    for token in tokenizer(prompt, add_special_tokens=False)["input_ids"]:
        ids += [token] * (16 if token == model.settings.image_token_id else 1)
    pixels = pixel_values([example.images[0].load()], model.settings)
    new = []
    with torch.no_grad():
        for _ in range(4):
            logits = model(torch.tensor([ids + new]), pixel_values=pixels).logits
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == tokenizer.eos_token_id:
                break
    assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()
    assert len(new) == 4 or new[-1] == tokenizer.eos_token_id
