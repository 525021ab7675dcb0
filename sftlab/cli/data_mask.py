"""``sftlab data show-mask``: print examples with the tokens that carry loss marked.

    sftlab data show-mask data/alpaca_en_demo.json --tokenizer tiny -n 2
    sftlab data show-mask chats.jsonl --tokenizer default --strategy last_assistant --max-length 512

Trained tokens are shown in green on a terminal and as ``[[...]]`` otherwise (``--color``
forces either). The footer counts trained / total tokens and the examples that would be
dropped (no trained token, or all labels truncated away) by reason.
"""
from __future__ import annotations

import argparse
import sys

from sftlab.cli.data_io import INPUT_HELP, add_source_arguments, input_formats, source_options

EPILOG = """\
example:
  sftlab data show-mask ../shared/data/formats/alpaca_en_demo.json --tokenizer tiny -n 2

Trained tokens are the assistant answers and their end-of-turn token (e.g. <|im_end|>);
system, user and tool turns and the template's glue are never trained (see sftlab.data.chat).
Assistant turns that call tools are trained (--no-train-tool-calls: context only).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "show-mask",
        help="show which tokens of rendered examples are trained",
        description="Render conversations with the tokenizer's chat template and show which "
                    "tokens carry loss, plus trained/total token counts and dropped examples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help=INPUT_HELP)
    add_source_arguments(parser)
    parser.add_argument("--tokenizer", default="tiny", help="tiny, default, a path or hub id (default: tiny)")
    parser.add_argument("-n", type=int, default=3, help="examples to print (default: 3)")
    parser.add_argument("--strategy", default="all_assistant",
                        choices=["all_assistant", "last_assistant", "everything"],
                        help="which tokens to train (default: all_assistant)")
    parser.add_argument("--train-tool-calls", action=argparse.BooleanOptionalAction, default=True,
                        help="train assistant turns that call tools (default: yes; --no-train-tool-calls "
                             "keeps them as context)")
    parser.add_argument("--reasoning", default="keep", choices=["keep", "last_turn", "drop"],
                        help="reasoning traces: train every turn's, only the final turn's, or drop them "
                             "(default: keep)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate examples to this many tokens")
    parser.add_argument("--format", default=None, choices=input_formats(), help="input format (default: detected)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="bad records: stop at the first (default) or skip and count them")
    parser.add_argument("--chat-template", default="chatml",
                        help="named template used when the tokenizer has none (default: chatml)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="mark trained tokens with color (default: when printing to a terminal)")
    parser.set_defaults(handler=show_mask)


def show_mask(args) -> int:
    from sftlab.data.chat import ensure_chat_template, format_mask, mask_summary, tokenize_conversations
    from sftlab.data.io import read_conversations
    from sftlab.models import load_tokenizer

    read = read_conversations(args.path, format=args.format, on_error=args.on_error, **source_options(args))
    conversations = read.conversations
    tokenizer = load_tokenizer(args.tokenizer)
    ensure_chat_template(tokenizer, fallback=args.chat_template)
    result = tokenize_conversations(conversations, tokenizer, max_length=args.max_length, strategy=args.strategy,
                                    train_tool_calls=args.train_tool_calls, reasoning=args.reasoning)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    for example in result.examples[: args.n]:
        print(f"=== {example.id}: {mask_summary(example)}")
        print(format_mask(example, tokenizer, color=color))
    if not color:
        print("(trained tokens are shown as [[...]])")
    if read.skipped:
        print("skipped unreadable records: " + ", ".join(f"{r}: {n}" for r, n in read.skipped.most_common()))
    print(result.summary())
    for name, reason in result.dropped_ids[:10]:
        print(f"  dropped {name}: {reason}")
    if len(result.dropped_ids) > 10:
        print(f"  ... and {len(result.dropped_ids) - 10} more")
    return 0

