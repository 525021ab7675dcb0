"""Log-likelihood of continuations: the scorer behind multiple-choice tasks.

``loglikelihoods(model, tokenizer, [(context, continuation), ...])`` returns, for each pair,
the summed log-probability of the continuation's tokens given the context and whether
greedy decoding would have produced exactly those tokens.

Tokenisation follows lm-evaluation-harness so both tools score the same tokens: trailing
spaces of the context move to the continuation, the pair is encoded whole, and the
continuation is the part of the whole encoding after the context's own encoding.

Work saved, in order of how much it saves:
1. a context runs once for all its choices: single-token continuations (" A", " B", ...)
   share ONE plain row (``context``), and multi-token choices are packed into one row
   ``context + choice_1 + choice_2 + ...`` with a 4-D attention mask so each choice sees
   the context and itself only (lm-eval runs ``context + choice`` once per choice);
2. rows are sorted by length and batched, so padding is small;
3. rows are RIGHT padded with no attention mask (causal attention never looks ahead, so
   trailing padding cannot change a real position): the plain causal kernel runs;
4. the LM head and log-softmax run only on the continuation columns (``logits_to_keep``
   with the columns' indices), never on the whole context: the full
   ``(batch, length, vocab)`` logits are never materialised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm import tqdm

from sftlab.models import context_length, pad_id


@dataclass
class Scored:
    """Result of one (context, continuation) pair."""

    logprob: float        # sum over the continuation tokens
    is_greedy: bool       # every continuation token is the argmax at its position
    num_tokens: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """-> (context ids, continuation ids), the way lm-eval encodes a pair.

    >>> context, continuation = encode_pair(tok, "Answer: ", "yes")
    >>> tok.decode(context), tok.decode(continuation)   # the space moves to the continuation
    ('Answer:', ' yes')
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    continuation_ids = list(whole[len(context_ids):])
    if not context_ids:
        # nothing to condition on: start from the end-of-text token, as lm-eval does
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        context_ids = [prefix]
    return list(context_ids), continuation_ids


