"""Batched generation (sftlab's continuous batching) vs one prompt at a time with HF generate.

The default model (SmolLM2-135M-Instruct, float32), the same 16 user-oriented instructions
(from ../shared/data/self_instruct/user_oriented_instructions.jsonl, read now), greedy
decoding, the same max_new_tokens. The baseline is what a user writes without sftlab: one
``model.generate`` call per prompt (KV cache on). sftlab runs ``HFGenerator`` with
``batch_size`` sequences in flight. The two runs alternate for ``--rounds`` rounds (the
machine's speed drifts); prints one JSON object with each round's figures, the paired
speed-ups, their median, and whether the outputs are identical token for token.

Run: .venv/bin/python bench/generate_batched.py [--threads 2] [--prompts 16] [--batch-size 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
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


def hf_one_at_a_time(model, tokenizer, prompts, max_new_tokens: int) -> list[list[int]]:
    """The baseline: ``model.generate`` for each prompt alone; returns completion token ids."""
    import torch

    from sftlab.infer.hf import prompt_to_ids

    eos = tokenizer.eos_token_id
    completions = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt_to_ids(tokenizer, prompt)])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos)
            completions.append(out[0, ids.shape[1]:].tolist())
    return completions


def timed(function):
    start, cpu_start = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both sides (0: PyTorch's default, all cores)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sftlab.infer.base import SamplingConfig
    from sftlab.infer.hf import HFGenerator
    from sftlab.models import load_model, load_tokenizer

    model, tokenizer = load_model("default"), load_tokenizer("default")
    prompts = load_prompts(args.prompts)
    generator = HFGenerator(model, tokenizer, batch_size=args.batch_size)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    generator.generate(prompts[:2], SamplingConfig(max_new_tokens=4))  # warm-up
    hf_one_at_a_time(model, tokenizer, prompts[:1], 4)
    rounds = []
    for round_index in range(args.rounds):
        baseline, base_s, base_cpu = timed(lambda: hf_one_at_a_time(model, tokenizer, prompts, args.max_new_tokens))
        ours, ours_s, ours_cpu = timed(lambda: generator.generate(prompts, sampling))
        base_tokens = sum(len(c) for c in baseline)
        our_tokens = sum(g.completion_tokens for g in ours)
        # the baseline's ids end with the EOS token it stopped on; sftlab counts it too
        identical = [tokenizer.decode(c, skip_special_tokens=True) for c in baseline] == [g.text for g in ours]
        row = {"round": round_index,
               "hf_one_at_a_time": {"seconds": round(base_s, 2), "completion_tokens": base_tokens,
                                    "tokens_per_second": round(base_tokens / base_s, 2)},
               "sftlab_batched": {"seconds": round(ours_s, 2), "completion_tokens": our_tokens,
                                  "tokens_per_second": round(our_tokens / ours_s, 2)},
               "speedup": round((our_tokens / ours_s) / (base_tokens / base_s), 2),
               "speedup_cpu_time": round((our_tokens / ours_cpu) / (base_tokens / base_cpu), 2),
               "identical_outputs": identical}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rounds.append(row)
    speedups = sorted(r["speedup"] for r in rounds)
    print(json.dumps({
        "model": "default (SmolLM2-135M-Instruct, float32, CPU)", "threads": torch.get_num_threads(),
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "rounds": rounds, "speedups": speedups, "median_speedup": round(statistics.median(speedups), 2),
        "identical_outputs": all(r["identical_outputs"] for r in rounds),
    }, indent=2))


if __name__ == "__main__":
    main()
