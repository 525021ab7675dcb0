"""Data statistics: summaries, counts on a known result, token lengths, the histogram PNG."""
from __future__ import annotations

from collections import Counter

from sftlab.data.io import ReadResult, read_conversations
from sftlab.data.stats import data_stats, format_table, percentile, plot_token_histogram, summarize, token_lengths
from sftlab.types import Conversation, Message


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert summarize([5, 1, 3]) == {"count": 3, "mean": 3.0, "p50": 3, "p90": 5, "p99": 5, "max": 5}
    assert summarize([])["count"] == 0


def small_result() -> ReadResult:
    one = Conversation([Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello")])
    two = Conversation([Message("user", ""), Message("assistant", "Yes"), Message("user", "Why?"),
                        Message("assistant", "Because.")])
    return ReadResult([one, two], "canonical", records=3, skipped=Counter({"missing field": 1}))


def test_counts_on_a_known_result():
    stats = data_stats(small_result())
    assert stats["records"] == 3 and stats["conversations"] == 2
    assert stats["skipped"] == {"missing field": 1}
    assert stats["assistant_turns"] == {"1": 1, "2": 1}
    assert stats["roles"] == {"system": 1, "user": 3, "assistant": 3}
    assert stats["empty_messages"] == {"system": 0, "user": 1, "assistant": 0}
    lengths = [9, 2, 5, 0, 3, 4, 8]
    assert stats["chars_per_message"] == summarize(lengths)
    assert "tokens_per_conversation" not in stats
    table = format_table(stats)
    assert "conversations         2" in table and "missing field: 1" in table


def test_token_lengths_use_the_chat_template(tiny_tokenizer):
    result = small_result()
    lengths = token_lengths(result.conversations, tiny_tokenizer)
    rendered = tiny_tokenizer.apply_chat_template([m.to_dict() for m in result.conversations[0].messages],
                                                  tokenize=False)
    assert lengths[0] == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert rendered.count("<|im_start|>") == 3
    stats = data_stats(result, lengths)
    assert stats["tokens_per_conversation"]["max"] == max(lengths)


def test_real_file_stats_and_histogram(shared_data, tiny_tokenizer, tmp_path):
    result = read_conversations(shared_data / "formats" / "sharegpt_dummy_conversation.json")
    lengths = token_lengths(result.conversations, tiny_tokenizer)
    stats = data_stats(result, lengths)
    assert stats["assistant_turns"] == {"1": 167, "2": 166, "3": 167}
    assert stats["roles"] == {"system": 0, "user": 1000, "assistant": 1000}
    tokens = stats["tokens_per_conversation"]
    assert tokens["count"] == 500 and tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"]
    png = plot_token_histogram(lengths, tmp_path / "plots" / "lengths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
