"""sftlab's training against every peer a user would pick, on two workloads, in one run.

The peers are the peer benchmark's own runners (``../shared/peer-bench``, run as they are):
a plain PyTorch loop, TRL full / packed / LoRA, LLaMA-Factory full / LoRA (in its own
virtual environment: ``--lf-python``, built by ``bench/make_lf_venv.sh``). sftlab runs as
``bench/train_vs_trl.py --worker`` (full, LoRA, QLoRA) with the same model, data, order,
batch and optimizer.
Every run is a fresh process; each round runs every runner once, in an order that rotates
between rounds (the machine's speed drifts), after waiting for a quiet machine. The fp32
matmul peak is measured in the same run (``peak_flops.py``) and handed to every runner.
``mfu`` counts the matmul FLOPs the method needs per trained token (``flops_per_token``:
forward, input gradients and, for trained weights only, weight gradients, attention within
each example included) over that peak; ``mfu_6n`` is the peer benchmark's own 6N figure
(the same for every method, attention left out).

Workloads:
- ``short``: the peer benchmark's defaults (32-128 tokens, batch 4);
- ``realistic``: 256-1024 tokens, batch 6 (about 3,840 tokens per optimiser step).

Prints ONE JSON line: per workload and runner the trained tokens/s, peak RSS, MFU and final
loss for every round, and per method (full, lora, qlora) sftlab's same-round ratios against
the best peer of that round (QLoRA against the LoRA peers: the peer benchmark's runners
have no 4-bit mode). ``bench/results/train_peers.json`` keeps it with ``--save``.

    python bench/train_peers.py --rounds 3 --lf-python /path/to/lf-venv/bin/python --save
    python bench/train_peers.py --rounds 1 --workloads short --runners sftlab_lora,trl_lora
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER = Path(os.environ.get("SFTLAB_PEER_BENCH", REPO.parent / "shared" / "peer-bench"))

WORKLOADS = {
    "short": [],
    "realistic": ["--min-len", "256", "--max-len", "1024", "--batch-size", "6"],
}

# runner -> (method it competes in, interpreter key, script + arguments)
RUNNERS = {
    "plain_loop": ("full", "python", [PEER / "plain_loop.py"]),
    "trl_full": ("full", "python", [PEER / "trl_sft.py", "--mode", "full"]),
    "trl_packing": ("full", "python", [PEER / "trl_sft.py", "--mode", "packing"]),
    "trl_lora": ("lora", "python", [PEER / "trl_sft.py", "--mode", "lora"]),
    "llamafactory_full": ("full", "lf_python", [PEER / "llamafactory_sft.py", "--mode", "full"]),
    "llamafactory_lora": ("lora", "lf_python", [PEER / "llamafactory_sft.py", "--mode", "lora"]),
    "sftlab_full": ("full", "python", [HERE / "train_vs_trl.py", "--worker", "--mode", "full"]),
    "sftlab_lora": ("lora", "python", [HERE / "train_vs_trl.py", "--worker", "--mode", "lora"]),
    "sftlab_qlora": ("qlora", "python", [HERE / "train_vs_trl.py", "--worker", "--mode", "qlora"]),
}
# method -> the peers' method it is compared with (the peer runners have no 4-bit mode)
COMPARED_WITH = {"full": "full", "lora": "lora", "qlora": "lora"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="times every runner runs, alternating")
    parser.add_argument("--workloads", default="short,realistic", help="comma list of: " + ", ".join(WORKLOADS))
    parser.add_argument("--runners", default=",".join(RUNNERS), help="comma list of: " + ", ".join(RUNNERS))
    parser.add_argument("--lf-python", default=os.environ.get("LF_PYTHON", ""),
                        help="python of LLaMA-Factory's virtual environment; empty: its runners are left out")
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--quiet-frac", type=float, default=0.10,
                        help="wait before each run until other processes use less than this CPU share")
    parser.add_argument("--max-wait", type=float, default=300, help="longest wait for quiet, seconds")
    parser.add_argument("--save", action="store_true", help="also write bench/results/train_peers.json")
    args = parser.parse_args()
    runners = [r for r in args.runners.split(",") if r]
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown runners {unknown}; known: {', '.join(RUNNERS)}")
    if not args.lf_python:
        runners = [r for r in runners if RUNNERS[r][1] != "lf_python"]
    args.peak_gflops = measure_peak()
    report = {"benchmark": "train_peers", "rounds": args.rounds, "steps": args.steps,
              "warmup": args.warmup, "peer_bench": str(PEER),
              "peak_fp32_gflops": args.peak_gflops, "workloads": {}}
    for workload in [w for w in args.workloads.split(",") if w]:
        runs = run_rounds(workload, runners, args)
        report["workloads"][workload] = summarize(runs)
    line = json.dumps(report)
    print(line, flush=True)
    if args.save:
        (HERE / "results" / "train_peers.json").write_text(json.dumps(report, indent=1) + "\n")


def measure_peak() -> float | None:
    """This run's fp32 matmul peak (GFLOP/s), from the peer benchmark's own probe."""
    result = run_json([sys.executable, str(PEER / "peak_flops.py"), "--dtypes", "float32", "--json"])
    return result.get("peak_fp32_gflops")


def run_rounds(workload: str, runners: list[str], args) -> list[dict]:
    flags = WORKLOADS[workload] + ["--steps", str(args.steps), "--warmup", str(args.warmup), "--json"]
    pythons = {"python": sys.executable, "lf_python": args.lf_python}
    runs = []
    for round_index in range(args.rounds):
        shift = round_index % len(runners)
        for name in runners[shift:] + runners[:shift]:
            wait_quiet(args.quiet_frac, args.max_wait)
            _, python, script = RUNNERS[name]
            # the peers' runners print JSON with --json; sftlab's worker always does
            args_here = [f for f in flags if f != "--json"] if name.startswith("sftlab") else flags
            result = run_json([pythons[python], *map(str, script), *args_here], args.peak_gflops)
            result.update(runner=name, round=round_index + 1)
            if "error" not in result:
                result["mfu_6n"] = result.pop("mfu", None)
                flops = flops_per_token(RUNNERS[name][0], workload, result.get("n_trainable_params", 0))
                result["model_flops_per_token"] = round(flops)
                if args.peak_gflops:
                    result["mfu"] = round(flops * result["trained_tokens_per_s"] / (args.peak_gflops * 1e9), 4)
            runs.append(result)
            keys = ("trained_tokens_per_s", "peak_rss_mib", "mfu", "final_loss", "other_procs_cpu_frac", "error")
            print(json.dumps({"workload": workload, "runner": name, "round": round_index + 1,
                              **{k: result[k] for k in keys if k in result}}), file=sys.stderr, flush=True)
    return runs


def run_json(command: list[str], peak_gflops: float | None = None) -> dict:
    """Run one fresh process; its last JSON line (or the error it ended with)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if peak_gflops:  # the runners' own MFU then uses this run's peak
        env["BENCH_PEAK_FP32_GFLOPS"] = str(peak_gflops)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=PEER, capture_output=True, text=True, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            return {**json.loads(line), "process_wall_s": round(time.perf_counter() - started, 1)}
    return {"error": done.stderr[-2000:], "returncode": done.returncode}


