"""Loss-mask invariants for tool use and reasoning, on the tiny ChatML tokenizer.

Tool results are never labelled; an assistant turn's call text is labelled and ends with
the end-of-turn token; ``train_tool_calls=False`` labels only the answers; each reasoning
policy labels exactly the expected text. A template that knows tools renders them itself
(no fallback warning); one that does not gets the ``hermes`` fallback, warned once.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from sftlab.cli import main
from sftlab.data.chat import apply_template, render, render_spans, segments_match, tokenize_conversations, trained_segments
from sftlab.data.io import read_conversations, write_conversations
from sftlab.data.tools import format_hermes_calls
from sftlab.models.tiny import tiny_model, tiny_tokenizer as make_tokenizer
from sftlab.types import IGNORE_INDEX, Conversation, Message, ToolCall

EOT = "<|im_end|>"
TIP_CALL = ('<tool_call>\n{"name": "calculate_tip", "arguments": {"bill_amount": 50, "tip_percentage": 15}}\n'
            '</tool_call><|im_end|>')

# A small Qwen2.5-like template that renders tools, calls and tool turns itself.
NATIVE_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- 'TOOLS:' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' + message['content'] }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<call>' + call.function.name + ' ' + (call.function.arguments | tojson) + '</call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<result>' + message['content'] + '</result>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def glaive(shared_data) -> list[Conversation]:
    conversations = read_conversations(shared_data / "formats" / "lf_glaive_toolcall_sample.json").conversations
    assert sum(bool(m.tool_calls) for c in conversations for m in c.messages) >= 20
    return conversations


def expected_segments(conversation: Conversation, train_tool_calls: bool = True) -> list[str]:
    """What the hermes fallback must train: each assistant turn's text (calls as blocks) + EOT."""
    out = []
    for m in conversation.messages:
        if m.role != "assistant" or (m.tool_calls and not train_tool_calls):
            continue
        text = m.content
        if m.tool_calls:
            text = f"{text}\n{format_hermes_calls(m.tool_calls)}" if text else format_hermes_calls(m.tool_calls)
        out.append(text + EOT)
    return out


def test_tool_results_are_never_labelled(glaive):
    tokenizer = make_tokenizer()
    for conversation in glaive:
        rendering = render_spans(conversation, tokenizer)
        results = [m.content for m in conversation.messages if m.role == "tool"]
        start = 0
        for result in results:  # each result's characters lie in untrained spans only
            block = f"<tool_response>\n{result}\n</tool_response>"
            at = rendering.text.index(block, start)
            start = at + len(block)
            assert not any(s.trained and s.start < start and s.end > at for s in rendering.spans), conversation.id
        example = render(conversation, tokenizer)
        assert all("<tool_response>" not in s for s in trained_segments(example, tokenizer))
        assert example.input_ids == tokenizer(rendering.text, add_special_tokens=False)["input_ids"]
        assert segments_match(rendering, tokenizer), conversation.id


def test_call_text_is_labelled_and_ends_with_the_end_of_turn_token(glaive):
    tokenizer = make_tokenizer()
    for conversation in glaive:
        example = render(conversation, tokenizer)
        assert trained_segments(example, tokenizer) == expected_segments(conversation), conversation.id
        eos_trained = [t for t, label in enumerate(example.labels) if label == tokenizer.eos_token_id]
        assert len(eos_trained) == conversation.turns
    assert trained_segments(render(glaive[0], tokenizer), tokenizer)[0] == TIP_CALL


def test_train_tool_calls_false_labels_only_the_answers(glaive):
    tokenizer = make_tokenizer()
    for conversation in glaive:
        full = render(conversation, tokenizer)
        answers = render(conversation, tokenizer, train_tool_calls=False)
        assert answers.input_ids == full.input_ids
        assert trained_segments(answers, tokenizer) == expected_segments(conversation, train_tool_calls=False)
        assert all(b == IGNORE_INDEX or a == b for a, b in zip(full.labels, answers.labels))
    # a conversation that only calls tools then trains nothing: dropped and counted
    only_call = Conversation(glaive[0].messages[:2], id="call-only", tools=glaive[0].tools)
    result = tokenize_conversations([only_call], tokenizer, train_tool_calls=False)
    assert result.dropped_ids == [("call-only", "no_trained_tokens")]


REASONING = Conversation([
    Message("user", "Tip on $50 at 15%?"),
    Message("assistant", "", reasoning="I should use the tip tool.",
            tool_calls=(ToolCall("calculate_tip", {"bill_amount": 50, "tip_percentage": 15}),)),
    Message("tool", '{"tip_amount": 7.5}'),
    Message("assistant", "The tip is $7.5.", reasoning="The tool said 7.5."),
], id="reasoning")


@pytest.mark.parametrize("policy, expected", [
    ("keep", ["<think>\nI should use the tip tool.\n</think>\n\n" + TIP_CALL,
              "<think>\nThe tool said 7.5.\n</think>\n\nThe tip is $7.5.<|im_end|>"]),
    ("last_turn", [TIP_CALL, "<think>\nThe tool said 7.5.\n</think>\n\nThe tip is $7.5.<|im_end|>"]),
    ("drop", [TIP_CALL, "The tip is $7.5.<|im_end|>"]),
])
def test_reasoning_policies_label_exactly_the_expected_text(policy, expected):
    tokenizer = make_tokenizer()
    example = render(REASONING, tokenizer, reasoning=policy)
    labelled = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled, skip_special_tokens=False) == "".join(expected)
    assert trained_segments(example, tokenizer) == expected
    # the earlier turns' reasoning is not in the rendered text either
    text = tokenizer.decode(example.input_ids, skip_special_tokens=False)
    assert ("I should use the tip tool." in text) == (policy == "keep")
    assert ("The tool said 7.5." in text) == (policy != "drop")


