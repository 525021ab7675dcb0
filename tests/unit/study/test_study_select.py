"""compare-data's sources: IFD against losses computed by hand, orderings, the token budget."""
import pytest
import torch

from sftlab.data.chat import tokenize_conversations
from sftlab.errors import ConfigError
from sftlab.study import select
from sftlab.types import Conversation, Message


def conversation(question, answer, id=None):
    return Conversation([Message("user", question), Message("assistant", answer)], id=id)


def hand_loss(model, tokenizer, prompt_text, response_text):
    """Mean -log p of the response's tokens after ``prompt_text``, from the logits directly."""
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt_text + response_text, add_special_tokens=False)["input_ids"]
    assert full[:len(prompt)] == prompt  # the response starts on a token boundary
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    nll = [-logprobs[t - 1, full[t]].item() for t in range(len(prompt), len(full))]
    return sum(nll) / len(nll)


def test_ifd_is_the_ratio_of_the_two_hand_computed_losses(tiny_model, tiny_tokenizer):
    example = conversation("Sort these numbers: 3, 1, 2", "1, 2, 3")
    # ChatML, written out: the response is trained with its end-of-turn token
    with_instruction = hand_loss(tiny_model, tiny_tokenizer,
                                 "<|im_start|>user\nSort these numbers: 3, 1, 2<|im_end|>\n<|im_start|>assistant\n",
                                 "1, 2, 3<|im_end|>")
    alone = hand_loss(tiny_model, tiny_tokenizer, "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n",
                      "1, 2, 3<|im_end|>")
    conditioned, unconditioned = select.response_losses(tiny_model, tiny_tokenizer, example)
    assert conditioned == pytest.approx(with_instruction, rel=1e-4)
    assert unconditioned == pytest.approx(alone, rel=1e-4)
    assert conditioned != pytest.approx(unconditioned, rel=1e-4)  # the instruction changes the loss
    [row] = select.ifd_scores(tiny_model, tiny_tokenizer, [example])
    assert row["ifd"] == pytest.approx(with_instruction / alone, rel=1e-4)


def test_ifd_order_is_highest_first_without_ratios_at_or_above_the_maximum():
    pool = [conversation(f"q{i}", f"a{i}", id=f"x{i}") for i in range(4)]
    scores = [{"ifd": 0.5}, {"ifd": 0.9}, {"ifd": 1.0}, {"ifd": 0.7}]
    assert [c.id for c in select.ifd_order(pool, scores, ifd_max=1.0)] == ["x1", "x3", "x0"]


def test_longest_order_and_trained_tokens_count_as_the_trainer_does(tiny_tokenizer):
    pool = [conversation("q", "short", id="a"), conversation("q", "a much longer answer than that", id="b"),
            conversation("q", "middling answer", id="c")]
    counts = select.trained_tokens(pool, tiny_tokenizer, max_length=256)
    assert sum(counts) == tokenize_conversations(pool, tiny_tokenizer, max_length=256).trained_tokens
    assert [c.id for c in select.longest_order(pool, counts)] == ["b", "c", "a"]
    for max_length in (12, 16, 20):  # truncated as the trainer truncates; 0 where it drops the example
        truncated = dict(zip("abc", select.trained_tokens(pool, tiny_tokenizer, max_length=max_length)))
        kept = tokenize_conversations(pool, tiny_tokenizer, max_length=max_length).examples
        assert {k: v for k, v in truncated.items() if v} == {e.id: e.num_trained for e in kept}
    assert 0 < sum(select.trained_tokens(pool, tiny_tokenizer, max_length=16)) < sum(counts)


def test_equal_budget_cuts_every_source_to_the_smallest_total():
    examples = {f"e{i}": conversation("q", "a", id=f"e{i}") for i in range(6)}
    counts = {"e0": 10, "e1": 10, "e2": 10, "e3": 25, "e4": 5, "e5": 12}
    selections = {"short": [examples[k] for k in ("e0", "e1", "e2")],           # 30 tokens
                  "long": [examples[k] for k in ("e3", "e4", "e5")]}            # 42 tokens
    budget, cut = select.equal_budget(selections, counts)
    assert budget == 30
    assert [c.id for c in cut["short"]] == ["e0", "e1", "e2"]
    assert [c.id for c in cut["long"]] == ["e3", "e4"]  # 30 tokens; e5 would pass the budget
    for chosen in cut.values():
        assert sum(counts[c.id] for c in chosen) <= budget
    budget, cut = select.equal_budget(selections, counts, budget=20)
    assert [c.id for c in cut["short"]] == ["e0", "e1"] and cut["long"] == []  # a prefix, never a skip


def test_a_budget_no_source_can_meet_names_the_key():
    selections = {"a": [conversation("q", "a", id="x")], "b": [conversation("q", "a", id="y")]}
    with pytest.raises(ConfigError, match="budget_tokens: 50 .* a \\(5 tokens\\)"):
        select.equal_budget(selections, {"x": 5, "y": 60}, budget=50)


def test_batched_scores_equal_one_at_a_time(tiny_model, tiny_tokenizer):
    pool = [conversation("Add 2 and 3.", "5", id="a"), conversation("Reverse: one two three four", "four three two one",
                                                                   id="b"), conversation("Hi", "Hello there, friend.", id="c")]
    alone = [row["ifd"] for row in select.ifd_scores(tiny_model, tiny_tokenizer, pool, batch_size=1)]
    batched = select.ifd_scores(tiny_model, tiny_tokenizer, pool, batch_size=3)  # right padded together
    assert [row["id"] for row in batched] == ["a", "b", "c"]
    assert [row["ifd"] for row in batched] == pytest.approx(alone, rel=1e-5)
    assert len({round(v, 6) for v in alone}) == 3


def test_ifd_needs_a_final_response(tiny_tokenizer):
    from sftlab.errors import DataError

    with pytest.raises(DataError, match="last turn must be the assistant's response"):
        select.response_renderings(tiny_tokenizer, Conversation([Message("user", "q")], id="q1"))
