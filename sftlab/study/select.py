"""Data sources for ``compare-data``: orderings of examples, and an equal token budget.

A source is an ordering of training examples; a study takes its first k (the selection),
then, to compare at an equal budget, the longest prefix whose trained tokens fit the
budget. Trained tokens are counted as the trainer counts them: sftlab's chat rendering
and loss mask (``sftlab.data.chat.render``), truncated at ``max_length``.

- ``random``: the pool shuffled by the seed;
- ``longest``: longest responses first (trained tokens; Zhao et al. 2024, "long is more");
- ``ifd``: highest instruction-following difficulty first (Li et al. 2024, Cherry LLM):
  ``IFD = L(A | Q) / L(A)``, the response's mean token loss given its instruction over its
  mean loss without it, under the model to be tuned. A high ratio means the instruction
  helps the model little: the example teaches what the model cannot yet do. Examples with
  IFD >= ``ifd_max`` (1 by default: the instruction does not help at all) are left out, as
  the paper filters them;
- ``judge``: highest judge-rated quality first (AlpaGasus, Chen et al. 2024): any
  OpenAI-compatible judge (or a local model) rates each example's response for accuracy
  on a 0-5 scale with the paper's prompt (the score on the reply's first line); examples
  below ``judge_min_score`` (4.5, the paper's threshold) are left out.

"Without the instruction" here is the response in an otherwise empty chat (an empty user
turn): both losses then see the same chat template and (for SmolLM2) the same default
system prompt, so the ratio measures the instruction alone.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import torch
import torch.nn.functional as F

from sftlab.data.chat import render
from sftlab.errors import ConfigError, DataError
from sftlab.train.loss import next_token_targets
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

SELECTIONS = ("random", "longest", "ifd", "judge")

# AlpaGasus's rating prompt (Chen et al. 2024, "AlpaGasus: Training a Better Alpaca with
# Fewer Data", its "accuracy" dimension), with the instruction and the response filled in
JUDGE_PROMPT = (
    "We would like to request your feedback on the performance of AI assistant in response to the "
    "instruction and the given input displayed following.\n\nInstruction: {instruction}\n\n"
    "Response: {response}\n\nPlease rate according to the accuracy of the response to the instruction "
    "and the input. Each assistant receives a score on a scale of 0 to 5, where a higher score indicates "
    "higher level of the accuracy. Please first output a single line containing value indicating the "
    "scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, "
    "avoiding any potential bias.")
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
# the score opens the reply's first line, alone or after a "Score:" label (AlpaGasus asks for
# "a single line containing value indicating the scores"); a number later in a line of
# other text is not a score
_SCORE = re.compile(r"\s*(?:\**score\**\s*[:=]?\s*)?(\d+(?:\.\d+)?)(?![\d.])", re.IGNORECASE)


def random_order(pool: Sequence[Conversation], seed: int) -> list[Conversation]:
    order = list(pool)
    random.Random(f"compare-data:{seed}").shuffle(order)
    return order


def trained_tokens(conversations: Sequence[Conversation], tokenizer, max_length: int) -> list[int]:
    """Labelled tokens of each example as the trainer sees it (mask applied, truncated)."""
    return [render(c, tokenizer, max_length=max_length).num_trained for c in conversations]


def longest_order(pool: Sequence[Conversation], counts: Sequence[int]) -> list[Conversation]:
    """Most trained tokens first; ties keep pool order."""
    ranked = sorted(range(len(pool)), key=lambda i: -counts[i])
    return [pool[i] for i in ranked]


def mean_losses(model, examples: Sequence[Tokenized], batch_size: int = 8) -> list[float]:
    """Mean next-token cross-entropy over each example's labelled tokens.

    Examples go through the model in batches of similar length, RIGHT padded with no
    attention mask: causal attention never looks ahead, so padding after an example cannot
    change its positions (padded labels are ignored). ``model``: a Hugging Face causal LM
    (``get_decoder`` and ``get_output_embeddings``)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    out = [0.0] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        width = max(len(e) for e in chunk)
        ids = torch.tensor([e.input_ids + [0] * (width - len(e)) for e in chunk])
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e)) for e in chunk])
        targets = next_token_targets(labels)
        scored = targets != IGNORE_INDEX
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state
            # the LM head only where a target is (a response is ~10% of a row): the full
            # (batch, width, vocab) logits would cost more than the rest of the model
            logits = model.get_output_embeddings()(hidden[scored]).float()
        losses = torch.zeros(targets.shape, dtype=torch.float32)
        losses[scored] = F.cross_entropy(logits, targets[scored], reduction="none")
        for i, total, count in zip(order[start:start + batch_size], losses.sum(dim=1), scored.sum(dim=1)):
            out[i] = float(total) / int(count)
    return out


