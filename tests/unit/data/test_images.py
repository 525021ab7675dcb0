"""Images in conversations: the three row shapes, placeholder counts, lazy loading,
validation, fingerprints, image-token expansion, masks and truncation."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from sftlab.data.images import (IMAGE_PLACEHOLDER, ImageRef, check_images, read_visual, read_visual_file,
                                render_visual, tokenize_visual)
from sftlab.data.visual_tasks import (HELDOUT_PAIRS, TEMPLATES, generate_visual_tasks, write_visual_tasks)
from sftlab.errors import DataError
from sftlab.models.tiny import tiny_tokenizer
from sftlab.types import IGNORE_INDEX


@pytest.fixture()
def png(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


@pytest.fixture()
def vision_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]},
                                 replace_extra_special_tokens=False)
    return tokenizer


def _llava(image="red.png", text="<image>\nWhat colour?"):
    return {"id": "r0", "image": image,
            "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "red"}]}


# -- readers ---------------------------------------------------------------------------

def test_llava_row(tmp_path, png):
    example = read_visual(_llava(), base_dir=tmp_path)
    assert [m.role for m in example.conversation.messages] == ["user", "assistant"]
    assert example.images[0].path == str(png)
    assert example.conversation.id == "r0"


def test_llava_text_only_rows_have_no_images(vision_tokenizer):
    row = {"id": "t0", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    example = read_visual(row)
    assert example.images == []
    assert render_visual(example, vision_tokenizer, tokens_per_image=16).num_trained > 0


def test_openai_parts_path_file_url_and_data_url(tmp_path, png):
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    row = {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "red.png"}},
                                     {"type": "text", "text": " and "},
                                     {"type": "image_url", "image_url": {"url": png.as_uri()}},
                                     {"type": "image_url", "image_url": {"url": data_url}},
                                     {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "yes"}]}
    example = read_visual(row, base_dir=tmp_path)
    assert example.conversation.messages[0].content == "<image> and <image><image>Same?"
    paths = [ref.path for ref in example.images]
    assert paths[:2] == [str(png), str(png)] and paths[2] is None
    assert {ref.sha256 for ref in example.images} == {hashlib.sha256(png.read_bytes()).hexdigest()}


def test_images_column_text_and_trl_parts(tmp_path, png):
    text_row = {"messages": [{"role": "user", "content": "<image>Colour?"},
                             {"role": "assistant", "content": "red"}], "images": ["red.png"]}
    trl_row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
               "images": ["red.png"]}
    sharegpt_row = {"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "red"}],
                    "images": ["red.png"]}
    for row in (text_row, trl_row, sharegpt_row):
        example = read_visual(row, base_dir=tmp_path)
        assert example.conversation.messages[0].content == "<image>Colour?"
        assert [ref.path for ref in example.images] == [str(png)]


@pytest.mark.parametrize("row, field", [
    (_llava(text="What colour?"), "conversations"),
    (_llava(image=["a.png", "b.png"]), "conversations"),
    ({"messages": [{"role": "user", "content": "<image><image>?"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "images"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}]},
     "messages[0].content[0]"),
])
def test_placeholder_count_mismatch_names_the_field(row, field):
    with pytest.raises(DataError) as caught:
        read_visual(row)
    assert caught.value.reason == "image_count_mismatch" and caught.value.field == field


def test_file_errors_name_file_and_record(tmp_path, png):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(_llava()) + "\n" + json.dumps(_llava(text="no placeholder")) + "\n")
    with pytest.raises(DataError) as caught:
        read_visual_file(data)
    assert f"{data}:2" in str(caught.value) and caught.value.field == "conversations"
    examples, skipped = read_visual_file(data, on_error="skip")
    assert len(examples) == 1 and skipped == {"image_count_mismatch": 1}


def test_remote_urls_and_bad_data_urls_are_refused():
    for url, reason in (("https://example.com/cat.png", "remote_image_url"),
                        ("data:image/png;base64,@@@", "bad_image_url")):
        row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]},
                            {"role": "assistant", "content": "x"}]}
        with pytest.raises(DataError) as caught:
            read_visual(row)
        assert caught.value.reason == reason


# -- loading and validation --------------------------------------------------------------

def test_images_load_lazily_as_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (4, 4), 128).save(gray)
    ref = ImageRef(path=str(gray))
    image = ref.load()
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)
    assert read_visual(_llava(image="never-opened.png"), base_dir=tmp_path).images  # not opened on read


def test_missing_corrupt_and_huge_images_are_data_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    record = f"{tmp_path}/data.json[record 0]"
    for name, reason in (("gone.png", "missing_image"), ("bad.png", "corrupt_image")):
        with pytest.raises(DataError) as caught:
            check_images([read_visual(_llava(image=name), base_dir=tmp_path, record=record)])
        assert caught.value.reason == reason and name in str(caught.value) and record in str(caught.value)
    with pytest.raises(DataError) as caught:
        ImageRef(path=str(tmp_path / "big.png")).load(max_pixels=1000)
    assert caught.value.reason == "image_too_large"


def test_fingerprints_are_sha256_of_file_bytes(tmp_path, png):
    fingerprints = check_images([read_visual(_llava(), base_dir=tmp_path)])
    assert fingerprints == {str(png): hashlib.sha256(png.read_bytes()).hexdigest()}


# -- image tokens ------------------------------------------------------------------------

def test_render_expands_image_tokens_unlabelled(tmp_path, vision_tokenizer):
    image_id = vision_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    example = read_visual(_llava(), base_dir=tmp_path)
    tokenized = render_visual(example, vision_tokenizer, tokens_per_image=16)
    positions = [t for t, token in enumerate(tokenized.input_ids) if token == image_id]
    assert len(positions) == 16 and positions == list(range(positions[0], positions[0] + 16))
    assert all(tokenized.labels[t] == IGNORE_INDEX for t in positions)
    trained = [token for token in tokenized.labels if token != IGNORE_INDEX]
    assert vision_tokenizer.decode(trained) == "red<|im_end|>"


def test_image_in_an_assistant_turn_is_never_labelled(tmp_path, vision_tokenizer):
    image_id = vision_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    row = {"image": "red.png", "conversations": [{"from": "human", "value": "Draw it."},
                                                 {"from": "gpt", "value": "Here: <image> done"}]}
    tokenized = render_visual(read_visual(row, base_dir=tmp_path), vision_tokenizer, tokens_per_image=4)
    assert tokenized.input_ids.count(image_id) == 4
    assert image_id not in tokenized.labels and tokenized.num_trained > 0


def test_truncation_never_cuts_an_image(tmp_path, vision_tokenizer):
    example = read_visual(_llava(), base_dir=tmp_path)
    full = render_visual(example, vision_tokenizer, tokens_per_image=16)
    image_id = vision_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    last_image = max(t for t, token in enumerate(full.input_ids) if token == image_id)
    result = tokenize_visual([example] * 2, vision_tokenizer, tokens_per_image=16, max_length=last_image)
    assert result.examples == [] and result.dropped == {"truncated_image": 2}
    kept = tokenize_visual([example], vision_tokenizer, tokens_per_image=16, max_length=len(full) - 1)
    assert len(kept.examples[0]) == len(full) - 1 and kept.truncated == 1
    assert kept.examples[0].input_ids.count(image_id) == 16


def test_tokenizer_without_image_token_is_refused(tmp_path):
    with pytest.raises(DataError, match="add_image_token"):
        render_visual(read_visual(_llava(), base_dir=tmp_path), tiny_tokenizer(), tokens_per_image=4)


# -- the synthetic visual tasks -----------------------------------------------------------

def test_synthetic_tasks_hold_out_templates_and_pairs(tmp_path):
    items = generate_visual_tasks(n_train=80, n_eval=20, seed=1)
    train_questions = {item.question for item in items["train"]}
    held_templates = {t[-1] for t in TEMPLATES.values()}
    assert not train_questions & held_templates
    assert {item.question for item in items["heldout_template"]} <= held_templates
    train_pairs = {(item.scene["colour"], item.scene["shape"]) for item in items["train"]}
    assert not train_pairs & set(HELDOUT_PAIRS)
    assert {(i.scene["colour"], i.scene["shape"]) for i in items["heldout_combination"]} <= set(HELDOUT_PAIRS)
    assert generate_visual_tasks(n_train=80, n_eval=20, seed=1)["train"][5].answer == items["train"][5].answer


def test_synthetic_answers_match_the_pixels():
    from sftlab.data.visual_tasks import COLOURS, POSITIONS

    for item in generate_visual_tasks(n_train=40, n_eval=0, seed=2)["train"]:
        image, scene = item.image, item.scene
        quadrant = POSITIONS.index(scene["position"])
        # the shape's colour at the centre of its quadrant (every shape covers its centre)
        centre = ((quadrant % 2) * 16 + 8, (quadrant // 2) * 16 + 9)
        assert image.getpixel(centre) == COLOURS[scene["colour"]]
        coloured = sum(image.getpixel(((q % 2) * 16 + 8, (q // 2) * 16 + 9)) != (255, 255, 255) for q in range(4))
        assert coloured == scene["count"]


def test_written_tasks_read_back_through_the_llava_reader(tmp_path):
    written = write_visual_tasks(tmp_path, generate_visual_tasks(n_train=6, n_eval=2, seed=0))
    examples, skipped = read_visual_file(written["train"])
    assert len(examples) == 6 and not skipped
    assert len(check_images(examples)) == 6
    assert examples[0].conversation.meta["task"] == "shape"
