"""``sftlab eval``, ``sftlab judge {winrate,alpaca-eval,mt-bench}`` and ``sftlab report``.

Thin adapters: arguments (built by ``sftlab.cli.options`` from ``EvalConfig`` and the
configs of ``sftlab.eval.judge.config``) -> the runner / the judge functions -> files in the
output directory and a table on stdout. Imported only when one of these commands runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from sftlab.cli.options import Flag, add_config_arguments, config_from_args, wrap_paragraphs
from sftlab.errors import ConfigError, DataError
from sftlab.eval.base import TASKS, LoglikelihoodTask
from sftlab.eval.judge import mt_bench
from sftlab.eval.judge.client import make_judge
from sftlab.eval.judge.config import AlpacaEvalConfig, MTBenchConfig, WinrateConfig
from sftlab.eval.judge.lc import estimate_difficulty, load_lc_table, summarize_annotations, table_difficulty
from sftlab.eval.judge.pairwise import generate_outputs, judge_pairs, read_annotations, read_outputs
from sftlab.eval.results import format_table
from sftlab.eval.runner import EvalConfig, import_task_modules, evaluate
from sftlab.infer.backends import generator_for, resolve_backend
from sftlab.models import library_versions
from sftlab.report.charts import radar_chart
from sftlab.report.html import write_report

EVAL_EXAMPLES = """examples:
  sftlab eval tiny --tasks gsm8k --limit 3 --data-dir ../shared/data -o out/tiny
  sftlab eval tiny --tasks ifeval --limit 3 --max-new-tokens 32 --data-dir ../shared/data -o out/tiny-ifeval
  sftlab eval --tasks ifeval --limit 3 --responses out/tiny-ifeval/samples.jsonl --data-dir ../shared/data
  sftlab eval --config examples/eval_tiny.yaml limit=1 seed=7
  sftlab eval default --tasks gsm8k,bbh --num-fewshot 3 --chat-template on --data-dir ../shared/data -o out/base
  sftlab eval runs/lora1 --tasks gsm8k=../shared/data/gsm8k/test.jsonl --limit 100 -o out/lora1
  sftlab eval served --tasks gsm8k --base-url http://127.0.0.1:8000/v1 --api-model default --data-dir ../shared/data
  sftlab eval tiny --tasks humaneval --limit 2 --num-samples 3 --temperature 0.8 --max-new-tokens 16 --data-dir ../shared/data

