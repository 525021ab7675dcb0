"""Batched, deduplicated, left-padded log-likelihoods equal a plain per-choice computation."""
import pytest
import torch

from sftlab.eval.loglik import encode_pair, loglikelihoods

PAIRS = [
    ("Question: what colour is the sky?\nAnswer:", " blue"),
    ("Question: what colour is the sky?\nAnswer:", " a deep shade of red"),
    ("Question: what colour is the sky?\nAnswer: ", "green"),  # trailing space moves
    ("Is it true?\nA. yes\nB. no\nAnswer:", " A"),
    ("Is it true?\nA. yes\nB. no\nAnswer:", " B"),
    ("", "hello world"),  # empty context: conditioned on the start token
]


def manual(model, tokenizer, context, continuation):
    """One pair at a time, no padding, full logits: the reference computation."""
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context_ids) - 1 + j, token].item() for j, token in enumerate(continuation_ids))


@pytest.mark.parametrize("batch_size,shared_prefix", [(1, True), (4, True), (4, False)])
def test_matches_manual_per_choice(tiny_model, tiny_tokenizer, batch_size, shared_prefix):
    scored = loglikelihoods(tiny_model, tiny_tokenizer, PAIRS, batch_size=batch_size,
                            shared_prefix=shared_prefix)
    for (context, continuation), result in zip(PAIRS, scored):
        assert result.logprob == pytest.approx(manual(tiny_model, tiny_tokenizer, context, continuation), abs=1e-4)
        assert result.logprob < 0


def test_trailing_space_moves_to_continuation(tiny_tokenizer):
    context_ids, continuation_ids = encode_pair(tiny_tokenizer, "Answer: ", "yes")
    assert tiny_tokenizer.decode(context_ids) == "Answer:"
    assert tiny_tokenizer.decode(continuation_ids) == " yes"


def test_single_token_choices_share_one_forward(tiny_model, tiny_tokenizer):
    calls = []
    hook = tiny_model.register_forward_hook(lambda module, inputs, output: calls.append(1))
    context = "Is it true?\nA. yes\nB. no\nC. maybe\nAnswer:"
    loglikelihoods(tiny_model, tiny_tokenizer, [(context, f" {c}") for c in "ABC"], batch_size=8)
    hook.remove()
    assert len(calls) == 1


def test_multi_token_choices_pack_into_one_row(tiny_model, tiny_tokenizer):
    seen = []
    hook = tiny_model.register_forward_hook(lambda module, args, kwargs, output: seen.append(kwargs["input_ids"].shape),
                                            with_kwargs=True)
    context = "Question: which is the longest?\nAnswer:"
    choices = [" the first long answer", " second", " a third and much longer answer here"]
    packed = loglikelihoods(tiny_model, tiny_tokenizer, [(context, c) for c in choices], batch_size=8)
    hook.remove()
    assert len(seen) == 1 and seen[0][0] == 1  # one row for the three choices
    for choice, result in zip(choices, packed):
        assert result.logprob == pytest.approx(manual(tiny_model, tiny_tokenizer, context, choice), abs=1e-4)
