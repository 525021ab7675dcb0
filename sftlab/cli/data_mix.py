"""``sftlab data mix`` and ``sftlab data apply-template``: build mixtures, render templates."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from sftlab.config import format_field_docs, load_config
from sftlab.data.mix import MixConfig, build_mixture, mix_summary, write_mixture
from sftlab.data.promptsource import MAX_RENDER_CHARS
from sftlab.errors import DataError

MIX_EXAMPLE = textwrap.dedent("""\
    example:
      sftlab data mix examples/mix_demo.yaml -o data/mix.jsonl
      sftlab data mix examples/mix_demo.yaml -o data/mix-600.jsonl --set total=600 dedup.threshold=0.7

    a mix.yaml with every kind of source (paths relative to where you run):
      sources:
        - {path: alpaca_en_demo.json, weight: 1.0}
        - {path: seed_tasks.jsonl, format: self_instruct, max_examples: 100}
        - {path: superni_tasks/, format: superni, options: {k: 2}}
        - {path: gsm8k/train.jsonl, task: gsm8k, options: {few_shot: 2}, max_examples: 500}
        - {path: ag_news.jsonl, promptsource: promptsource/ag_news/templates.yaml, weight: 0.5}
      cap: 3000            # per-source cap (examples-proportional mixing)
      total: null          # or a target size, split by weight x offered records
      dedup: {exact: true, near: true, threshold: 0.8, ngram: 5}
      decontaminate:
        ngram: 13
        evals:
          - {path: gsm8k/test.jsonl, field: question}
          - {path: humaneval/HumanEval.jsonl.gz, field: prompt}
          - {path: alpaca_eval/gpt4_1106_preview_outputs.json, field: instruction}

    writes OUT.jsonl (canonical rows), OUT.report.json (removals per reason and source,
    with ids) and OUT.config.yaml (the resolved config).""")

TEMPLATE_EXAMPLE = textwrap.dedent("""\
    examples:
      # PromptSource (P3) templates: one record per row x template
      sftlab data apply-template ../shared/data/humaneval/HumanEval.jsonl.gz --promptsource ../shared/data/promptsource/openai_humaneval/templates.yaml -o data/he.jsonl
      # a built-in Flan-style task, 2-shot, held-out templates only (for evaluation)
      sftlab data apply-template ../shared/data/gsm8k/test.jsonl --task gsm8k --few-shot 2 --templates held_out -o data/gsm8k-eval.jsonl""")


def register(subparsers) -> None:
    mix = subparsers.add_parser(
        "mix", help="weighted mixture of sources with dedup and decontamination",
        description="Mix several instruction-data sources into one file: exact and near-duplicate "
                    "removal, n-gram decontamination against evaluation sets, per-source caps and "
                    "weights. Deterministic for a given seed.",
        epilog=MIX_EXAMPLE + "\n\n" + format_field_docs(MixConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mix.add_argument("config", help="mix config YAML (see the example below)")
    mix.add_argument("-o", "--output", required=True, help="output JSONL (canonical conversations)")
    mix.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable), e.g. --set total=5000 --set dedup.threshold=0.7; "
                          "a bare KEY=VALUE after the options does the same")
    mix.set_defaults(handler=run_mix)

    apply = subparsers.add_parser(
        "apply-template", help="render rows through PromptSource or Flan-style task templates",
        description="Turn labelled rows into instruction records with PromptSource templates "
                    "(--promptsource FILE) or a built-in Flan-style task (--task NAME).",
        epilog=TEMPLATE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    apply.add_argument("data", help="rows to render (json, jsonl, .gz)")
    source = apply.add_mutually_exclusive_group(required=True)
    source.add_argument("--promptsource", metavar="TEMPLATES_YAML", help="a PromptSource templates.yaml")
    source.add_argument("--task", help="a built-in task: sentiment, topic, entailment, gsm8k, bbh")
    apply.add_argument("-o", "--output", required=True, help="output JSONL (canonical conversations)")
    apply.add_argument("--templates", default="train",
                       help="task templates: train (default), held_out, all, or ids joined by commas")
    apply.add_argument("--few-shot", type=int, default=0, help="exemplars per prompt (task mode)")
    apply.add_argument("--no-options", action="store_true", help="do not list the label options")
    apply.add_argument("--per-row", choices=["one", "all"], default="one",
                       help="one random template per row (Flan) or every template (P3)")
    apply.add_argument("--seed", type=int, default=0, help="seed of the template and exemplar choice (default 0)")
    apply.add_argument("--max-render-chars", type=int, default=MAX_RENDER_CHARS,
                       help=f"PromptSource: longest text one render may produce (default {MAX_RENDER_CHARS}); "
                            "a longer one is an error naming the template and row")
    apply.set_defaults(handler=run_apply_template)


def run_mix(args: argparse.Namespace) -> int:
    config = load_config(MixConfig, args.config, args.overrides)
    result = build_mixture(config, progress=True)
    paths = write_mixture(result, config, args.output)
    print(mix_summary(result.report))
    print(f"wrote {paths['output']} (report: {paths['report']}, config: {paths['config']})")
    return 0


def run_apply_template(args: argparse.Namespace) -> int:
    from sftlab.data.io import at_row, read_objects, write_conversations

    path = Path(args.data)
    records = read_objects(path)
    rows = [record.value for record in records]
    try:
        conversations = _apply(args, rows)
    except DataError as error:
        raise at_row(error, path, records) from None
    write_conversations(conversations, args.output, "canonical")
    print(f"wrote {len(conversations)} records from {len(rows)} rows to {args.output}")
    return 0


def _apply(args: argparse.Namespace, rows: list[dict]) -> list:
    if args.promptsource:
        from sftlab.data.promptsource import apply_promptsource, load_templates

        skipped: list = []
        conversations = apply_promptsource(rows, load_templates(args.promptsource), seed=args.seed,
                                           skipped=skipped, max_chars=args.max_render_chars)
        if skipped:
            print(f"left out {len(skipped)} row x template pairs that rendered empty")
        return conversations
    from sftlab.data.templates import integrate

    which = args.templates if args.templates in ("train", "held_out", "all") else args.templates.split(",")
    return integrate(rows, args.task, templates=which, few_shot=args.few_shot,
                     options_in_prompt=not args.no_options, per_row=args.per_row, seed=args.seed)
