"""Preference pairs in TRL's, LLaMA-Factory's and OpenAI's layouts -> one ``PreferencePair``:
the prompt is every turn before the final assistant turn; bad rows name file, line, field."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sftlab.data.preference import PreferencePair, parse_preference, read_preference_pairs
from sftlab.errors import DataError
from sftlab.types import Message

USER, ASSISTANT = {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_a_pair_file_read_as_sft_conversations_says_it_is_pairs(shared_data):
    from sftlab.data.io import read_conversations

    # not "the last turn is user" with "end each record with the assistant's answer"
    with pytest.raises(DataError, match=r"lf_dpo_sample.json: the rows are preference pairs .*objective=dpo"):
        read_conversations(shared_data / "formats" / "lf_dpo_sample.json")


def test_pair_rows_that_hold_a_conversation_read_as_sft(tmp_path):
    from sftlab.data.io import read_conversations

    # UltraFeedback-style: the SFT conversation in `messages` beside the pair
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    rows = [{"messages": chat, "chosen": chat,
             "rejected": [chat[0], {"role": "assistant", "content": "5"}]}] * 2
    result = read_conversations(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert [m.content for m in result.conversations[0].messages] == ["2+2?", "4"]


def test_llamafactory_dpo_sample_reads_exactly(shared_data):
    path = shared_data / "formats" / "lf_dpo_sample.json"
    raw = json.loads(path.read_text())
    pairs, skipped = read_preference_pairs(path)
    assert len(pairs) == 20 and not skipped
    assert Counter(len(p.prompt) for p in pairs) == {1: 8, 2: 6, 5: 5, 7: 1}
    assert sum(p.prompt[0].role == "system" for p in pairs) == 6
    assert all(p.prompt[-1].role == "user" and p.chosen != p.rejected for p in pairs)
    longest = next(i for i, p in enumerate(pairs) if len(p.prompt) == 7)
    assert [m.content for m in pairs[longest].prompt] == [t["value"] for t in raw[longest]["conversations"]]
    assert [m.role for m in pairs[longest].prompt] == ["user", "assistant"] * 3 + ["user"]
    assert pairs[longest].chosen == raw[longest]["chosen"]["value"]
    assert pairs[longest].rejected == raw[longest]["rejected"]["value"]
    assert all(p.reference == (None, None) for p in pairs)


def test_trl_explicit_prompt_as_strings_and_messages():
    text = parse_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": "a"})
    assert text == PreferencePair([Message("user", "2+2?")], "4", "5", id="a")
    messages = parse_preference({"prompt": [{"role": "system", "content": "Be brief."}, USER],
                                 "chosen": [ASSISTANT],
                                 "rejected": [{"role": "assistant", "content": "five"}]})
    assert [m.role for m in messages.prompt] == ["system", "user"]
    assert (messages.chosen, messages.rejected) == ("4", "five")


def test_trl_implicit_prompt_is_the_shared_prefix_of_a_multi_turn_pair():
    history = [USER, ASSISTANT, {"role": "user", "content": "and 3+3?"}]
    pair = parse_preference({"chosen": history + [{"role": "assistant", "content": "6"}],
                             "rejected": history + [{"role": "assistant", "content": "7"}]})
    assert [m.content for m in pair.prompt] == ["2+2?", "4", "and 3+3?"]
    assert (pair.chosen, pair.rejected) == ("6", "7")


def test_openai_preference_rows():
    pair = parse_preference({"input": {"messages": [USER], "tools": []},
                             "preferred_output": [ASSISTANT],
                             "non_preferred_output": [{"role": "assistant", "content": "5"}]})
    assert pair == PreferencePair([Message("user", "2+2?")], "4", "5")


@pytest.mark.parametrize("row, expected", [
    ({"meta": {"ref_logp_chosen": -3, "ref_logp_rejected": -4.5}}, (-3.0, -4.5)),
    ({"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}, (-1.0, -2.0)),
    ({}, (None, None)),
])
def test_reference_log_probs_in_either_naming(row, expected):
    assert parse_preference({"prompt": "q", "chosen": "a", "rejected": "b", **row}).reference == expected


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"}},
     "rejected", "missing or malformed"),
    ({"input": {"messages": [USER]}, "preferred_output": [ASSISTANT]}, "non_preferred_output", "missing"),
    ({"chosen": [USER, ASSISTANT], "rejected": [{"role": "user", "content": "other"}, ASSISTANT]},
     "chosen", "share every turn"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "meta": {"ref_logp_chosen": -1.0}},
     "meta.ref_logp_rejected", "both reference"),
    ({"instruction": "q", "output": "a"}, None, "objective=sft"),
    ({"messages": [USER], "label": True}, None, "KTO"),
])
def test_bad_row_names_file_line_and_field(tmp_path, row, field, words):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, "", row])
    with pytest.raises(DataError) as caught:
        read_preference_pairs(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (path, 3, field)
    assert str(caught.value).startswith(f"{path}:3: ") and words in str(caught.value)
    pairs, skipped = read_preference_pairs(path, on_error="skip")
    assert len(pairs) == 1 and sum(skipped.values()) == 1


@pytest.mark.parametrize("name, words", [("alpaca_en_demo.json", "objective=sft"),
                                         ("lf_kto_sample.json", "KTO")])
def test_an_sft_or_unpaired_file_is_refused_at_its_first_record(shared_data, name, words):
    path = shared_data / "formats" / name
    with pytest.raises(DataError) as caught:
        read_preference_pairs(path)
    assert caught.value.index == 0 and caught.value.file == str(path)
    assert "not a preference pair" in str(caught.value) and words in str(caught.value)
