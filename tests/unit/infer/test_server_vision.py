"""The OpenAI server with images (loopback only): image_url parts as a path, a file:// URL and a
base64 data URL answer what the vision generator answers; a text-only model, a remote URL,
bad base64, a corrupt or missing image and image tokens beyond the context are clear 400s."""
from __future__ import annotations

import base64

import httpx
import openai
import pytest

from sftlab.data.images import ImageRef, VisualConversation
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.infer.server import start_server
from sftlab.infer.vision import VisionGenerator
from sftlab.models.tiny import tiny_model, tiny_tokenizer
from sftlab.models.vision import save_tiny_vision
from sftlab.types import Conversation, Message


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    from sftlab.data.visual_tasks import draw_scene

    path = tmp_path_factory.mktemp("img") / "shape.png"
    draw_scene("triangle", "blue", [1]).save(path)
    return path


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return VisionGenerator.from_name(save_tiny_vision(tmp_path_factory.mktemp("vision") / "model"), batch_size=4)


@pytest.fixture(scope="module")
def server(generator):
    with start_server(generator, model_name="vision") as handle:
        yield handle


@pytest.fixture(scope="module")
def text_server():
    with start_server(HFGenerator(tiny_model(), tiny_tokenizer(), name="tiny"), model_name="tiny") as handle:
        yield handle


def _messages(url: str, text: str = "What shape?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _post(server, messages, max_tokens: int = 5) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                      json={"messages": messages, "max_tokens": max_tokens, "temperature": 0})


def test_image_parts_answer_as_the_generator_does(server, generator, png):
    expected = generator.generate([VisualConversation(Conversation([Message("user", "<image>What shape?")]),
                                                      [ImageRef(str(png))])], SamplingConfig(max_new_tokens=5))[0]
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    for url in (str(png), png.as_uri(), data_url):
        response = _post(server, _messages(url))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == expected.text
        assert body["usage"]["prompt_tokens"] == expected.prompt_tokens  # 16 image positions included
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="vision", messages=_messages(data_url), max_tokens=5, temperature=0)
    assert reply.choices[0].message.content == expected.text


def test_text_only_model_answers_400_images_not_supported(text_server, png):
    response = _post(text_server, _messages(str(png)))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "images_not_supported" and "text-only" in error["message"]
    assert _post(text_server, [{"role": "user", "content": "Hi"}]).status_code == 200  # still serving


@pytest.mark.parametrize("url, words", [
    ("https://example.com/cat.png", "does not download"),
    ("data:image/png;base64,@@@", "does not decode"),
    ("/no/such/image.png", "does not exist"),
])
def test_bad_image_urls_are_400_naming_the_problem(server, url, words):
    response = _post(server, _messages(url))
    assert response.status_code == 400 and words in response.json()["error"]["message"]


def test_corrupt_image_and_context_overflow_are_400(server, png, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    response = _post(server, _messages(str(corrupt)))
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]["message"]
    many = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(png)}}] * 70
             + [{"type": "text", "text": "all?"}]}]
    response = _post(server, many)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert "70 images" in response.json()["error"]["message"]
