"""``sftlab data convert`` and ``sftlab data stats``: thin adapters over ``sftlab.data.io``
and ``sftlab.data.stats``."""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

from sftlab.errors import DataError

OUTPUT_FORMATS = ["jsonl", "alpaca", "sharegpt", "openai"]

CONVERT_HELP = """\
Read an instruction-data file (alpaca, dolly, openai, sharegpt, prompt_completion, xp3,
oasst, canonical, ...; detected from the first rows unless --format is given), validate
every record and write it in another format.

INPUT is a .json/.jsonl(.gz), .csv/.tsv or .parquet file, a `datasets` directory, a hub id
written hf://owner/name, or with --dataset-info the name of an entry in LLaMA-Factory's
dataset_info.json. --columns renames a file's columns to the reader's fields
(instruction=question,output=answer reads question/answer rows as alpaca).

example:
  sftlab data convert ../shared/data/formats/alpaca_en_demo.json -o data/alpaca.jsonl
  sftlab data convert alpaca_en_demo --dataset-info ../shared/data/formats/lf_dataset_info_sample.json -o data/alpaca-lf.jsonl
  sftlab data convert ../shared/data/formats/oasst_en_100_tree.jsonl --format oasst --oasst-best-path --to sharegpt -o data/oasst.json --on-error skip
"""

STATS_HELP = """\
Count records, conversations, turns, roles, empty messages and characters per message;
with --tokenizer also tokens per conversation (mean, p50, p90, p99, max) and a histogram PNG.

example:
  sftlab data stats ../shared/data/formats/alpaca_en_demo.json --tokenizer tiny --plot data/lengths.png
  sftlab data stats data/alpaca.jsonl --json
"""


