"""Batched vs one-prompt-at-a-time generation with the default model (SmolLM2-135M-Instruct).

Both runs use the same HFGenerator code, the same 16 user-oriented instructions (from
../shared/data/self_instruct/user_oriented_instructions.jsonl, read now), greedy decoding
and the same max_new_tokens; only batch_size differs. Prints one JSON object:

    {"prompts": 16, "max_new_tokens": 64, "batch_size": 8,
     "sequential": {"seconds": .., "completion_tokens": .., "tokens_per_second": ..},
     "batched":    {...}, "speedup": .., "decode_speedup": .., "identical_outputs": true}

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/generate_batched.py [--prompts 16] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct" / "user_oriented_instructions.jsonl"


def load_prompts(count: int):
    from sftlab.types import Message

    prompts = []
    for line in DATA.read_text().splitlines()[:count]:
        row = json.loads(line)
        instance = (row.get("instances") or [{}])[0].get("input", "")
        text = row["instruction"] + (f"\n\n{instance}" if instance else "")
        prompts.append([Message("user", text)])
    return prompts


def timed(label: str, generator, prompts, sampling) -> tuple[list, dict]:
    """Wall and CPU seconds of one generate call; CPU time is the steadier number when the
    machine is shared (wall time then depends on what else runs)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    results = generator.generate(prompts, sampling)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(r.completion_tokens for r in results)
    stats = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "completion_tokens": tokens,
             "tokens_per_second": round(tokens / seconds, 2),
             "tokens_per_cpu_second": round(tokens / cpu, 2)}
    print(f"{label}: {json.dumps(stats)}", file=sys.stderr, flush=True)
    return results, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    from sftlab.infer.base import SamplingConfig
    from sftlab.infer.hf import HFGenerator
    from sftlab.models import load_model, load_tokenizer

    model, tokenizer = load_model("default"), load_tokenizer("default")
    prompts = load_prompts(args.prompts)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    HFGenerator(model, tokenizer, batch_size=2).generate(prompts[:2], SamplingConfig(max_new_tokens=4))  # warm-up
    one, many = HFGenerator(model, tokenizer, batch_size=1), HFGenerator(model, tokenizer, batch_size=args.batch_size)
    sequential, seq_stats = timed("sequential", one, prompts, sampling)
    batched, batch_stats = timed("batched", many, prompts, sampling)
    # prefill (reading the prompts) costs the same compute either way; time it alone (one new
    # token) to also report the speed-up of the decoding phase that batching is for
    first_token = SamplingConfig(max_new_tokens=1)
    for stats, generator in ((seq_stats, one), (batch_stats, many)):
        _, prefill = timed("prefill", generator, prompts, first_token)
        decode_tokens = stats["completion_tokens"] - prefill["completion_tokens"]
        decode_seconds = stats["seconds"] - prefill["seconds"]
        stats.update(prefill_seconds=prefill["seconds"],
                     decode_tokens_per_second=round(decode_tokens / decode_seconds, 2))
    print(json.dumps({
        "model": "default (SmolLM2-135M-Instruct, float32, CPU)", "threads": torch.get_num_threads(),
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "sequential": seq_stats, "batched": batch_stats,
        "speedup": round(batch_stats["tokens_per_second"] / seq_stats["tokens_per_second"], 2),
        "speedup_cpu_time": round(batch_stats["tokens_per_cpu_second"] / seq_stats["tokens_per_cpu_second"], 2),
        "decode_speedup": round(batch_stats["decode_tokens_per_second"] / seq_stats["decode_tokens_per_second"], 2),
        "identical_outputs": [r.text for r in sequential] == [r.text for r in batched],
    }, indent=2))


if __name__ == "__main__":
    main()
