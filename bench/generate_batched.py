"""Batched vs one-prompt-at-a-time generation with the default model (SmolLM2-135M-Instruct).

Both runs use the same HFGenerator code, the same 16 user-oriented instructions (from
../shared/data/self_instruct/user_oriented_instructions.jsonl, read now), greedy decoding
and the same max_new_tokens; only batch_size differs. Prints one JSON object:

    {"prompts": 16, "max_new_tokens": 64, "batch_size": 8,
     "sequential": {"seconds": .., "completion_tokens": .., "tokens_per_second": ..},
     "batched":    {...}, "speedup": .., "identical_outputs": true}

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/generate_batched.py [--prompts 16] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
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


def timed(generator, prompts, sampling) -> tuple[list, dict]:
    start = time.perf_counter()
    results = generator.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)
    return results, {"seconds": round(seconds, 2), "completion_tokens": tokens,
                     "tokens_per_second": round(tokens / seconds, 2)}


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
    sequential, seq_stats = timed(HFGenerator(model, tokenizer, batch_size=1), prompts, sampling)
    batched, batch_stats = timed(HFGenerator(model, tokenizer, batch_size=args.batch_size), prompts, sampling)
    print(json.dumps({
        "model": "default (SmolLM2-135M-Instruct, float32, CPU)", "threads": torch.get_num_threads(),
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "sequential": seq_stats, "batched": batch_stats,
        "speedup": round(batch_stats["tokens_per_second"] / seq_stats["tokens_per_second"], 2),
        "identical_outputs": [r.text for r in sequential] == [r.text for r in batched],
    }, indent=2))


if __name__ == "__main__":
    main()
