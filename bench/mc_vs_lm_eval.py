"""Multiple-choice scoring: sftlab's loglik vs lm-evaluation-harness, same model, same items.

    .venv/bin/pip install lm-eval==0.4.13          # bench-only dependency
    python bench/mc_vs_lm_eval.py --model default --items 100 --batch-size 16

Items: the multiple-choice BIG-Bench Hard subtasks (questions with "Options: (A) ..."),
read from ``--bbh-dir`` (default ../shared/data/bbh), turned into MC items. Two prompt
styles are scored, as ``sftlab eval`` runs them:
- ``letters`` (MMLU style): continuations " A", " B", ... (one token each);
- ``text`` (ARC style): continuations are the option texts (several tokens each).

Both tools get the very same (context, continuation) pairs and the same model object in
one process; lm-eval is driven through its model API (``HFLM.loglikelihood``), which is
what its multiple-choice tasks call. Prints accuracy (acc, acc_norm) of both side by side
and the wall time; each tool runs ``--repeats`` times and the best time counts.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"^\(([A-Z])\)\s*(.*)$")


def bbh_items(folder: Path, limit: int) -> list[dict]:
    """MC items from BBH inputs that list options; spread evenly over the subtasks."""
    per_task = []
    for path in sorted(folder.glob("*.json")):
        items = []
        for example in json.loads(path.read_text())["examples"]:
            question, _, options = example["input"].partition("\nOptions:\n")
            choices, letters = [], []
            for line in options.splitlines():
                match = OPTION.match(line.strip())
                if match:
                    letters.append(match.group(1))
                    choices.append(match.group(2))
            target = example["target"].strip("()")
            if len(choices) >= 2 and target in letters:
                items.append({"question": question.strip(), "choices": choices, "gold": letters.index(target)})
        if items:
            per_task.append(items)
    chosen, k = [], 0
    while len(chosen) < limit and any(k < len(t) for t in per_task):
        chosen += [t[k] for t in per_task if k < len(t)]
        k += 1
    return chosen[:limit]


def pairs_for(items: list[dict], style: str) -> tuple[list[tuple[str, str]], list[int]]:
    from sftlab.eval.tasks import MultipleChoice, MultipleChoiceLetters

    task = MultipleChoiceLetters() if style == "letters" else MultipleChoice()
    pairs, owners = [], []
    for index, item in enumerate(items):
        for choice in task.choices(item):
            pairs.append((task.context(item), choice))
            owners.append(index)
    return pairs, owners


def accuracy(items, pairs, owners, logprobs) -> tuple[float, float]:
    """acc (argmax summed log-prob) and acc_norm (argmax log-prob per character)."""
    grouped: dict[int, list[tuple[float, int]]] = {}
    for (context, choice), owner, lp in zip(pairs, owners, logprobs):
        grouped.setdefault(owner, []).append((lp, len(choice)))
    acc = norm = 0
    for index, scores in grouped.items():
        gold = items[index]["gold"]
        acc += max(range(len(scores)), key=lambda i: scores[i][0]) == gold
        norm += max(range(len(scores)), key=lambda i: scores[i][0] / scores[i][1]) == gold
    return acc / len(grouped), norm / len(grouped)


def run_sftlab(model, tokenizer, pairs, batch_size):
    from sftlab.eval.loglik import loglikelihoods

    return [r.logprob for r in loglikelihoods(model, tokenizer, pairs, batch_size=batch_size)]


def run_lm_eval(lm, pairs):
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def timed(fn, repeats):
    """-> (best wall seconds, CPU seconds of that run, result). CPU time is printed too
    because on a shared machine wall time also measures the neighbours."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bbh-dir", default=str(ROOT.parent / "shared" / "data" / "bbh"))
    parser.add_argument("--styles", default="letters,text")
    args = parser.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM

    from sftlab.models import load_model, load_tokenizer

    model = load_model(args.model, device=args.device).eval()
    tokenizer = load_tokenizer(args.model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=args.device)
    items = bbh_items(Path(args.bbh_dir), args.items)
    print(f"model {args.model} on {args.device}, {len(items)} BBH multiple-choice items, batch size "
          f"{args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'style':<8} {'pairs':>6} {'tool':<8} {'acc':>6} {'acc_norm':>9} {'wall s':>8} {'cpu s':>8} "
          f"{'pairs/s':>8}")
    for style in args.styles.split(","):
        pairs, owners = pairs_for(items, style)
        # lm-eval first: any warm-up cost falls on it, never on us
        theirs_s, theirs_cpu, theirs = timed(lambda: run_lm_eval(lm, pairs), args.repeats)
        ours_s, ours_cpu, ours = timed(lambda: run_sftlab(model, tokenizer, pairs, args.batch_size), args.repeats)
        for tool, seconds, cpu, logprobs in (("sftlab", ours_s, ours_cpu, ours),
                                             ("lm-eval", theirs_s, theirs_cpu, theirs)):
            acc, norm = accuracy(items, pairs, owners, logprobs)
            print(f"{style:<8} {len(pairs):>6} {tool:<8} {100 * acc:>6.1f} {100 * norm:>9.1f} "
                  f"{seconds:>8.2f} {cpu:>8.2f} {len(pairs) / seconds:>8.1f}")
        gap = max(abs(a - b) for a, b in zip(ours, theirs))
        print(f"{style:<8} max |logprob difference| {gap:.2e}; speed-up x{theirs_s / ours_s:.2f} (wall), "
              f"x{theirs_cpu / ours_cpu:.2f} (cpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
