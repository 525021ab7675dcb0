"""Readers, detection and validation on single rows (no files)."""
from __future__ import annotations

import pytest

from sftlab.data.formats import FORMATS, ReadOptions, detect_format, parse_messages, parse_turns, validate
from sftlab.errors import DataError
from sftlab.types import Conversation, Message


def read(format: str, row, **options):
    return FORMATS.get(format)(row, ReadOptions(**options))


def pairs(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages]


def error_of(format: str, row, **options) -> DataError:
    with pytest.raises(DataError) as caught:
        read(format, row, **options)
    return caught.value


# --- readers --------------------------------------------------------------------------

def test_alpaca_joins_input_and_keeps_system_history_and_extra_fields():
    row = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello",
           "system": "Be brief.", "history": [["Hi", "Hello!"]], "category": "mt"}
    [conversation] = read("alpaca", row)
    assert pairs(conversation) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"),
                                   ("user", "Translate.\n\nBonjour"), ("assistant", "Hello")]
    assert conversation.meta == {"category": "mt"}
    assert conversation.id is None  # the file driver assigns <stem>-<index>


def test_alpaca_empty_input_is_just_the_instruction():
    [conversation] = read("alpaca", {"instruction": "Name a colour.", "input": "", "output": "Red", "id": 7})
    assert pairs(conversation) == [("user", "Name a colour."), ("assistant", "Red")]
    assert conversation.id == "7"


def test_alpaca_errors_name_the_alpaca_field():
    assert error_of("alpaca", {"instruction": "x", "input": ""}).field == "output"
    assert error_of("alpaca", {"instruction": "x", "output": 3}).field == "output"
    assert error_of("alpaca", {"instruction": "x", "output": "  "}).field == "output"
    bad_history = error_of("alpaca", {"instruction": "x", "output": "y", "history": [["only one"]]})
    assert bad_history.field == "history[0]" and bad_history.reason == "wrong type"


def test_dolly_context_and_category():
    row = {"instruction": "When did Virgin Australia start operating?",
           "context": "Virgin Australia commenced services on 31 August 2000.",
           "response": "31 August 2000.", "category": "closed_qa"}
    [conversation] = read("dolly", row)
    assert conversation.messages[0].content.endswith("\n\nVirgin Australia commenced services on 31 August 2000.")
    assert conversation.meta == {"category": "closed_qa"}


def test_openai_messages_bare_list_developer_and_content_parts():
    row = {"messages": [{"role": "developer", "content": "Terse."},
                        {"role": "user", "content": [{"type": "text", "text": "Capital of "},
                                                     {"type": "text", "text": "France?"}]},
                        {"role": "assistant", "content": "Paris."}]}
    [conversation] = read("openai", row)
    assert pairs(conversation) == [("system", "Terse."), ("user", "Capital of France?"), ("assistant", "Paris.")]
    [bare] = read("openai", row["messages"][1:])
    assert pairs(bare) == pairs(conversation)[1:]
    error = error_of("openai", {"messages": [{"role": "tool", "content": "{}"}]})
    assert error.field == "messages[0].role" and "tool" in error.message


def test_sharegpt_maps_every_speaker_name():
    speakers = [("system", "system"), ("human", "user"), ("gpt", "assistant"), ("user", "user"),
                ("chatgpt", "assistant"), ("user", "user"), ("bing", "assistant"), ("human", "user"),
                ("bard", "assistant"), ("user", "user"), ("assistant", "assistant")]
    row = {"id": "identity_0", "conversations": [{"from": s, "value": f"t{k}"} for k, (s, _) in enumerate(speakers)]}
    [conversation] = read("sharegpt", row)
    assert [m.role for m in conversation.messages] == [role for _, role in speakers]
    assert conversation.id == "identity_0"


def test_sharegpt_unknown_speaker_is_named():
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]}
    error = error_of("sharegpt", row)
    assert "robot" in str(error) and error.field == "conversations[1].from" and error.reason == "unknown role"