@dataclass
class _Row:
    """One model input: token ids, their position ids and, for a packed row, which choice
    each token belongs to (-1 = the shared context). ``needed``: the columns whose
    log-probabilities some request reads."""

    tokens: list[int]
    owners: list[int] | None = None      # None: a plain causal row
    positions: list[int] | None = None
    needed: set[int] | None = None
    needed_by: list[list[int]] | None = None   # packed rows: the columns read per choice


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                   max_length: int | None = None, shared_prefix: bool = True,
                   progress: bool = False) -> list[Scored]:
    """Score every (context, continuation) pair; results in input order.

    ``shared_prefix``: pairs with the same context and multi-token continuations share ONE
    packed row ``context + choice_1 + choice_2 + ...`` in which each choice attends to the
    context and to itself only (a 4-D attention mask; position ids restart after the
    context), so the context runs once instead of once per choice.
    """
    max_length = max_length or _max_length(model, tokenizer)
    encoded = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    for (context, continuation), (_, continuation_ids) in zip(pairs, encoded):
        if not continuation_ids:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    rows, reads = _plan_rows(encoded, max_length, shared_prefix)
    log_probs: dict[int, dict[int, torch.Tensor]] = {}
    order = sorted(range(len(rows)), key=lambda r: (rows[r].owners is None, -len(rows[r].tokens)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        batches = tqdm(batches, desc="loglikelihood", unit="batch")
    for batch in batches:
        # a batch is all plain or all packed rows (packed rows sort first)
        for plain in (False, True):
            part = [r for r in batch if (rows[r].owners is None) == plain]
            if part:
                for r, table in zip(part, _forward(model, [rows[r] for r in part], pad_id(tokenizer))):
                    log_probs[r] = table
    return [_score(log_probs[row], columns, encoded[i][1]) for i, (row, columns) in enumerate(reads)]


def _plan_rows(encoded, max_length: int, shared_prefix: bool):
    """-> (rows, per request (row index, columns predicting its continuation tokens))."""
    rows: list[_Row] = []
    reads: list[tuple[int, list[int]] | None] = [None] * len(encoded)
    plain_index: dict[tuple, int] = {}
    by_context: dict[tuple, list[int]] = {}
    for i, (context_ids, _) in enumerate(encoded):
        by_context.setdefault(tuple(context_ids), []).append(i)
    for context, members in by_context.items():
        continuations = [encoded[i][1] for i in members]
        packed_length = len(context) + sum(len(c) - 1 for c in continuations)
        if shared_prefix and len(members) > 1 and max(map(len, continuations)) > 1 \
                and packed_length <= max_length:
            rows.append(_pack(list(context), continuations))
            for k, i in enumerate(members):
                reads[i] = (len(rows) - 1, rows[-1].needed_by[k])
            continue
        for i in members:  # plain rows, deduplicated: " A", " B", ... share one
            continuation = encoded[i][1]
            tokens = tuple((list(context) + continuation)[:-1][-max_length:])
            if tokens not in plain_index:
                plain_index[tokens] = len(rows)
                rows.append(_Row(list(tokens), needed=set()))
            row = plain_index[tokens]
            columns = list(range(len(tokens) - len(continuation), len(tokens)))
            rows[row].needed.update(columns)
            reads[i] = (row, columns)
    return rows, reads


def _pack(context: list[int], continuations: list[list[int]]) -> _Row:
    """``context + c1[:-1] + c2[:-1] + ...``; choice k's tokens are read at the last context
    column, then at its own columns."""
    tokens, owners = list(context), [-1] * len(context)
    positions = list(range(len(context)))
    row = _Row(tokens, owners, positions, needed=set(), needed_by=[])
    for k, continuation in enumerate(continuations):
        columns = [len(context) - 1]
        for j, token in enumerate(continuation[:-1]):
            columns.append(len(tokens))
            tokens.append(token)
            owners.append(k)
            positions.append(len(context) + j)
        row.needed_by.append(columns)
        row.needed.update(columns)
    return row


def _forward(model, rows: list[_Row], pad_id: int) -> list[dict[int, torch.Tensor]]:
    """One forward pass over a right-padded batch -> per row {column: log-softmax (vocab,)}.

    Plain rows: no attention mask (padding sits after every real token, so causal attention
    never reaches it) and the fast causal kernel runs. Packed rows: a boolean 4-D mask lets
    a token see the context and earlier tokens of its own choice. Only the needed columns
    (their union over the batch) go through the LM head.
    """
    width = max(len(row.tokens) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
    columns = sorted(set().union(*(row.needed for row in rows)))
    where = {c: k for k, c in enumerate(columns)}
    device = next(model.parameters()).device
    extra = {}
    if rows[0].owners is not None:
        extra = _packed_inputs(rows, width)
        extra = {k: v.to(device) for k, v in extra.items()}
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(device), use_cache=False,
                       logits_to_keep=torch.tensor(columns, device=device), **extra).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    return [{c: log_probs[i, where[c]] for c in row.needed} for i, row in enumerate(rows)]


def _packed_inputs(rows: list[_Row], width: int) -> dict[str, torch.Tensor]:
    """(batch, 1, width, width) bool mask and (batch, width) position ids of packed rows."""
    owners = torch.full((len(rows), width), -2, dtype=torch.long)  # -2: padding
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        owners[i, :len(row.tokens)] = torch.tensor(row.owners)
        positions[i, :len(row.tokens)] = torch.tensor(row.positions)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = owners[:, :, None], owners[:, None, :]
    allowed = causal & ((key == -1) | (key == query))
    return {"attention_mask": allowed[:, None], "position_ids": positions}


def _score(table: dict, columns: list[int], continuation_ids: list[int]) -> Scored:
    """``table[columns[j]]`` is the distribution that predicts ``continuation_ids[j]``."""
    n = len(continuation_ids)
    window = torch.stack([table[c] for c in columns])
    targets = torch.tensor(continuation_ids, dtype=torch.long)
    token_log_probs = window.gather(-1, targets[:, None]).squeeze(-1)
    greedy = bool((window.argmax(-1) == targets).all())
    return Scored(float(token_log_probs.sum()), greedy, n)


def _max_length(model, tokenizer) -> int:
    config_length = context_length(model)
    return int(config_length or getattr(tokenizer, "model_max_length", 2048) or 2048)
