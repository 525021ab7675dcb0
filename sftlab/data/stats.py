"""Statistics of an instruction-data file: what ``sftlab data stats`` prints.

    result = read_conversations("alpaca_en_demo.json")
    stats = data_stats(result)                       # counts, turns, roles, characters
    stats = data_stats(result, token_lengths(result.conversations, tok))  # + tokens
    print(format_table(stats))

``data_stats`` returns plain JSON-able dicts so ``--json`` prints them as they are.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from sftlab.data.chat import apply_template
from sftlab.data.io import ReadResult
from sftlab.types import ROLES, Conversation


def data_stats(result: ReadResult, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """Counts, turn histogram, role counts, empty fields, characters (and tokens) per file.

    Shape: ``{"format", "records", "conversations", "skipped": {reason: n}, "dropped",
    "assistant_turns": {turns: n}, "roles": {role: n}, "empty_messages": {role: n},
    "chars_per_message": summary, "tokens_per_conversation"?: summary}`` where a summary
    is ``{"count", "mean", "p50", "p90", "p99", "max"}``; ``lengths`` are tokens per
    conversation (``token_lengths``).
    """
    conversations = result.conversations
    messages = [message for conversation in conversations for message in conversation.messages]
    # tool turns are counted only in data that has them (the other roles always)
    roles = [role for role in ROLES if role != "tool" or any(m.role == "tool" for m in messages)]
    stats: dict[str, Any] = {
        "format": result.format,
        "records": result.records,
        "conversations": len(conversations),
        "skipped": dict(result.skipped),
        "dropped": dict(result.dropped),
        "assistant_turns": _sorted_counts(Counter(conversation.turns for conversation in conversations)),
        "roles": {role: sum(m.role == role for m in messages) for role in roles},
        "empty_messages": {role: sum(m.role == role and not m.content.strip() and not m.tool_calls for m in messages)
                           for role in roles},
        "chars_per_message": summarize([len(m.content) for m in messages]),
    }
    if lengths is not None:
        stats["tokens_per_conversation"] = summarize(lengths)
    return stats


def token_lengths(conversations: Sequence[Conversation], tokenizer) -> list[int]:
    """Tokens per conversation: the chat-template rendering when the tokenizer has a
    template (what training sees), else the contents joined by newlines."""
    if getattr(tokenizer, "chat_template", None):
        texts = [apply_template(tokenizer, c.messages, tools=c.tools, add_generation_prompt=False)
                 for c in conversations]
        special = False  # the template already wrote the special tokens
    else:
        texts = ["\n".join(m.content for m in c.messages) for c in conversations]
        special = True
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"count", "mean", "p50", "p90", "p99", "max"}`` (nearest-rank percentiles).

    >>> summarize([1, 2, 3, 4])
    {'count': 4, 'mean': 2.5, 'p50': 2, 'p90': 4, 'p99': 4, 'max': 4}
    """
    if not values:
        return {"count": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)
    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 2),
            "p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99), "max": ordered[-1]}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values: the smallest value with q% at or below it."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _sorted_counts(counts: Counter) -> dict[str, int]:
    return {str(key): counts[key] for key in sorted(counts)}


def format_table(stats: dict[str, Any]) -> str:
    """The human-readable report: one ``name  value`` line per figure."""
    lines = [
        f"format                {stats['format']}",
        f"records               {stats['records']}",
        f"conversations         {stats['conversations']}",
        f"skipped               {_pairs(stats['skipped']) or 0}",
    ]
    if stats["dropped"]:
        lines.append(f"dropped (by option)   {_pairs(stats['dropped'])}")
    lines += [
        f"assistant turns       {_pairs(stats['assistant_turns'])}  (turns: conversations)",
        f"messages by role      {_pairs(stats['roles'])}",
        f"empty messages        {_pairs(stats['empty_messages'])}",
        f"chars per message     {_summary(stats['chars_per_message'])}",
    ]
    if "tokens_per_conversation" in stats:
        lines.append(f"tokens / conversation {_summary(stats['tokens_per_conversation'])}")
    return "\n".join(lines)


def _pairs(counts: dict) -> str:
    return ", ".join(f"{key}: {value}" for key, value in counts.items())


def _summary(summary: dict) -> str:
    return "  ".join(f"{key} {value}" for key, value in summary.items() if key != "count")


def plot_token_histogram(lengths: Sequence[int], path: str | Path, title: str = "") -> Path:
    """A PNG histogram of tokens per conversation with p50/p90/p99 marked."""
    import matplotlib  # only at plot time: matplotlib is slow to import and unneeded otherwise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(lengths)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(ordered, bins=min(50, max(1, len(set(ordered)))), color="#4c72b0")
    for q, style in ((50, "-"), (90, "--"), (99, ":")):
        axes.axvline(percentile(ordered, q), color="black", linestyle=style, label=f"p{q}")
    axes.set_xlabel("tokens per conversation")
    axes.set_ylabel("conversations")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