INPUT_HELP = ("a .json/.jsonl(.gz), .csv, .tsv or .parquet file, a datasets directory, hf://owner/name, "
              "or with --dataset-info a dataset name")


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert instruction data between formats",
                                    description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("input", help=INPUT_HELP)
    _add_read_arguments(convert)
    convert.add_argument("--to", choices=OUTPUT_FORMATS, default="jsonl",
                         help="output format; jsonl is sftlab's canonical JSONL (default)")
    convert.add_argument("-o", "--output", required=True,
                         help="output file; .json writes one JSON array, anything else JSON lines; "
                              "- writes JSON lines to standard output (the report goes to stderr)")
    convert.set_defaults(handler=run_convert)

    stats = subparsers.add_parser("stats", help="statistics of an instruction-data file",
                                  description=STATS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    stats.add_argument("input", help=INPUT_HELP)
    _add_read_arguments(stats)
    stats.add_argument("--tokenizer", help="tokenizer for token lengths: tiny, default, a path or hub id")
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats.add_argument("--plot", help="token-length histogram PNG (default: <data>.tokens.png beside the data, "
                                      "or in the current folder when the data's folder cannot be written)")
    stats.set_defaults(handler=run_stats)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the data lives: the options of ``sftlab.data.sources.resolve_source``."""
    parser.add_argument("--dataset-info", help="LLaMA-Factory dataset_info.json (or its folder); INPUT "
                        "is then a dataset name in it")
    parser.add_argument("--columns", type=parse_columns, default=None, metavar="FIELD=COLUMN,...",
                        help="rename the file's columns to the reader's fields, e.g. instruction=q,output=a")
    parser.add_argument("--split", help="split of a hub dataset or datasets directory (default: train)")
    parser.add_argument("--subset", help="subset (configuration name) of a hub dataset")
    parser.add_argument("--revision", help="git revision (branch, tag, commit) of a hub dataset")


def source_options(args) -> dict:
    """``read_conversations`` keywords from the options of ``add_source_arguments``."""
    return {"dataset_info": args.dataset_info, "columns": args.columns, "split": args.split,
            "subset": args.subset, "revision": args.revision}


def parse_columns(text: str) -> dict[str, str]:
    """``instruction=q,output=a`` -> ``{"instruction": "q", "output": "a"}``."""
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if not pairs or any(not field.strip() or not sep or not column.strip() for field, sep, column in pairs):
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN pairs separated by commas, got {text!r}")
    return {field.strip(): column.strip() for field, _, column in pairs}


def input_formats() -> list[str]:
    """The formats ``--format`` takes: every registered reader (``sftlab.data.formats``)."""
    from sftlab.data.formats import FORMATS  # plain Python: --help stays fast

    return FORMATS.names()


def _add_read_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--format", choices=input_formats(),
                        help="input format (default: detected from the first rows)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="fail: stop at the first bad record (default); skip: drop and count bad records")
    parser.add_argument("--oasst-best-path", action="store_true",
                        help="Open Assistant: one thread per tree, following the best-ranked replies")
    parser.add_argument("--oasst-keep-deleted", action="store_true", help="Open Assistant: keep deleted messages")
    parser.add_argument("--oasst-keep-unreviewed", action="store_true",
                        help="Open Assistant: keep messages that failed or lack review")


def _read(args):
    from sftlab.data.io import read_conversations

    return read_conversations(args.input, format=args.format, on_error=args.on_error,
                              oasst_best_path=args.oasst_best_path,
                              oasst_keep_deleted=args.oasst_keep_deleted,
                              oasst_keep_unreviewed=args.oasst_keep_unreviewed, **source_options(args))


def run_convert(args) -> int:
    from sftlab.data.io import write_conversations

    result = _read(args)
    written = write_conversations(result.conversations, args.output, args.to)
    to_stdout = args.output == "-"
    report = sys.stderr if to_stdout else sys.stdout  # stdout holds the data then
    print(f"read {result.records} records ({result.format}) -> wrote {written} conversations "
          f"({args.to}) to {'standard output' if to_stdout else args.output}", file=report)
    if result.dropped:
        print(f"dropped by option: {_counts(result.dropped)}", file=report)
    if args.on_error == "skip":
        skipped_path = Path("convert.skipped.json" if to_stdout else f"{args.output}.skipped.json")
        skipped_path.write_text(json.dumps(_skipped_report(args, result), indent=2, ensure_ascii=False) + "\n")
        print(f"skipped {sum(result.skipped.values())} records: {_counts(result.skipped) or 'none'} "
              f"(details in {skipped_path})", file=report)
    return 0


def _skipped_report(args, result) -> dict:
    """What was dropped, and the settings that decided it (so the run can be repeated)."""
    settings = {key: getattr(args, key) for key in ("input", "format", "to", "on_error", "oasst_best_path",
                                                    "oasst_keep_deleted", "oasst_keep_unreviewed",
                                                    "dataset_info", "columns", "split", "subset", "revision")}
    return {"settings": settings, "input_format": result.format, "records": result.records,
            "skipped": dict(result.skipped), "dropped": dict(result.dropped),
            "first_errors": [str(error) for error in result.errors]}


def _counts(counts) -> str:
    return ", ".join(f"{reason}: {number}" for reason, number in sorted(counts.items()))


def run_stats(args) -> int:
    from sftlab.data.stats import data_stats, format_table, plot_token_histogram, token_lengths

    result = _read(args)
    lengths = None
    if args.tokenizer:
        from sftlab.models import load_tokenizer

        lengths = token_lengths(result.conversations, load_tokenizer(args.tokenizer))
    stats = data_stats(result, lengths)
    if lengths is not None:
        stats["plot"] = str(plot_token_histogram(lengths, _plot_path(args), title=Path(args.input).name))
    print(json.dumps(stats, ensure_ascii=False) if args.json else format_table(stats))
    if lengths is not None and not args.json:
        print(f"histogram             {stats['plot']}")
    return 0


def _plot_path(args) -> Path:
    """--plot, else ``<data>.tokens.png`` beside the data, else in the current folder
    when the data's folder is read-only (a shared data set)."""
    if args.plot:
        if Path(args.plot).is_dir():
            raise DataError("--plot is a directory", file=args.plot, hint="give a .png file name")
        return Path(args.plot)
    beside = Path(f"{args.input}.tokens.png")
    # permission bits, not os.access: the latter says yes to root even on a read-only share
    writable = os.access(beside.parent, os.W_OK) and beside.parent.stat().st_mode & stat.S_IWUSR
    return beside if writable else Path(beside.name)