def test_a_template_that_knows_tools_renders_them_without_the_fallback(glaive):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = NATIVE_TOOLS_TEMPLATE
    conversation = glaive[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would fail the test
        text = apply_template(tokenizer, conversation.messages, tools=conversation.tools, add_generation_prompt=False)
        example = render(conversation, tokenizer)
    assert text.startswith("<|im_start|>system\nTOOLS:\n" + json.dumps(conversation.tools[0]))
    assert "<tool_call>" not in text and "<result>" in text
    assert trained_segments(example, tokenizer) == [
        '<call>calculate_tip {"bill_amount": 50, "tip_percentage": 15}</call><|im_end|>',
        "The tip amount for your bill is $7.5.<|im_end|>"]
    assert '<result>{"tip_amount": 7.5}</result>' not in "".join(trained_segments(example, tokenizer))


def test_the_hermes_fallback_warns_once_per_tokenizer(glaive):
    tokenizer = make_tokenizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = apply_template(tokenizer, glaive[0].messages, tools=glaive[0].tools, add_generation_prompt=False)
        tokenize_conversations(glaive, tokenizer)
    hermes = [w for w in caught if "'hermes' fallback" in str(w.message)]
    assert len(hermes) == 1 and issubclass(hermes[0].category, UserWarning)
    # the tool list is in the system turn, results are one user turn of <tool_response> blocks
    assert text.startswith("<|im_start|>system\n# Tools\n") and json.dumps(glaive[0].tools[0]) in text
    assert '<|im_start|>user\n<tool_response>\n{"tip_amount": 7.5}\n</tool_response><|im_end|>' in text
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        apply_template(make_tokenizer(), glaive[0].messages, add_generation_prompt=True)
    assert len([w for w in again if "'hermes' fallback" in str(w.message)]) == 1  # a new tokenizer warns again


def test_consecutive_tool_turns_merge_into_one_user_turn():
    tokenizer = make_tokenizer()
    calls = (ToolCall("a", {}), ToolCall("b", {}))
    messages = [Message("user", "q"), Message("assistant", "", tool_calls=calls), Message("tool", "r1"),
                Message("tool", "r2"), Message("assistant", "done")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = apply_template(tokenizer, messages, add_generation_prompt=False)
        example = render(Conversation(messages), tokenizer)
    assert ("<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>"
            "<|im_end|>") in text
    assert trained_segments(example, tokenizer) == [format_hermes_calls(calls) + EOT, "done" + EOT]


def test_show_mask_marks_the_calls_of_a_glaive_file(shared_data, tmp_path, capsys):
    """``sftlab data show-mask`` on a small file built from the glaive sample."""
    raw = json.loads((shared_data / "formats" / "lf_glaive_toolcall_sample.json").read_text())
    path = tmp_path / "glaive3.json"
    path.write_text(json.dumps(raw[:3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["data", "show-mask", str(path), "--tokenizer", "tiny", "-n", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert f"[[{TIP_CALL}]]" in out
    assert '<tool_response>\n{"tip_amount": 7.5}\n</tool_response>' in out
    assert '[[<tool_response>' not in out and "[[The tip amount for your bill is $7.5.<|im_end|>]]" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["data", "show-mask", str(path), "--tokenizer", "tiny", "-n", "1", "--color", "never",
                     "--no-train-tool-calls", "--reasoning", "drop"]) == 0
    out = capsys.readouterr().out
    assert f"[[{TIP_CALL}]]" not in out and TIP_CALL in out
    assert "[[The tip amount for your bill is $7.5.<|im_end|>]]" in out


def test_a_glaive_conversation_trains_the_tiny_model(glaive):
    """One SGD step on the call + answer labels lowers the loss on them."""
    tokenizer = make_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = render(glaive[0], tokenizer)
    torch.manual_seed(0)
    model = tiny_model(seed=0)
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model(input_ids=ids, labels=labels).loss
    before.backward()
    optimizer.step()
    after = model(input_ids=ids, labels=labels).loss
    assert torch.isfinite(before) and after < before


def test_the_train_config_options_reach_the_masks(shared_data, tmp_path, capsys):
    """``data.train_tool_calls`` and ``data.reasoning`` of a train config change the labels."""
    from sftlab.train.config import DataSection
    from sftlab.train.data import load_examples

    path = str(shared_data / "formats" / "lf_glaive_toolcall_sample.json")
    tokenizer = make_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calls, _, _ = load_examples(DataSection(paths=[path], max_length=2048), tokenizer)
        answers, _, _ = load_examples(DataSection(paths=[path], max_length=2048, train_tool_calls=False), tokenizer)
    conversations = read_conversations(path).conversations
    assert [trained_segments(e, tokenizer) for e in calls] == [expected_segments(c) for c in conversations]
    assert [trained_segments(e, tokenizer) for e in answers] == [
        expected_segments(c, train_tool_calls=False) for c in conversations]
    assert [e.input_ids for e in calls] == [e.input_ids for e in answers]
    reasoning_file = tmp_path / "reasoning.jsonl"
    write_conversations([REASONING], reasoning_file, "canonical")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (dropped,), _, _ = load_examples(DataSection(paths=[str(reasoning_file)], reasoning="drop"), tokenizer)
    assert trained_segments(dropped, tokenizer) == [TIP_CALL, "The tip is $7.5.<|im_end|>"]
