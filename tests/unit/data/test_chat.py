"""Chat rendering and loss masks (sftlab.data.chat) and ``sftlab data show-mask``."""
from __future__ import annotations

import json
import warnings

import pytest

from sftlab.data.chat import (
    CHAT_TEMPLATES,
    ensure_chat_template,
    format_mask,
    mask_summary,
    render,
    render_spans,
    segment_token_ids,
    segments_match,
    set_chat_template,
    tokenize_conversations,
    trained_segments,
)
from sftlab.errors import ConfigError, DataError
from sftlab.models.tiny import tiny_tokenizer as make_tokenizer
from sftlab.types import IGNORE_INDEX, Conversation, Message

EOT = "<|im_end|>"


def conv(*pairs, id=None) -> Conversation:
    return Conversation([Message(role, content) for role, content in pairs], id=id)


MULTI = conv(("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Red."),
             ("user", "Another one?"), ("assistant", "Blue, or green!"), id="multi")


def trained_ids(example) -> list[int]:
    return [label for label in example.labels[1:] if label != IGNORE_INDEX]


def pad_is_eos_tokenizer():
    """SmolLM2's setup: pad == eos == <|im_end|>."""
    tokenizer = make_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    return tokenizer


def bos_inserting_tokenizer():
    """A tokenizer that prepends BOS on every encode call, with a template that writes BOS."""
    from tokenizers import processors

    tokenizer = make_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    tokenizer.bos_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATES.get("llama2").jinja
    assert tokenizer("Hi")["input_ids"][0] == tokenizer.bos_token_id  # really inserts one
    return tokenizer


# --- masks -----------------------------------------------------------------------------
def test_all_assistant_trains_each_answer_and_its_end_of_turn(tiny_tokenizer):
    example = render(MULTI, tiny_tokenizer)
    assert trained_segments(example, tiny_tokenizer) == ["Red." + EOT, "Blue, or green!" + EOT]
    assert example.id == "multi"
    # exactly two end-of-turn tokens trained (the system/user ones are not)
    assert trained_ids(example).count(tiny_tokenizer.eos_token_id) == 2
    assert example.input_ids.count(tiny_tokenizer.eos_token_id) == 5


def test_newline_after_end_of_turn_is_not_trained(tiny_tokenizer):
    example = render(MULTI, tiny_tokenizer)
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    for t, token in enumerate(example.input_ids[:-1]):
        if example.labels[t] == tiny_tokenizer.eos_token_id:
            assert example.input_ids[t + 1] == newline[0]
            assert example.labels[t + 1] == IGNORE_INDEX


def test_last_assistant_trains_only_the_last_turn(tiny_tokenizer):
    example = render(MULTI, tiny_tokenizer, strategy="last_assistant")
    assert trained_segments(example, tiny_tokenizer) == ["Blue, or green!" + EOT]


def test_everything_trains_every_token_after_the_first(tiny_tokenizer):
    example = render(MULTI, tiny_tokenizer, strategy="everything")
    assert example.labels[1:] == example.input_ids[1:]
    assert example.num_trained == len(example) - 1


def test_unknown_strategy_is_a_config_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match="all_assistant"):
        render(MULTI, tiny_tokenizer, strategy="assistant_only")


def test_whitespace_inside_an_answer_is_kept_and_trained(tiny_tokenizer):
    example = render(conv(("user", "x"), ("assistant", "  two\n\nlines \n")), tiny_tokenizer)
    assert trained_segments(example, tiny_tokenizer) == ["  two\n\nlines \n" + EOT]


def test_conversation_ending_with_user_trains_earlier_answers(tiny_tokenizer):
    example = render(conv(("user", "a"), ("assistant", "b"), ("user", "c")), tiny_tokenizer)
    assert trained_segments(example, tiny_tokenizer) == ["b" + EOT]


def test_leading_assistant_turn_is_reported(tiny_tokenizer):
    leading = conv(("assistant", "Hi, ask me."), ("user", "q"), ("assistant", "a"), id="lead")
    with pytest.raises(DataError) as error:
        render(leading, tiny_tokenizer)
    assert error.value.reason == "starts_with_assistant"
    # only the last turn is trained under last_assistant, so the leading one is context
    example = render(leading, tiny_tokenizer, strategy="last_assistant")
    assert trained_segments(example, tiny_tokenizer) == ["a" + EOT]
    assert tokenize_conversations([leading], tiny_tokenizer).dropped_ids == [("lead", "starts_with_assistant")]


# --- token ids: what the model sees ------------------------------------------------------
def test_ids_equal_tokenizing_the_whole_rendered_text(tiny_tokenizer):
    example = render(MULTI, tiny_tokenizer)
    dicts = [m.to_dict() for m in MULTI.messages]
    text = tiny_tokenizer.apply_chat_template(dicts, tokenize=False)
    assert example.input_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert example.input_ids == list(tiny_tokenizer.apply_chat_template(dicts)["input_ids"])


