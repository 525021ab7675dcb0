"""Generation with images: the vision generator against the one-prompt reference, batching,
the bad inputs (placeholder counts, unreadable and huge images, context overflow, images to
a text-only model), prompt files with images, and the chat loop with an image."""
from __future__ import annotations

import io
import json

import pytest

from sftlab.data.images import ImageRef, VisualConversation
from sftlab.data.prompts import read_prompts
from sftlab.errors import DataError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.chat import chat_loop
from sftlab.infer.hf import HFGenerator, ImagesNotSupported, PromptTooLong
from sftlab.infer.backends import generator_for
from sftlab.infer.vision import VisionGenerator
from sftlab.models.vision import generate_answer, save_tiny_vision
from sftlab.types import Conversation, Message

GREEDY = SamplingConfig(max_new_tokens=5)


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    return save_tiny_vision(tmp_path_factory.mktemp("vision") / "model")


@pytest.fixture(scope="module")
def generator(vision_dir):
    return VisionGenerator.from_name(vision_dir, batch_size=3)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    from sftlab.data.visual_tasks import draw_scene

    folder = tmp_path_factory.mktemp("png")
    scenes = [("circle", "red", [0]), ("square", "blue", [3]), ("triangle", "green", [1, 2]), ("circle", "yellow", [2])]
    paths = []
    for i, (shape, colour, cells) in enumerate(scenes):
        draw_scene(shape, colour, cells).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def _question(path, text="What shape is in the image?") -> VisualConversation:
    return VisualConversation(Conversation([Message("user", f"<image>\n{text}")]), [ImageRef(str(path))])


def test_batched_greedy_equals_the_one_prompt_reference(generator, pngs):
    prompts = [_question(p, q) for p, q in zip(pngs, ["What?", "Which colour is the object?", "Count them.", "Hm"])]
    batched = generator.generate(prompts, GREEDY)
    model, tokenizer = generator.model, generator.tokenizer
    assert [g.text.strip() for g in batched] == [generate_answer(model, tokenizer, p, 5) for p in prompts]
    one_by_one = VisionGenerator(model, tokenizer, batch_size=1).generate(prompts, GREEDY)
    assert [g.text for g in one_by_one] == [g.text for g in batched]
    assert batched[0].prompt_tokens > 16 and all(g.completion_tokens <= 5 for g in batched)
    # the sampled ids come back too (GRPO/PPO rollouts score exactly these)
    assert all(len(g.token_ids) == g.completion_tokens and
               tokenizer.decode(g.token_ids, skip_special_tokens=True) == g.text for g in batched)
    # the image matters: another picture, another continuation somewhere in the batch
    swapped = generator.generate([_question(pngs[1], "What?")], GREEDY)[0].text
    assert swapped != batched[0].text or batched[1].text != batched[0].text


def test_text_prompts_still_work_and_a_literal_placeholder_needs_an_image(generator):
    assert generator.generate([[Message("user", "Hi")]], GREEDY)[0].completion_tokens > 0
    with pytest.raises(DataError, match="1 <image> placeholders for 0 images") as caught:
        generator.generate([[Message("user", "<image> what is this?")]], GREEDY)
    assert caught.value.reason == "image_count_mismatch"


def test_placeholder_count_mismatch_is_a_data_error(generator, pngs):
    two = VisualConversation(Conversation([Message("user", "<image><image>\nSame?")]), [ImageRef(str(pngs[0]))])
    with pytest.raises(DataError, match="2 <image> placeholders for 1 images"):
        generator.generate([two], GREEDY)


def test_unreadable_and_huge_images_are_data_errors(vision_dir, pngs, tmp_path):
    generator = VisionGenerator.from_name(vision_dir, max_pixels=16 * 16)
    with pytest.raises(DataError, match="above the limit of 256") as caught:
        generator.generate([_question(pngs[0])], GREEDY)
    assert caught.value.reason == "image_too_large"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for path, reason in ((tmp_path / "bad.png", "corrupt_image"), (tmp_path / "missing.png", "missing_image")):
        with pytest.raises(DataError) as caught:
            generator.encode(_question(path), 4)
        assert caught.value.reason == reason and str(path) in str(caught.value)


def test_image_tokens_beyond_the_context_are_refused_before_decoding(generator, tmp_path):
    # 70 images x 16 tokens > the tiny model's 1024: refused without opening any image
    many = VisualConversation(Conversation([Message("user", "<image>" * 70 + "\nAll?")]),
                              [ImageRef(str(tmp_path / "never-read.png"))] * 70)
    with pytest.raises(PromptTooLong, match=r"1120 of them for 70 images x 16"):
        generator.encode(many, 4)


def test_a_text_only_model_refuses_images(tiny_model, tiny_tokenizer, pngs):
    text_only = HFGenerator(tiny_model, tiny_tokenizer, name="tiny")
    with pytest.raises(ImagesNotSupported, match="model tiny is text-only"):
        text_only.generate([_question(pngs[0])], GREEDY)
    with pytest.raises(ImagesNotSupported):
        text_only.encode(_question(pngs[0]), 4)


def test_generator_for_picks_by_directory(vision_dir, tiny_model_dir):
    assert isinstance(generator_for(str(vision_dir.parent)), VisionGenerator)  # a run holding model/
    assert isinstance(generator_for(str(tiny_model_dir)), HFGenerator)


def test_prompt_files_carry_images(tmp_path, pngs, generator, tiny_model, tiny_tokenizer):
    rows = [{"id": "col", "messages": [{"role": "user", "content": "<image>\nWhat colour?"}], "images": [pngs[0].name]},
            {"id": "part", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": pngs[1].as_uri()}}, {"type": "text", "text": "Shape?"}]}]},
            {"id": "text", "prompt": "plain"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for png in pngs[:2]:
        (tmp_path / png.name).write_bytes(png.read_bytes())
    prompts = [row.prompt for row in read_prompts(path)]
    assert isinstance(prompts[0], VisualConversation) and prompts[0].images[0].path == str(tmp_path / pngs[0].name)
    assert isinstance(prompts[1], VisualConversation) and prompts[2] == "plain"
    assert len(generator.generate(prompts, GREEDY)) == 3
    with pytest.raises(ImagesNotSupported):
        HFGenerator(tiny_model, tiny_tokenizer).generate(prompts[:1], GREEDY)


def test_chat_with_an_image(generator, pngs, tiny_model, tiny_tokenizer):
    out = io.StringIO()
    history = chat_loop(generator, GREEDY, input_stream=io.StringIO(f"What shape?\n/image {pngs[1]}\nAnd now?\n"),
                        output=out, images=[str(pngs[0])])
    assert [m.content for m in history if m.role == "user"] == ["<image>\nWhat shape?", "<image>\nAnd now?"]
    assert "image attached" in out.getvalue() and out.getvalue().count("assistant> ") == 2
    with pytest.raises(ImagesNotSupported):
        chat_loop(HFGenerator(tiny_model, tiny_tokenizer), GREEDY, input_stream=io.StringIO("hi\n"),
                  output=io.StringIO(), images=[str(pngs[0])])