tasks: {tasks}. Data: --data-dir DIR holds gsm8k/test.jsonl, bbh/, math/test.jsonl, ...;
TASK=PATH gives one task its own file. A model is not needed to score saved answers
(--responses: rows with id or prompt, and response or output, such as an earlier run's
samples.jsonl or `sftlab generate` output). Writes results.json (every score with a bootstrap
95% interval and n), samples.jsonl (rendered prompt, raw output, extracted answer, score)
and settings.json (the resolved config, few-shot, chat template, generation settings, seed,
versions)."""

EVAL_FLAGS = {
    "model": Flag("model", nargs="?", metavar="MODEL"),
    "tasks": Flag("--tasks", required=True),
    "output_dir": ("-o", "--output"),
    "limit": "--limit",
    "num_fewshot": "--num-fewshot",
    "chat_template": "--chat-template",
    "batch_size": "--batch-size",
    "adapter": "--adapter",
    "responses": Flag("--responses", metavar="FILE"),
    "data_dir": "--data-dir",
    "base_url": "--base-url",
    "api_model": "--api-model",
    "max_new_tokens": "--max-new-tokens",
    "num_samples": "--num-samples",
    "temperature": "--temperature",
    "seed": "--seed",
    "device": "--device",
    "dtype": "--dtype",
    "backend": "--backend",
}

# the judge, the items and the output directory: the same flags for alpaca-eval and mt-bench
JUDGE_FLAGS = {
    "judge.model": Flag("--judge", required=True, metavar="MODEL"),
    "judge.base_url": "--judge-base-url",
    "judge.api_key_env": "--api-key-env",
    "judge.cache_dir": "--cache-dir",
    "judge.max_tokens": "--judge-max-tokens",
    "judge.probe": "--judge-probe",
    "limit": "--limit",
    "batch_size": "--batch-size",
    "adapter": "--adapter",
    "backend": "--backend",
    "max_new_tokens": "--max-new-tokens",
    "seed": "--seed",
    "output_dir": Flag("-o", "--output", required=True),
}


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_judge(subparsers)
    _register_report(subparsers)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on close-ended tasks (GSM8K, MATH, BBH, MC, ...)",
                              description="Evaluate a model (base, tuned, adapter, or a served endpoint) "
                                          "on close-ended tasks, or score precomputed responses.")
    add_config_arguments(p, EvalConfig, flags=EVAL_FLAGS,
                         epilog=wrap_paragraphs(EVAL_EXAMPLES.format(tasks=_task_list())))
    p.set_defaults(handler=run_eval)


def _task_list() -> str:
    """Every registered task, as the help lists them: ``gsm8k, ..., bbh (27 subtasks), mc
    (log-likelihood), ...``."""
    import_task_modules()
    names = []
    for name in TASKS:
        entry = TASKS.get(name)
        task = entry() if isinstance(entry, type) else entry
        subtasks = len(getattr(task, "subtasks", None) or ())
        names.append(name + (f" ({subtasks} subtasks)" if subtasks else "")
                     + (" (log-likelihood)" if isinstance(task, LoglikelihoodTask) else ""))
    return ", ".join(names)


def run_eval(args) -> int:
    config = config_from_args(EvalConfig, args)
    results = evaluate(config)
    print(format_table(results))
    if config.output_dir:
        print(f"wrote {config.output_dir}/results.json, samples.jsonl, settings.json")
    return 0


# ---------------------------------------------------------------- judge

def _register_judge(subparsers) -> None:
    p = subparsers.add_parser("judge", help="LLM-as-a-judge: win rates (AlpacaEval, LC) and MT-Bench",
                              description="LLM-as-a-judge: win rates and length-controlled win rates of "
                                          "annotations, pairwise AlpacaEval judging, MT-Bench grading.")
    group = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=lambda args: p.print_help())

    w = group.add_parser("winrate", help="win rate and length-controlled win rate of annotations",
                         description="Win rate (ties = 1/2) and length-controlled win rate (Dubois et al. "
                                     "2024) with standard errors, from AlpacaEval annotations: output_1 = "
                                     "baseline, output_2 = model, preference 1 (baseline), 2 (model), "
                                     "1.5 (tie) or fractional.")
    add_config_arguments(w, WinrateConfig, flags={
        "annotations": Flag("annotations", nargs="*", metavar="ANNOTATIONS", required=True),
        "json": "--json", "seed": "--seed"},
        epilog="example:\n  sftlab judge winrate out/alpaca/annotations.json --json\n"
               "AlpacaEval's instructions use the shipped instruction difficulty (length_controlled_v1); "
               "several files on other instructions estimate it from the files. The output names "
               "the LC variant.")
    w.set_defaults(handler=run_winrate)

    a = group.add_parser("alpaca-eval", help="pairwise judging against AlpacaEval baseline outputs",
                         description="Generate (or read) a model's outputs for the AlpacaEval instructions, "
                                     "judge each against the baseline in both orders, and report the win "
                                     "rate and the length-controlled win rate.")
    add_config_arguments(a, AlpacaEvalConfig, flags={
        "model": Flag("model", nargs="?", metavar="MODEL"), "outputs": "--outputs",
        "baseline": Flag("--baseline", required=True), **JUDGE_FLAGS, "one_order": "--one-order"},
        epilog="example:\n  sftlab judge alpaca-eval tiny --baseline ../shared/data/alpaca_eval/"
               "gpt4_1106_preview_outputs.json --judge gpt-4o-mini \\\n"
               "      --judge-base-url https://api.openai.com/v1 --limit 20 -o out/alpaca")
    a.set_defaults(handler=run_alpaca_eval)

    m = group.add_parser("mt-bench", help="MT-Bench single-answer grading (1-10 per turn)",
                         description="Answer the 80 two-turn MT-Bench questions (or read answers) and grade "
                                     "each turn 1-10 with FastChat's judge prompts (reference-guided for "
                                     "math, reasoning and coding).")
    add_config_arguments(m, MTBenchConfig, flags={
        "model": Flag("model", nargs="?", metavar="MODEL"), "answers": "--answers",
        "data_dir": Flag("--data-dir", required=True), **JUDGE_FLAGS},
        epilog="example (a smoke run: the tiny judge writes no ratings, --judge-probe 0 lets it finish):\n"
               "  sftlab judge mt-bench tiny --data-dir ../shared/data/mt_bench --judge tiny --limit 2 "
               "--max-new-tokens 32 --judge-max-tokens 32 --judge-probe 0 --cache-dir '' -o out/mt")
    m.set_defaults(handler=run_mt_bench)


def run_winrate(args) -> int:
    config = config_from_args(WinrateConfig, args)
    sets = [_read_annotations(path) for path in config.annotations]
    table = load_lc_table()
    in_table = all(table_difficulty([row.get("instruction") for row in rows], table) is not None for rows in sets)
    if len(sets) > 1 and not in_table:  # not AlpacaEval's instructions: difficulty from the files
        difficulty = estimate_difficulty(sets)
        for annotations in sets:
            for row in annotations:
                row.setdefault("instruction_difficulty", difficulty.get(row.get("instruction")))
    summaries = {path: summarize_annotations(rows, seed=config.seed) for path, rows in zip(config.annotations, sets)}
    if config.json:
        print(json.dumps(summaries if len(sets) > 1 else summaries[config.annotations[0]], indent=2))
        return 0
    print(f"{'annotations':<40} {'model':<20} {'win rate':>14} {'LC win rate':>14} {'n':>5} {'avg len':>8}")
    for path, s in summaries.items():
        model = s["model"] or Path(path).stem  # rows without generator_2: the file names the model
        print(f"{Path(path).name:<40} {model[:20]:<20} "
              f"{s['win_rate']:>6.2f} ± {s['standard_error']:<5.2f} "
              f"{s['length_controlled_winrate']:>6.2f} ± {s['lc_standard_error']:<5.2f} "
              f"{s['n_total']:>5} {s['avg_length']:>8.0f}")
    for variant in sorted({s["lc_variant"] for s in summaries.values()}):
        print(f"LC variant: {variant}")
    return 0


def _read_annotations(path: str) -> list[dict]:
    """The rows of an annotations file; rows without a verdict (null preference) are counted
    and said, since the win rate leaves them out."""
    rows = read_annotations(path)
    unjudged = sum(row.get("preference") is None for row in rows)
    if unjudged == len(rows):
        raise DataError("no row has a preference (all null: the judge gave no verdict)", file=path,
                        field="preference", hint="rerun the judge, or give preferences 1 to 2")
    if unjudged:
        print(f"note: {path}: {unjudged} of {len(rows)} rows have no preference (null) and are left "
              f"out of the win rate", file=sys.stderr)
    return rows


def _judge(config: AlpacaEvalConfig | MTBenchConfig):
    judge = config.judge
    return make_judge(judge.model, base_url=judge.base_url, cache_dir=judge.cache_dir or None,
                      api_key_env=judge.api_key_env, batch_size=config.batch_size)


def _generator(config: AlpacaEvalConfig | MTBenchConfig):
    if not config.model:
        raise ConfigError("give a MODEL to generate with, or precomputed outputs")
    config.backend = resolve_backend(config.backend, config.model, adapter=config.adapter)
    return generator_for(config.model, backend=config.backend, adapter=config.adapter, batch_size=config.batch_size)


def run_alpaca_eval(args) -> int:
    config = config_from_args(AlpacaEvalConfig, args)
    baseline = read_outputs(config.baseline)[: config.limit]
    if config.outputs:
        outputs = read_outputs(config.outputs)
    else:
        outputs = generate_outputs(_generator(config), [row["instruction"] for row in baseline],
                                   max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                   name=Path(config.model).name)
    judge = _judge(config)
    annotations = judge_pairs(baseline, outputs, judge, both_orders=not config.one_order,
                              max_tokens=config.judge.max_tokens or 512, probe=config.judge.probe)
    summary = summarize_annotations(annotations, seed=config.seed)
    summary.update(judge=judge.model, cache_hits=judge.hits, cache_misses=judge.misses,
                   both_orders=not config.one_order)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_outputs.json").write_text(json.dumps(outputs, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "annotations.json").write_text(json.dumps(annotations, indent=1, ensure_ascii=False), encoding="utf-8")
    _write_judge_results(out, config, "alpaca_eval", summary, annotations, config.model or config.outputs)
    print(f"win rate {summary['win_rate']:.2f} ± {summary['standard_error']:.2f}   "
          f"LC win rate {summary['length_controlled_winrate']:.2f} ± {summary['lc_standard_error']:.2f}   "
          f"n={summary['n_total']}  (judge {judge.model}; cache {judge.hits} hits, {judge.misses} calls)")
    return 0


def run_mt_bench(args) -> int:
    config = config_from_args(MTBenchConfig, args)
    questions = mt_bench.read_questions(config.data_dir)[: config.limit]
    if config.answers:
        answers = mt_bench.read_answers(config.answers)
    else:
        answers = mt_bench.generate_answers(_generator(config), questions, max_new_tokens=config.max_new_tokens,
                                            seed=config.seed)
    judge = _judge(config)
    judgments = mt_bench.judge_answers(questions, answers, judge, config.data_dir,
                                       max_tokens=config.judge.max_tokens or 2048, probe=config.judge.probe)
    summary = mt_bench.summarize(judgments)
    summary.update(judge=judge.model, cache_hits=judge.hits, cache_misses=judge.misses)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "model_answers.jsonl").open("w", encoding="utf-8") as handle:
        for question_id, turns in answers.items():
            handle.write(json.dumps({"question_id": question_id, "choices": [{"index": 0, "turns": turns}]},
                                    ensure_ascii=False) + "\n")
    _write_judge_results(out, config, "mt_bench", summary, judgments, config.model or config.answers)
    categories = sorted(summary["categories"])
    (out / "mt_bench_radar.png").write_bytes(
        radar_chart(categories, {config.model or "model": [summary["categories"][c] for c in categories]}))
    print(f"MT-Bench {_number(summary['score'])} (turn 1 {_number(summary['turn_1'])}, "
          f"turn 2 {_number(summary['turn_2'])}); {summary['n_parse_failures']} unparsed of "
          f"{summary['n_judgments']}")
    for category in categories:
        print(f"  {category:<12} {_number(summary['categories'][category])}")
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_judge_results(out: Path, config, kind: str, summary: dict, samples: list[dict], model) -> None:
    """results.json (read by `sftlab report`), samples.jsonl (with raw judge completions)
    and settings.json (the resolved config, versions)."""
    settings = {"command": f"judge {kind}", "config": asdict(config), "versions": library_versions()}
    results = {"model": model, "judge": {kind: summary}, "settings": settings}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for row in samples:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------- report

def _register_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="compare result directories: HTML page + Markdown summary",
                              description="Read results.json of several runs (sftlab eval / sftlab judge) and "
                                          "write index.html (tables and charts embedded), summary.md and "
                                          "the charts as PNG files.",
                              epilog="example:\n  sftlab report out/tiny out/tiny-ifeval -o out/report",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="result directories")
    p.add_argument("-o", "--output", required=True, help="report directory")
    p.add_argument("--subtasks", action="store_true", help="also list every subtask (e.g. BBH's 27)")
    p.set_defaults(handler=run_report)


def run_report(args) -> int:
    written = write_report(args.runs, args.output, subtasks=args.subtasks)
    print((Path(args.output) / "summary.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0