def peer_model():
    """The peer benchmark's ``model`` module (its shape, lengths and CPU-share meter)."""
    if str(PEER) not in sys.path:
        sys.path.insert(0, str(PEER))
    import model

    return model


def workload_lengths(workload: str) -> tuple[int, int]:
    """The (min, max) example length of a workload (uniform in between, as the peers draw)."""
    flags = WORKLOADS[workload]
    model = peer_model()
    low = int(flags[flags.index("--min-len") + 1]) if "--min-len" in flags else model.MIN_LEN
    high = int(flags[flags.index("--max-len") + 1]) if "--max-len" in flags else model.MAX_LEN
    return low, high


def flops_per_token(method: str, workload: str, n_trainable: int) -> float:
    """Matmul FLOPs one trained token costs in the peer model (SmolLM2-135M's shape).

    A forward pass is 2 FLOPs per weight of every projection and the (tied) LM head, plus
    QK^T and AV over the token's causal context within its example (on average (n+1)/2
    positions for an example of n tokens; lengths uniform over the workload's range).
    Full fine-tuning adds input gradients and weight gradients (2x the forward again);
    frozen weights (LoRA) need input gradients only, and the adapters' own 6 FLOPs per
    trained parameter. Embedding lookups, norms and activations are not matmuls."""
    shape = peer_model().SMOLLM2_135M
    d, layers, inner = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    weights = layers * (2 * d * d + 2 * d * kv + 3 * d * inner) + d * shape["vocab_size"]
    low, high = workload_lengths(workload)
    lengths = range(low, high + 1)
    context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)  # mean causal context per token
    forward = 2 * weights + 4 * layers * d * context
    if method == "full":
        return 3 * forward
    return 2 * forward + 6 * n_trainable