def test_segments_tokenized_alone_concatenate_to_the_whole(tiny_tokenizer):
    rendering = render_spans(MULTI, tiny_tokenizer)
    assert "".join(rendering.text[s.start:s.end] for s in rendering.spans) == rendering.text
    assert segments_match(rendering, tiny_tokenizer)
    pieces = segment_token_ids(rendering, tiny_tokenizer)
    example = render(MULTI, tiny_tokenizer)
    # and the labels are exactly the trained pieces
    expected = []
    for span, ids in zip(rendering.spans, pieces):
        expected += ids if span.trained else [IGNORE_INDEX] * len(ids)
    assert example.labels == expected


def test_segments_mismatch_is_detected(tiny_tokenizer):
    # cutting inside a word: "Hel" + "lo" tokenize differently from "Hello"
    from sftlab.data.chat import Rendering, Span

    rendering = Rendering("Hello world", [Span(0, 3, False), Span(3, 11, True)])
    assert not segments_match(rendering, tiny_tokenizer)


def test_boundary_inside_a_token_warns_and_is_not_trained():
    tokenizer = make_tokenizer()
    # the generation prompt "Ans" ends inside the word "Answer": BPE merges across the cut
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\n' }}"
        "{% else %}{{ 'Ans' + m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Ans' }}{% endif %}")
    conversation = conv(("user", "hi"), ("assistant", "wer is yes"))
    assert not segments_match(render_spans(conversation, tokenizer), tokenizer)
    with pytest.warns(UserWarning, match="boundary falls inside a token"):
        example = render(conversation, tokenizer)
    # the straddling token starts in the prompt, so it is not trained; the rest is
    assert trained_segments(example, tokenizer) == [" is yes" + EOT]


def test_bos_is_not_doubled_when_tokenizer_and_template_both_add_it():
    tokenizer = bos_inserting_tokenizer()
    example = render(MULTI, tokenizer)
    bos = tokenizer.bos_token_id
    assert example.input_ids[0] == bos and example.input_ids[1] != bos
    # llama2 writes BOS before each user turn: one per user message, no more
    assert example.input_ids.count(bos) == 2
    assert trained_segments(example, tokenizer) == [" Red. " + EOT, " Blue, or green! " + EOT]
    assert example.labels[0] == IGNORE_INDEX


def test_pad_equal_to_eos_keeps_eos_trained():
    tokenizer = pad_is_eos_tokenizer()
    example = render(MULTI, tokenizer)
    assert trained_ids(example).count(tokenizer.eos_token_id) == 2
    assert trained_ids(example)[-1] == tokenizer.pad_token_id


# --- templates ---------------------------------------------------------------------------
def test_tokenizer_without_template_gets_named_fallback_and_a_warning():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.warns(UserWarning, match="no chat template; using the 'chatml' template"):
        template = ensure_chat_template(tokenizer)
    assert template == CHAT_TEMPLATES.get("chatml").jinja == tokenizer.chat_template
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # installed now: no second warning
        assert ensure_chat_template(tokenizer) == template


def test_existing_template_is_kept_silently(tiny_tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ensure_chat_template(tiny_tokenizer, fallback="llama2") == tiny_tokenizer.chat_template


def test_unknown_fallback_names_the_choices():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="did you mean 'chatml'"):
        ensure_chat_template(tokenizer, fallback="chatm")


@pytest.mark.parametrize("name", ["chatml", "llama2", "zephyr", "alpaca"])
def test_every_named_template_masks_answers_plus_end_of_turn(name):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = None
    with pytest.warns(UserWarning, match=name):
        ensure_chat_template(tokenizer, fallback=name)
    segments = trained_segments(render(MULTI, tokenizer), tokenizer)
    # llama2 writes " answer </s>": compare without the template's spaces
    assert [s.strip().replace(" " + EOT, EOT) for s in segments] == ["Red." + EOT, "Blue, or green!" + EOT]
    assert all(s.endswith(EOT) for s in segments)


def test_set_chat_template_replaces_the_tokenizer_template():
    tokenizer = make_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set_chat_template(tokenizer, "zephyr") == tokenizer.chat_template
    assert render_spans(MULTI, tokenizer).text.startswith("<|system|>\nBe brief.<|im_end|>\n<|user|>")


def test_prefix_unstable_template_is_reported():
    tokenizer = make_tokenizer()  # a fresh one: the session fixture stays untouched
    # the generation prompt says "assistant" but turns are written as "bot": no prefix
    tokenizer.chat_template = CHAT_TEMPLATES.get("chatml").jinja.replace(
        "'<|im_start|>' + message['role']", "'<|im_start|>' + message['role'].replace('assistant', 'bot')")
    with pytest.raises(DataError) as error:
        render(MULTI, tokenizer)
    assert error.value.reason == "template_not_prefix_stable"


