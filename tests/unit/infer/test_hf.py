"""HFGenerator on the tiny model: batching, order, stops, sampling, streaming, token counts."""
from __future__ import annotations

import pytest

from sftlab.infer.base import Generator, SamplingConfig
from sftlab.infer.hf import HFGenerator, prompt_to_ids
from sftlab.types import Message

PROMPTS = [
    [Message("user", "Sort these numbers")],
    "The a of",
    [Message("system", "be brief"), Message("user", "Explain the water cycle to a child in many words")],
    "x",
    "count the letters in this long sentence please now",
    [Message("user", "hi")],
]


@pytest.fixture()
def generator(tiny_model, tiny_tokenizer):
    return HFGenerator(tiny_model, tiny_tokenizer, batch_size=4)


def test_is_a_generator(generator):
    assert isinstance(generator, Generator)


def test_greedy_batched_equals_one_at_a_time(generator):
    sampling = SamplingConfig(max_new_tokens=16)
    batched = generator.generate(PROMPTS, sampling)
    single = HFGenerator(generator.model, generator.tokenizer, batch_size=1).generate(PROMPTS, sampling)
    assert batched == single
    assert all(g.completion_tokens == 16 and g.finish_reason == "length" for g in batched)
    # 6 prompts, 4 in flight: the first 4 decode 15 steps together (the prefill makes each
    # first token), then the last 2 take their places: 15 + 15 steps, not 6 x 15
    assert generator.decode_steps == 30


def test_results_in_input_order(generator):
    sampling = SamplingConfig(max_new_tokens=8)
    forward = generator.generate(PROMPTS, sampling)
    backward = generator.generate(PROMPTS[::-1], sampling)
    assert forward == backward[::-1]


def test_prompt_tokens_count_template(generator, tiny_tokenizer):
    out = generator.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=2))
    rendered = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Sort these numbers"}],
                                                  tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert out[0].prompt_tokens == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert out[1].prompt_tokens == len(prompt_to_ids(tiny_tokenizer, "The a of"))


def test_stop_string_cuts_text_and_streams_the_same(generator):
    full = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=20))
    # a stop string taken from the middle of the first completion
    stop = full[0].text[5:7]
    assert stop and stop not in full[0].text[:5]
    pieces: dict[int, list[str]] = {}
    out = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=20, stop=[stop]),
                             on_text=lambda i, delta: pieces.setdefault(i, []).append(delta))
    assert out[0].text == full[0].text[:full[0].text.index(stop)]
    assert out[0].finish_reason == "stop"
    assert out[0].completion_tokens < 20
    for i, gen in enumerate(out):
        assert stop not in gen.text
        assert "".join(pieces.get(i, [])) == gen.text
        if stop not in full[i].text:
            assert gen == full[i]


def test_eos_stops_a_row(generator, tiny_tokenizer):
    import torch

    prompt_ids = tiny_tokenizer("The a of")["input_ids"]
    greedy = generator.model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=10,
                                      do_sample=False, pad_token_id=3)[0, len(prompt_ids):].tolist()
    # declare the 4th greedy token an end-of-sequence token: generation must stop at its first use
    generator.eos_ids = {greedy[3]}
    first = greedy.index(greedy[3])
    out = generator.generate(["The a of"], SamplingConfig(max_new_tokens=10))[0]
    assert out.finish_reason == "stop"
    assert out.completion_tokens == first + 1
    assert out.text == tiny_tokenizer.decode(greedy[:first], skip_special_tokens=True)


def test_sampling_reproducible_with_seed(generator):
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    first = generator.generate(PROMPTS, sampling)
    again = generator.generate(PROMPTS, sampling)
    other = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=4))
    greedy = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    assert first == again
    assert first != other
    assert first != greedy


def test_sampling_leaves_global_rng_alone(generator):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generator.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=4, temperature=1.0, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_messages_as_dicts_match_message_objects(generator):
    sampling = SamplingConfig(max_new_tokens=6)
    a = generator.generate([[Message("user", "hi")]], sampling)
    b = generator.generate([[{"role": "user", "content": "hi"}]], sampling)
    assert a == b


@pytest.mark.slow
def test_default_model_greedy_batched_equals_one_at_a_time():
    from sftlab.models import load_model, load_tokenizer

    model, tokenizer = load_model("default"), load_tokenizer("default")
    prompts = [[Message("user", text)] for text in (
        "Name three colours.", "What is 2 + 2?", "Write a haiku about the sea.",
        "Give me a synonym for happy.", "Translate 'good morning' to French.")]
    sampling = SamplingConfig(max_new_tokens=24)
    batched = HFGenerator(model, tokenizer, batch_size=5).generate(prompts, sampling)
    single = HFGenerator(model, tokenizer, batch_size=1).generate(prompts, sampling)
    assert [g.text for g in batched] == [g.text for g in single]
    assert any("4" in g.text for g in batched[1:2])
