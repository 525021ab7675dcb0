"""GSM8K generation: ``sftlab eval`` vs lm-evaluation-harness 0.4.13 (HF backend), same model,
same prompts, same items, greedy.

    .venv/bin/pip install lm-eval==0.4.13          # bench-only dependency (the `bench` extra)
    python bench/gsm8k_vs_lm_eval.py --rounds 2 --limit 50 --save

Workload: the first ``--limit`` items of ``--data`` (default ../shared/data/gsm8k/test.jsonl,
openai/grade-school-math's test split), 8-shot chain of thought. sftlab's ``gsm8k`` task
mirrors lm-eval's ``gsm8k_cot`` (same 8 exemplars, "Q: ...\\nA:" prompts, ``until`` =
["Q:", "</s>", "<|im_end|>"], 256 new tokens, strict-match / flexible-extract exact match),
so lm-eval runs ``gsm8k_cot``: its own yaml, with only the dataset pointed at the local
file (``dataset_path: json``), so nothing is downloaded.

Each tool runs in a fresh process (``--worker``) per round, the two in alternating order
(lm-eval first in odd rounds, sftlab first in even ones), so warm caches and the
neighbours' load fall on both alike. Both load the same model through
``sftlab.models.load_model`` (float32, CPU) and use ``--threads`` torch threads and the
same ``--batch-size``. Timed per process:

- ``eval_s``: from the loaded model to the scores: sftlab's ``evaluate()`` (writing its
  three files included), lm-eval's ``TaskManager()`` + ``HFLM`` + ``simple_evaluate()``;
- ``generate_s``: the part of it spent generating (``HFGenerator.generate`` /
  ``HFLM.generate_until``); the rest is building prompts, scoring and bookkeeping;
- ``process_s``: the whole process, interpreter start, imports and model load included.

Checked, from the timed runs themselves: every prompt byte for byte (and its token ids),
the generation settings, every raw output, the per-item verdicts (strict, flexible) and
both tools' own exact_match means; any difference is listed item by item. Prints
progress to stderr and one JSON line to stdout; ``--save`` also writes
bench/results/gsm8k_vs_lm_eval.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
RESULT_FILE = ROOT / "bench" / "results" / "gsm8k_vs_lm_eval.json"
LM_EVAL_TASK = "gsm8k_cot"  # what sftlab's gsm8k mirrors (sftlab/eval/tasks.py, class Gsm8k)
SIDES = ("lm-eval", "sftlab")


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- workers (one tool, one process)

def _load(args):
    """Threads first (before torch does any work), then the model both tools get."""
    import torch

    torch.set_num_threads(args.threads)
    from sftlab.models import load_model, load_tokenizer

    started = time.perf_counter()
    model = load_model(args.model, dtype="float32", device="cpu").eval()
    tokenizer = load_tokenizer(args.model)
    return model, tokenizer, time.perf_counter() - started


class _TimedGenerator:
    """sftlab's own generator, with the seconds spent inside ``generate`` added up."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def generate(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.inner.generate(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def run_sftlab(args) -> dict[str, Any]:
    """``sftlab.evaluate`` on the gsm8k task, as ``sftlab eval default --tasks gsm8k=FILE``."""
    from sftlab.eval.runner import EvalConfig, evaluate
    from sftlab.infer.hf import HFGenerator, prompt_to_ids

    model, tokenizer, load_s = _load(args)
    with tempfile.TemporaryDirectory() as out:
        config = EvalConfig(model=args.model, tasks=[f"gsm8k={args.data}"], limit=args.limit,
                            batch_size=args.batch_size, output_dir=out)
        started, cpu = time.perf_counter(), time.process_time()
        generator = _TimedGenerator(HFGenerator(model, tokenizer, batch_size=args.batch_size, name=args.model))
        results = _profiled(args, lambda: evaluate(config, generator=generator, model=model,
                                                   tokenizer=tokenizer, progress=False))
        eval_s, eval_cpu = time.perf_counter() - started, time.process_time() - cpu
        rows = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    metrics = results["tasks"]["gsm8k"]["metrics"]
    items = [{"prompt": r["prompt"], "ids": _sha(prompt_to_ids(tokenizer, r["prompt"])), "output": r["output"],
              "strict": r["scores"]["exact_match_strict"] == 1.0,
              "flexible": r["scores"]["exact_match_flexible"] == 1.0} for r in rows]
    generation = results["settings"]["tasks"]["gsm8k"]["generation"]
    return {"load_s": load_s, "eval_s": eval_s, "eval_cpu_s": eval_cpu, "generate_s": generator.seconds,
            "settings": {"max_gen_toks": generation["max_new_tokens"], "until": generation["stop"],
                         "greedy": generation["temperature"] == 0},
            "exact_match": {"strict": metrics["exact_match_strict"]["mean"],
                            "flexible": metrics["exact_match_flexible"]["mean"]}, "items": items}