def test_turn_without_end_of_turn_token_is_reported():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    with pytest.raises(DataError) as error:
        render(MULTI, tokenizer)
    assert error.value.reason == "no_end_of_turn"
    result = tokenize_conversations([MULTI], tokenizer)
    assert result.examples == [] and result.dropped == {"no_end_of_turn": 1}


# --- data sets: drop and report ----------------------------------------------------------
def test_tokenize_conversations_drops_and_reports(tiny_tokenizer):
    full_length = len(render(MULTI, tiny_tokenizer))
    first_answer_end = render(MULTI, tiny_tokenizer, strategy="last_assistant")
    conversations = [
        MULTI,
        conv(("user", "only a question"), id="no-answer"),
        conv(("system", "s"), ("user", "a long question " * 20), ("assistant", "late answer"), id="late"),
        conv(("user", "q"), ("assistant", "a"), id=None),
    ]
    result = tokenize_conversations(conversations, tiny_tokenizer, max_length=full_length - 5)
    assert result.dropped == {"no_trained_tokens": 1, "truncated_all_labels": 1}
    assert result.dropped_ids == [("no-answer", "no_trained_tokens"), ("late", "truncated_all_labels")]
    assert [e.id for e in result.examples] == ["multi", None]
    assert result.truncated == 1
    kept = result.examples[0]
    assert len(kept) == full_length - 5 and kept.num_trained > 0
    assert "dropped 2 (" in result.summary() and "1 truncated" in result.summary()
    assert len(first_answer_end) == full_length


def test_no_example_is_kept_without_trained_tokens(tiny_tokenizer):
    conversations = [conv(("user", "q" * k), ("assistant", "a")) for k in range(1, 30)]
    for max_length in (2, 5, 9, 12, 20):
        result = tokenize_conversations(conversations, tiny_tokenizer, max_length=max_length)
        assert all(e.num_trained > 0 and len(e) <= max_length for e in result.examples)
        assert len(result.examples) + sum(result.dropped.values()) == len(conversations)


def test_progress_bar_does_not_change_results(tiny_tokenizer):
    conversations = [MULTI, conv(("user", "a"), id="bad")]
    quiet = tokenize_conversations(conversations, tiny_tokenizer)
    loud = tokenize_conversations(conversations, tiny_tokenizer, progress=True)
    assert [e.input_ids for e in loud.examples] == [e.input_ids for e in quiet.examples]
    assert loud.dropped_ids == quiet.dropped_ids == [("bad", "no_trained_tokens")]


def test_unnamed_dropped_examples_are_named_by_index(tiny_tokenizer):
    result = tokenize_conversations([conv(("user", "a"))], tiny_tokenizer)
    assert result.dropped_ids == [("#0", "no_trained_tokens")]


# --- showing masks -----------------------------------------------------------------------
def test_format_mask_brackets_trained_text(tiny_tokenizer):
    example = render(conv(("user", "Hi"), ("assistant", "Yo")), tiny_tokenizer)
    assert format_mask(example, tiny_tokenizer) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Yo<|im_end|>]]\n")


def test_format_mask_color_uses_ansi_not_brackets(tiny_tokenizer):
    example = render(conv(("user", "Hi"), ("assistant", "Yo")), tiny_tokenizer)
    shown = format_mask(example, tiny_tokenizer, color=True)
    assert "\x1b[" in shown and "[[" not in shown and "Yo<|im_end|>" in shown


def test_mask_summary_counts(tiny_tokenizer):
    example = render(conv(("user", "Hi"), ("assistant", "Yo")), tiny_tokenizer)
    assert mask_summary(example) == f"1 example, {len(example)} tokens, {example.num_trained} trained " \
                                    f"({example.num_trained / len(example):.1%})"
    assert mask_summary([example, example]).startswith(f"2 examples, {2 * len(example)} tokens")


def test_show_mask_cli(tmp_path, capsys):
    from sftlab.cli import main

    path = tmp_path / "chats.jsonl"
    late = conv(("user", "a long question " * 30), ("assistant", "late answer"), id="late")
    path.write_text("\n".join(json.dumps(c.to_dict()) for c in [MULTI, late]) + "\n")
    max_length = len(render(MULTI, make_tokenizer()))
    assert main(["data", "show-mask", str(path), "--tokenizer", "tiny", "-n", "1", "--color", "never",
                 "--format", "canonical", "--max-length", str(max_length)]) == 0
    out = capsys.readouterr().out
    assert "[[Red.<|im_end|>]]" in out and "[[Blue, or green!<|im_end|>]]" in out
    assert "=== multi: 1 example" in out
    assert "dropped 1 (truncated_all_labels: 1)" in out and "dropped late: truncated_all_labels" in out
    assert "(trained tokens are shown as [[...]])" in out