def response_renderings(tokenizer, conversation: Conversation, max_length: int | None = None
                        ) -> tuple[Tokenized, Tokenized]:
    """The last response rendered after everything before it, and alone (an empty user turn)."""
    response = conversation.messages[-1]
    if response.role != "assistant":
        raise DataError("the last turn must be the assistant's response (IFD scores that response)",
                        field=f"messages[{len(conversation.messages) - 1}].role", hint="drop or fix this example",
                        file=conversation.id)
    with_instruction = render(conversation, tokenizer, strategy="last_assistant", max_length=max_length)
    alone = render(Conversation([Message("user", ""), response], id=conversation.id), tokenizer,
                   strategy="last_assistant", max_length=max_length)
    return with_instruction, alone


def response_losses(model, tokenizer, conversation: Conversation, max_length: int | None = None) -> tuple[float, float]:
    """(loss of the last response given everything before it, loss of that response alone)."""
    conditioned, unconditioned = mean_losses(model, response_renderings(tokenizer, conversation, max_length))
    return conditioned, unconditioned


def ifd_scores(model, tokenizer, pool: Sequence[Conversation], max_length: int | None = None,
               batch_size: int = 8) -> list[dict]:
    """``[{"id", "conditioned", "unconditioned", "ifd"}]``, one per example, in pool order."""
    pairs = [response_renderings(tokenizer, c, max_length) for c in pool]
    losses = mean_losses(model, [r for pair in pairs for r in pair], batch_size)
    return [{"id": c.id, "conditioned": losses[2 * k], "unconditioned": losses[2 * k + 1],
             "ifd": losses[2 * k] / losses[2 * k + 1]} for k, c in enumerate(pool)]


def ifd_order(pool: Sequence[Conversation], scores: Sequence[dict], ifd_max: float) -> list[Conversation]:
    """Highest IFD first, those at or above ``ifd_max`` left out."""
    ranked = sorted(range(len(pool)), key=lambda i: -scores[i]["ifd"])
    return [pool[i] for i in ranked if scores[i]["ifd"] < ifd_max]


def judge_request(conversation: Conversation) -> list[dict[str, str]]:
    """The rating request of one example: everything before its last response is the
    instruction (turns joined as ``role: text`` when there are several)."""
    *context, response = conversation.messages
    turns = [m for m in context if m.role != "system"]
    instruction = turns[0].content if len(turns) == 1 else "\n".join(f"{m.role}: {m.content}" for m in turns)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, response=response.content)}]


def parse_judge_score(text: str) -> float | None:
    r"""The score on the reply's first non-empty line (0-5), else None.

    >>> parse_judge_score("4.5\nThe response is accurate."), parse_judge_score("Score: 3 out of 5")
    (4.5, 3.0)
    >>> parse_judge_score("excellent") is None, parse_judge_score("7") is None
    (True, True)
    """
    line = next((line for line in text.splitlines() if line.strip()), "")
    match = _SCORE.match(line)
    if match is None:
        return None
    score = float(match.group(1))
    return score if 0 <= score <= 5 else None


def judge_order(pool: Sequence[Conversation], scores: Sequence[float | None], min_score: float) -> list[Conversation]:
    """Highest score first (ties keep pool order); unparsed scores and those below
    ``min_score`` are left out."""
    kept = [i for i, score in enumerate(scores) if score is not None and score >= min_score]
    return [pool[i] for i in sorted(kept, key=lambda i: -scores[i])]


def within_budget(ordered: Sequence[Conversation], counts: Sequence[int], budget: int) -> list[Conversation]:
    """The longest prefix of ``ordered`` whose trained tokens sum to at most ``budget``.

    A prefix, never a skip to a shorter later example: skipping would favour short examples
    and change what the source selects.

    >>> within_budget(["a", "b", "c"], [5, 4, 3], 10)
    ['a', 'b']
    """
    taken, total = [], 0
    for example, count in zip(ordered, counts):
        if total + count > budget:
            break
        taken.append(example)
        total += count
    return taken


def equal_budget(selections: dict[str, list[Conversation]], counts: dict[str, int], budget: int = 0
                 ) -> tuple[int, dict[str, list[Conversation]]]:
    """Cut every selection to the same trained-token budget.

    ``counts``: example id -> trained tokens; ``budget`` 0: the smallest selection's total.
    A selection whose total is below the budget cannot be equalised: ``ConfigError``.

    >>> budget, cut = equal_budget({"a": [Conversation([], id="x"), Conversation([], id="y")],
    ...                            "b": [Conversation([], id="z")]}, {"x": 3, "y": 3, "z": 5})
    >>> budget, [c.id for c in cut["a"]], [c.id for c in cut["b"]]
    (5, ['x'], ['z'])
    """
    totals = {name: sum(counts[c.id] for c in chosen) for name, chosen in selections.items()}
    budget = budget or min(totals.values())
    short = {name: total for name, total in totals.items() if total < budget}
    if short:
        raise ConfigError(f"budget_tokens: {budget} trained tokens cannot be met by "
                          + ", ".join(f"{n} ({t} tokens)" for n, t in short.items())
                          + "; lower budget_tokens (0: the smallest source's tokens) or raise k")
    return budget, {name: within_budget(chosen, [counts[c.id] for c in chosen], budget)
                    for name, chosen in selections.items()}