def run_lm_eval(args) -> dict[str, Any]:
    """lm-eval's ``gsm8k_cot`` through ``simple_evaluate`` with an ``HFLM`` over the model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    model, tokenizer, load_s = _load(args)
    started, cpu = time.perf_counter(), time.process_time()
    manager = TaskManager()
    task = load_yaml(manager.task_index[LM_EVAL_TASK].yaml_path)  # the shipped yaml, unchanged ...
    task.update(dataset_path="json", dataset_name=None,       # ... but for where the rows come from
                dataset_kwargs={"data_files": {"test": str(args.data)}})
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    generate_s = [0.0]
    inner = lm.generate_until

    def generate_until(requests, *rest, **kwargs):
        begun = time.perf_counter()
        try:
            return inner(requests, *rest, **kwargs)
        finally:
            generate_s[0] += time.perf_counter() - begun

    lm.generate_until = generate_until  # simple_evaluate looks the method up on the instance
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=args.limit, log_samples=True,
                          verbosity="ERROR")
    eval_s, eval_cpu = time.perf_counter() - started, time.process_time() - cpu
    items: dict[int, dict[str, Any]] = {}
    for sample in out["samples"][LM_EVAL_TASK]:
        context, gen_kwargs = sample["arguments"][0]
        item = items.setdefault(sample["doc_id"], {"prompt": context, "ids": _sha(lm.tok_encode(context)),
                                                   "output": sample["resps"][0][0], "gen_kwargs": gen_kwargs})
        name = "strict" if sample["filter"] == "strict-match" else "flexible"
        item[name] = float(sample["exact_match"]) == 1.0
    scores = out["results"][LM_EVAL_TASK]
    kwargs = next(iter(items.values()))["gen_kwargs"]
    return {"load_s": load_s, "eval_s": eval_s, "eval_cpu_s": eval_cpu, "generate_s": generate_s[0],
            "settings": {"max_gen_toks": int(kwargs.get("max_gen_toks", lm.max_gen_toks)),
                         "until": list(kwargs["until"]), "greedy": not kwargs.get("do_sample", False)},
            "exact_match": {"strict": float(scores["exact_match,strict-match"]),
                            "flexible": float(scores["exact_match,flexible-extract"])},
            "items": [{k: v for k, v in items[i].items() if k != "gen_kwargs"} for i in sorted(items)]}


def _profiled(args, fn):
    """``fn()``, under cProfile when ``--profile N`` asks (top N by cumulative time to stderr)."""
    if not args.profile:
        return fn()
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.profile)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
    return result


# ---------------------------------------------------------------- the parent: rounds and checks

def spawn(side: str, args) -> dict[str, Any]:
    """One tool in a fresh process; -> its worker report plus ``process_s``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--report", report.name,
                   "--model", args.model, "--data", str(args.data), "--limit", str(args.limit),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        process_s = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{side} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return {**json.loads(Path(report.name).read_text()), "process_s": process_s}


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Item by item: prompt bytes, prompt token ids, raw output, strict and flexible verdicts."""
    differences = []
    for index, (a, b) in enumerate(zip(ours["items"], theirs["items"])):
        differs = [key for key in ("prompt", "ids", "output", "strict", "flexible") if a[key] != b[key]]
        if differs:
            differences.append({"item": index, "differs": differs,
                                **({"sftlab_output": a["output"], "lm_eval_output": b["output"]}
                                   if "output" in differs else {}),
                                "sftlab": {"strict": a["strict"], "flexible": a["flexible"]},
                                "lm_eval": {"strict": b["strict"], "flexible": b["flexible"]}})
    pairs = list(zip(ours["items"], theirs["items"]))

    def same(key: str) -> int:
        return sum(a[key] == b[key] for a, b in pairs)

    return {"items": [len(ours["items"]), len(theirs["items"])],
            "prompts_identical": same("prompt"), "prompt_ids_identical": same("ids"),
            "outputs_identical": same("output"), "strict_verdicts_equal": same("strict"),
            "flexible_verdicts_equal": same("flexible"),
            "settings_equal": ours["settings"] == theirs["settings"], "differences": differences}


def summary(args, rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-round seconds, paired ratios (lm-eval / sftlab) and their medians, scores, checks."""
    first = rounds[0]
    timing = {}
    for key in ("eval_s", "generate_s", "process_s", "eval_cpu_s"):
        ratios = [r["lm-eval"][key] / r["sftlab"][key] for r in rounds]
        timing[key] = {"sftlab": [round(r["sftlab"][key], 2) for r in rounds],
                       "lm_eval": [round(r["lm-eval"][key], 2) for r in rounds],
                       "ratio": [round(x, 2) for x in ratios], "median_ratio": round(statistics.median(ratios), 2)}
    stable = {side: all(r[side]["items"] == first[side]["items"] for r in rounds) for side in SIDES}
    return {"bench": "gsm8k_vs_lm_eval", "model": args.model, "data": str(args.data), "items": args.limit,
            "num_fewshot": 8, "lm_eval_task": LM_EVAL_TASK, "batch_size": args.batch_size,
            "threads": args.threads, "rounds": len(rounds),
            "order": [list(r) for r in rounds], "timing": timing,
            "exact_match": {"sftlab": first["sftlab"]["exact_match"], "lm_eval": first["lm-eval"]["exact_match"]},
            "settings": {"sftlab": first["sftlab"]["settings"], "lm_eval": first["lm-eval"]["settings"]},
            "checks": compare(first["sftlab"], first["lm-eval"]), "same_items_every_round": stable,
            "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("lm_eval", "torch", "transformers")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=50, help="the first N test items")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="both tools (sftlab's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", action="store_true", help=f"write {RESULT_FILE.relative_to(ROOT)}")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, default=0,
                        help="with --worker sftlab: print the top N functions of a cProfile run")
    args = parser.parse_args()
    if args.worker:
        report = (run_sftlab if args.worker == "sftlab" else run_lm_eval)(args)
        if args.report:
            Path(args.report).write_text(json.dumps(report))
        return 0

    rounds = []
    for number in range(args.rounds):
        order = SIDES if number % 2 == 0 else SIDES[::-1]
        done = {side: spawn(side, args) for side in order}
        rounds.append(done)
        print(f"round {number + 1}: " + ", ".join(
            f"{side} eval {done[side]['eval_s']:.1f}s (generate {done[side]['generate_s']:.1f}s, "
            f"process {done[side]['process_s']:.1f}s)" for side in order), file=sys.stderr, flush=True)
    result = summary(args, rounds)
    line = json.dumps(result)
    print(line)
    if args.save:
        RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
