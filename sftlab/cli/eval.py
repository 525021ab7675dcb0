"""``sftlab eval``, ``sftlab judge {winrate,alpaca-eval,mt-bench}`` and ``sftlab report``.

Thin adapters: arguments -> ``sftlab.eval.runner.EvalConfig`` / the judge functions ->
files in the output directory and a table on stdout. Heavy imports happen in the handlers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EVAL_EXAMPLES = """examples:
  sftlab eval tiny --tasks gsm8k --limit 3 --data-dir ../shared/data -o out/tiny
  sftlab eval default --tasks gsm8k,bbh --num-fewshot 3 --chat-template on -o out/base
  sftlab eval out/run1 --adapter out/run1/adapter --tasks mc=items.jsonl,mc_letters=items.jsonl
  sftlab eval x --tasks gsm8k --responses answers.jsonl --data-dir ../shared/data
  sftlab eval x --tasks gsm8k --base-url http://localhost:8000/v1 --api-model my-model

tasks: gsm8k, math, bbh (27 subtasks), mc, mc_letters (log-likelihood), ifeval, humaneval
(when installed). Data: --data-dir DIR holds gsm8k/test.jsonl, bbh/, math/test.jsonl, ...;
TASK=PATH gives one task its own file. Writes results.json (every score with a bootstrap
95% interval and n), samples.jsonl (rendered prompt, raw output, extracted answer, score)
and settings.json (few-shot, chat template, generation settings, seed, versions)."""


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_judge(subparsers)
    _register_report(subparsers)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on close-ended tasks (GSM8K, MATH, BBH, MC, ...)",
                              description="Evaluate a model (base, tuned, adapter, or a served endpoint) "
                                          "on close-ended tasks.",
                              epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="tiny, default, a model directory, or a name for --base-url")
    p.add_argument("--tasks", required=True, help="comma-separated task names; NAME=PATH for a data path")
    p.add_argument("-o", "--output", help="directory for results.json, samples.jsonl, settings.json")
    p.add_argument("--limit", type=int, help="only the first N items (of each BBH subtask)")
    p.add_argument("--num-fewshot", type=int, help="override the tasks' few-shot count")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto",
                   help="on: wrap text prompts in the chat template; off: never; auto: as the task says")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to MODEL")
    p.add_argument("--responses", help="score precomputed responses (JSON/JSONL: id or prompt, response)")
    p.add_argument("--data-dir", help="folder holding the tasks' data files")
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint that generates (e.g. http://host:8000/v1)")
    p.add_argument("--api-model", help="model name to send to --base-url")
    p.add_argument("--max-new-tokens", type=int, help="override the tasks' generation length")
    p.add_argument("--seed", type=int, default=1234, help="sampling and bootstrap seed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    from sftlab.eval.runner import EvalConfig, evaluate, format_table

    config = EvalConfig(model=args.model, tasks=[t for t in args.tasks.split(",") if t.strip()],
                        output_dir=args.output, limit=args.limit, num_fewshot=args.num_fewshot,
                        chat_template=args.chat_template, batch_size=args.batch_size,
                        adapter=args.adapter, responses=args.responses, data_dir=args.data_dir,
                        base_url=args.base_url, api_model=args.api_model,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device,
                        dtype=args.dtype)
    results = evaluate(config)
    print(format_table(results))
    if args.output:
        print(f"wrote {args.output}/results.json, samples.jsonl, settings.json")
    return 0


# ---------------------------------------------------------------- judge

def _register_judge(subparsers) -> None:
    p = subparsers.add_parser("judge", help="LLM-as-a-judge: win rates (AlpacaEval, LC) and MT-Bench")
    group = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=lambda args: p.print_help())

    w = group.add_parser("winrate", help="win rate and length-controlled win rate of annotations",
                         description="Win rate (ties = 1/2) and length-controlled win rate (Dubois et al. "
                                     "2024) with standard errors, from AlpacaEval annotations: output_1 = "
                                     "baseline, output_2 = model, preference 1 (baseline), 2 (model), "
                                     "1.5 (tie) or fractional.",
                         epilog="example: sftlab judge winrate out/alpaca/annotations.json --json\n"
                                "Several files (models judged on the same instructions) also estimate "
                                "the instruction-difficulty term of the GLM.",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("annotations", nargs="+", help="annotation JSON (list) or JSONL files")
    w.add_argument("--json", action="store_true", help="print JSON instead of a table")
    w.add_argument("--seed", type=int, default=1234)
    w.set_defaults(handler=run_winrate)

    a = group.add_parser("alpaca-eval", help="pairwise judging against AlpacaEval baseline outputs",
                         description="Generate (or read) a model's outputs for the AlpacaEval instructions, "
                                     "judge each against the baseline in both orders, and report the win "
                                     "rate and the length-controlled win rate.",
                         epilog="example: sftlab judge alpaca-eval tiny --baseline ../shared/data/alpaca_eval/"
                                "gpt4_1106_preview_outputs.json --judge gpt-4o-mini --judge-base-url "
                                "https://api.openai.com/v1 --limit 20 -o out/alpaca",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("model", nargs="?", help="model to generate with (omit with --outputs)")
    a.add_argument("--outputs", help="the model's outputs instead of generating (AlpacaEval JSON)")
    a.add_argument("--baseline", required=True, help="baseline outputs JSON (instruction, output, generator)")
    _judge_arguments(a)
    a.add_argument("--max-new-tokens", type=int, default=1024)
    a.add_argument("--one-order", action="store_true", help="judge each pair once (model second)")
    a.set_defaults(handler=run_alpaca_eval)

    m = group.add_parser("mt-bench", help="MT-Bench single-answer grading (1-10 per turn)",
                         description="Answer the 80 two-turn MT-Bench questions (or read answers) and grade "
                                     "each turn 1-10 with FastChat's judge prompts (reference-guided for "
                                     "math, reasoning and coding).",
                         epilog="example: sftlab judge mt-bench tiny --data-dir ../shared/data/mt_bench "
                                "--judge tiny --limit 4 -o out/mt",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("model", nargs="?", help="model to answer with (omit with --answers)")
    m.add_argument("--answers", help="FastChat model-answer JSONL instead of generating")
    m.add_argument("--data-dir", required=True, help="folder with question.jsonl, judge_prompts.jsonl, "
                                                     "reference_answer_gpt-4.jsonl")
    _judge_arguments(m)
    m.add_argument("--max-new-tokens", type=int, default=1024)
    m.set_defaults(handler=run_mt_bench)


def _judge_arguments(p) -> None:
    p.add_argument("--judge", required=True, help="judge model: a name at --judge-base-url, or a local model")
    p.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--cache-dir", default="~/.cache/sftlab/judge", help="judge completions cache ('' = none)")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--adapter", help="PEFT adapter for MODEL")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("-o", "--output", required=True, help="output directory")


def run_winrate(args) -> int:
    from sftlab.eval.judge.lc import estimate_difficulty, summarize_annotations

    sets = [_read_annotations(path) for path in args.annotations]
    if len(sets) > 1:
        difficulty = estimate_difficulty(sets)
        for annotations in sets:
            for row in annotations:
                row.setdefault("instruction_difficulty", difficulty.get(row.get("instruction")))
    summaries = {path: summarize_annotations(rows, seed=args.seed) for path, rows in zip(args.annotations, sets)}
    if args.json:
        print(json.dumps(summaries if len(sets) > 1 else summaries[args.annotations[0]], indent=2))
        return 0
    print(f"{'annotations':<40} {'model':<20} {'win rate':>14} {'LC win rate':>14} {'n':>5} {'avg len':>8}")
    for path, s in summaries.items():
        print(f"{Path(path).name:<40} {str(s['model'])[:20]:<20} "
              f"{s['win_rate']:>6.2f} ± {s['standard_error']:<5.2f} "
              f"{s['length_controlled_winrate']:>6.2f} ± {s['lc_standard_error']:<5.2f} "
              f"{s['n_total']:>5} {s['avg_length']:>8.0f}")
    return 0


def _read_annotations(path: str) -> list[dict]:
    from sftlab.errors import DataError

    file = Path(path)
    if not file.is_file():
        raise DataError("annotations file not found", file=path)
    text = file.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg})", file=path, line=exc.lineno) from exc
    for i, row in enumerate(rows):
        for key in ("output_1", "output_2"):
            if not isinstance(row.get(key), str):
                raise DataError(f"needs a '{key}' string", file=path, index=i, field=key)
    return rows


def _judge(args):
    from sftlab.eval.judge.client import make_judge

    return make_judge(args.judge, base_url=args.judge_base_url, cache_dir=args.cache_dir or None,
                      api_key_env=args.api_key_env, batch_size=args.batch_size)


def _generator(args):
    from sftlab.errors import ConfigError
    from sftlab.infer.hf import HFGenerator

    if not args.model:
        raise ConfigError("give a MODEL to generate with, or precomputed outputs")
    return HFGenerator.from_name(args.model, adapter=args.adapter, batch_size=args.batch_size)


def run_alpaca_eval(args) -> int:
    from sftlab.eval.judge.lc import summarize_annotations
    from sftlab.eval.judge.pairwise import generate_outputs, judge_pairs, read_outputs

    baseline = read_outputs(args.baseline)[: args.limit]
    if args.outputs:
        outputs = read_outputs(args.outputs)
    else:
        outputs = generate_outputs(_generator(args), [row["instruction"] for row in baseline],
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                   name=Path(args.model).name)
    judge = _judge(args)
    annotations = judge_pairs(baseline, outputs, judge, both_orders=not args.one_order)
    summary = summarize_annotations(annotations, seed=args.seed)
    summary.update(judge=judge.model, cache_hits=judge.hits, cache_misses=judge.misses,
                   both_orders=not args.one_order)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_outputs.json").write_text(json.dumps(outputs, indent=1, ensure_ascii=False), encoding="utf-8")
    (out / "annotations.json").write_text(json.dumps(annotations, indent=1, ensure_ascii=False), encoding="utf-8")
    _write_judge_results(out, args, "alpaca_eval", summary, annotations)
    print(f"win rate {summary['win_rate']:.2f} ± {summary['standard_error']:.2f}   "
          f"LC win rate {summary['length_controlled_winrate']:.2f} ± {summary['lc_standard_error']:.2f}   "
          f"n={summary['n_total']}  (judge {judge.model}; cache {judge.hits} hits, {judge.misses} calls)")
    return 0


def run_mt_bench(args) -> int:
    from sftlab.eval.judge import mt_bench
    from sftlab.report.charts import radar_chart

    questions = mt_bench.read_questions(args.data_dir)[: args.limit]
    if args.answers:
        answers = mt_bench.read_answers(args.answers)
    else:
        answers = mt_bench.generate_answers(_generator(args), questions, max_new_tokens=args.max_new_tokens,
                                            seed=args.seed)
    judge = _judge(args)
    judgments = mt_bench.judge_answers(questions, answers, judge, args.data_dir)
    summary = mt_bench.summarize(judgments)
    summary.update(judge=judge.model, cache_hits=judge.hits, cache_misses=judge.misses)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "model_answers.jsonl").open("w", encoding="utf-8") as handle:
        for question_id, turns in answers.items():
            handle.write(json.dumps({"question_id": question_id, "choices": [{"index": 0, "turns": turns}]},
                                    ensure_ascii=False) + "\n")
    _write_judge_results(out, args, "mt_bench", summary, judgments)
    categories = sorted(summary["categories"])
    (out / "mt_bench_radar.png").write_bytes(
        radar_chart(categories, {args.model or "model": [summary["categories"][c] for c in categories]}))
    print(f"MT-Bench {_number(summary['score'])} (turn 1 {_number(summary['turn_1'])}, "
          f"turn 2 {_number(summary['turn_2'])}); {summary['n_parse_failures']} unparsed of "
          f"{summary['n_judgments']}")
    for category in categories:
        print(f"  {category:<12} {_number(summary['categories'][category])}")
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_judge_results(out: Path, args, kind: str, summary: dict, samples: list[dict]) -> None:
    """results.json (read by `sftlab report`), samples.jsonl (with raw judge completions)
    and settings.json (every argument, versions)."""
    from sftlab.eval.runner import library_versions

    settings = {"command": f"judge {kind}", "arguments": {k: v for k, v in vars(args).items()
                                                          if k != "handler"},
                "versions": library_versions()}
    results = {"model": getattr(args, "model", None) or getattr(args, "outputs", None) or
               getattr(args, "answers", None), "judge": {kind: summary}, "settings": settings}
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
                              epilog="example: sftlab report out/base out/tuned -o out/report",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="result directories")
    p.add_argument("-o", "--output", required=True, help="report directory")
    p.add_argument("--subtasks", action="store_true", help="also list every subtask (e.g. BBH's 27)")
    p.set_defaults(handler=run_report)


def run_report(args) -> int:
    from sftlab.report.html import write_report

    written = write_report(args.runs, args.output, subtasks=args.subtasks)
    print((Path(args.output) / "summary.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    return 0