def wait_quiet(fraction: float, max_wait: float) -> None:
    ContentionMeter = peer_model().ContentionMeter  # the peer benchmark's own CPU-share meter

    started = time.time()
    while time.time() - started < max_wait:
        meter = ContentionMeter()
        time.sleep(5)
        if meter.stop()["other_procs_cpu_frac"] <= fraction:
            return


def summarize(runs: list[dict]) -> dict:
    """Per runner: figures per round; per method: sftlab / best peer of the same round."""
    by_runner: dict[str, list[dict]] = {}
    for run in runs:
        by_runner.setdefault(run["runner"], []).append(run)
    runners = {}
    for name, results in by_runner.items():
        ok = [r for r in results if "error" not in r]
        runners[name] = {
            "trained_tokens_per_s": [r["trained_tokens_per_s"] for r in ok],
            "peak_rss_mib": [r["peak_rss_mib"] for r in ok],
            "mfu": [r.get("mfu") for r in ok],
            "mfu_6n": [r.get("mfu_6n") for r in ok],
            "final_loss": [r.get("final_loss") for r in ok],
            "other_procs_cpu_frac": [r.get("other_procs_cpu_frac") for r in ok],
            "errors": [r["error"][-500:] for r in results if "error" in r],
        }
    return {"runners": runners, "vs_best_peer": {m: versus_best_peer(runs, m) for m in COMPARED_WITH}}


def versus_best_peer(runs: list[dict], method: str) -> dict:
    """sftlab's same-round speed and peak-RSS ratios against the fastest peer of that round."""
    speed, memory, best = [], [], []
    for round_number in sorted({r["round"] for r in runs}):
        here = [r for r in runs if r["round"] == round_number and "error" not in r]
        ours = [r for r in here if r["runner"] == f"sftlab_{method}"]
        peers = [r for r in here if not r["runner"].startswith("sftlab")
                 and RUNNERS[r["runner"]][0] == COMPARED_WITH[method]]
        if not ours or not peers:
            continue
        fastest = max(peers, key=lambda r: r["trained_tokens_per_s"])
        speed.append(ours[0]["trained_tokens_per_s"] / fastest["trained_tokens_per_s"])
        memory.append(ours[0]["peak_rss_mib"] / min(p["peak_rss_mib"] for p in peers))
        best.append(fastest["runner"])
    if not speed:
        return {"error": f"no round with sftlab_{method} and a peer that both finished"}
    return {"best_peer_per_round": best, "speed_ratio_per_round": [round(x, 3) for x in speed],
            "speed_ratio_median": round(statistics.median(speed), 3),
            "peak_rss_vs_leanest_peer_per_round": [round(x, 3) for x in memory],
            "peak_rss_ratio_median": round(statistics.median(memory), 3)}


if __name__ == "__main__":
    main()