def test_sharegpt_top_level_system_and_native_field_names():
    row = {"system": "Be kind.", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}
    error = error_of("sharegpt", row)
    assert error.field == "conversations[1].from" and "two user turns in a row" in error.message


def test_prompt_completion_plain_and_conversational():
    [plain] = read("prompt_completion", {"prompt": "2+2=", "completion": "4"})
    assert pairs(plain) == [("user", "2+2="), ("assistant", "4")]
    [chat] = read("prompt_completion", {"prompt": [{"role": "user", "content": "2+2?"}],
                                        "completion": [{"role": "assistant", "content": "4"}]})
    assert pairs(chat) == [("user", "2+2?"), ("assistant", "4")]


def test_xp3_inputs_targets_and_meta():
    [conversation] = read("xp3", {"inputs": "Is the sky blue? yes or no", "targets": "yes", "dataset": "toy"})
    assert pairs(conversation) == [("user", "Is the sky blue? yes or no"), ("assistant", "yes")]
    assert conversation.meta == {"dataset": "toy"}
    assert error_of("xp3", {"inputs": "q", "targets": ""}).field == "targets"


def test_canonical_keeps_id_source_meta():
    row = {"id": "a-0", "source": "a.json", "meta": {"k": 1},
           "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    [conversation] = read("canonical", row)
    assert conversation.to_dict() == row


# --- Open Assistant trees ---------------------------------------------------------------

def message(role, text, replies=(), **fields):
    return {"message_id": text, "role": role, "text": text, "deleted": False, "review_result": True,
            "replies": list(replies), **fields}


def tree():
    """prompt -> A1 (rank 1) -> follow-up -> B ; prompt -> A0 (rank 0) ; prompt -> A2 (no rank) -> unanswered."""
    return {"message_tree_id": "t", "prompt": message("prompter", "Q", [
        message("assistant", "A1", [message("prompter", "F", [message("assistant", "B")])], rank=1),
        message("assistant", "A0", rank=0),
        message("assistant", "A2", [message("prompter", "unanswered")]),
    ])}


def test_oasst_every_thread_trailing_prompter_cut():
    conversations = read("oasst", tree())
    assert [[m.content for m in c.messages] for c in conversations] == [
        ["Q", "A1", "F", "B"], ["Q", "A0"], ["Q", "A2"]]
    assert [c.id for c in conversations] == ["t-0", "t-1", "t-2"]
    assert conversations[0].meta["message_ids"] == ["Q", "A1", "F", "B"]


def test_oasst_best_path_follows_lowest_rank():
    [best] = read("oasst", tree(), oasst_best_path=True)
    assert [m.content for m in best.messages] == ["Q", "A0"] and best.id == "t-best"


def test_oasst_best_path_without_ranks_takes_first_reply():
    row = tree()
    for reply in row["prompt"]["replies"]:
        reply.pop("rank", None)
    [best] = read("oasst", row, oasst_best_path=True)
    assert [m.content for m in best.messages] == ["Q", "A1", "F", "B"]


def test_oasst_deleted_and_unreviewed_subtrees_dropped_and_counted():
    row = tree()
    row["prompt"]["replies"][0]["deleted"] = True
    row["prompt"]["replies"][1]["review_result"] = None
    conversations = read("oasst", row)
    assert [[m.content for m in c.messages] for c in conversations] == [["Q", "A2"]]
    assert conversations.dropped == {"oasst deleted message": 1, "oasst unreviewed message": 1}
    kept = read("oasst", row, oasst_keep_deleted=True, oasst_keep_unreviewed=True)
    assert len(kept) == 3 and kept.dropped == {}


def test_oasst_unknown_role_names_path():
    row = tree()
    row["prompt"]["replies"][1]["role"] = "moderator"
    error = error_of("oasst", row)
    assert error.field == "prompt.replies[1].role" and "moderator" in error.message


def test_answers_are_optional_only_for_prompts():
    """require_assistant=False (prompt files): a row may leave its answer out."""
    for format, row in [("alpaca", {"instruction": "i"}), ("dolly", {"instruction": "i"}),
                        ("xp3", {"inputs": "i"}), ("prompt_completion", {"prompt": "i"})]:
        [conversation] = read(format, row, require_assistant=False)
        assert pairs(conversation) == [("user", "i")]
        assert error_of(format, row).reason == "missing field"


def test_alpaca_prompt_without_output_names_the_instruction_field():
    row = {"instruction": "i", "history": [["a", "b"]], "system": "s"}
    [conversation] = read("alpaca", row, require_assistant=False)
    assert pairs(conversation)[-1] == ("user", "i")
    assert error_of("alpaca", {"instruction": 5}, require_assistant=False).field == "instruction"


def test_parse_messages_is_the_one_message_parser():
    assert parse_messages([{"role": "developer", "content": "s"},
                           {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) \
        == [Message("system", "s"), Message("user", "ab")]
    with pytest.raises(DataError) as caught:
        parse_messages([{"role": "user", "content": "a"}, {"role": "user"}], "chosen")
    assert caught.value.field == "chosen[1].content" and caught.value.reason == "missing field"
    with pytest.raises(DataError) as caught:
        parse_messages("hi", "prompt")
    assert caught.value.field == "prompt" and caught.value.reason == "wrong type"
    assert parse_turns("hi", "prompt", "user") == [Message("user", "hi")]


# --- validation ---------------------------------------------------------------------------

def conversation(*turns) -> Conversation:
    return Conversation([Message(role, content) for role, content in turns])


@pytest.mark.parametrize("turns, field, reason", [
    ([("user", "a"), ("user", "b"), ("assistant", "c")], "messages[1].role", "roles do not alternate"),
    ([("assistant", "a")], "messages[0].role", "roles do not alternate"),
    ([("user", "a"), ("system", "s"), ("assistant", "c")], "messages[1].role", "misplaced system turn"),
    ([("user", "a"), ("assistant", "b"), ("user", "c")], "messages[2].role", "no final assistant turn"),
    ([("user", "a"), ("assistant", " \n")], "messages[1].content", "empty assistant turn"),
    ([("user", "a"), ("robot", "b")], "messages[1].role", "unknown role"),
    ([("user", "a"), ("assistant", 5)], "messages[1].content", "wrong type"),
    ([], "messages", "empty conversation"),
])
def test_validate_rejects_with_field_and_reason(turns, field, reason):
    with pytest.raises(DataError) as caught:
        validate(conversation(*turns))
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert caught.value.hint


def test_validate_two_users_names_message_index():
    with pytest.raises(DataError, match="two user turns in a row at message 2"):
        validate(conversation(("system", "s"), ("user", "a"), ("user", "b"), ("assistant", "c")))


def test_validate_accepts_good_and_prompt_only_without_requirement():
    good = conversation(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    assert validate(good) is good
    prompt = conversation(("user", "a"), ("assistant", "b"), ("user", "c"))
    assert validate(prompt, require_assistant=False) is prompt


# --- detection ----------------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"instruction": "i", "context": "", "response": "r", "category": "qa"}, "dolly"),
    ({"messages": [{"role": "user", "content": "u"}]}, "openai"),
    ([{"role": "user", "content": "u"}], "openai"),
    ({"id": "x", "source": "s", "messages": [], "meta": {}}, "canonical"),
    ({"id": "x", "conversations": []}, "sharegpt"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"inputs": "i", "targets": "t"}, "xp3"),
    ({"message_tree_id": "t", "prompt": {"role": "prompter"}}, "oasst"),
])
def test_detect_format(row, expected):
    assert detect_format([row, row]) == expected


def test_detect_format_unknown_keys_is_an_error_listing_them():
    with pytest.raises(DataError, match=r"\['answer', 'question'\]"):
        detect_format([{"question": "q", "answer": "a"}])
