"""Where a training step of sftlab's benchmark goes: what bounds its MFU (issue 18).

Runs sftlab's training worker exactly as ``bench/train_peers.py`` does for ``sftlab_full`` /
``sftlab_lora`` (``bench/train_vs_trl.run_sftlab``: the peer benchmark's model, data, batch
and optimizer, sftlab's settings), with ``torch.profiler`` (CPU, shapes) switched on for a
few steps after warm-up and a few unprofiled timed steps. The step's wall time is split
into op self times by category:

- ``matmul``: ``aten::mm/addmm/bmm/baddbmm/linear/matmul`` and their autograd nodes;
- ``attention``: SDPA (the per-example flash kernel, forward and backward);
- ``elementwise_norm_activation``: pointwise, reductions, RMSNorm, SiLU, RoPE, casts;
- ``optimizer``: ops under ``Optimizer.step`` (AdamW, run inside backward for full);
- ``loss``: non-matmul ops of the chunked LM-head cross-entropy (its GEMMs are ``matmul``);
- ``memory_layout``: copies, cat, slicing, embedding lookup/backward, allocation, zeroing;
- ``autograd_engine``: the self time of autograd nodes and of the engine's per-node frames;
- ``outside_ops``: step wall time minus every op's self time (Python, dispatch, hooks).

The matmul kernels' FLOPs come from their recorded shapes; their achieved GFLOP/s over
their own self time, against the fp32 peak measured as ``train_peers`` does, gives the
identity this script exists for::

    hardware MFU = (matmul time / step time) x (matmul GFLOP/s / peak)

``hardware_mfu`` counts the FLOPs the kernels ran; ``profiled.mfu``/``unprofiled.mfu`` are
``train_peers``' figure (``flops_per_token``: the model's FLOPs, the LM head at every
position), which is higher for sftlab because its loss runs the head at labelled positions
only.

``--shape-bench`` also times the step's most expensive GEMM shapes alone (random inputs,
the same shapes), which separates "this shape is slow on this CPU" from "slow in the step".

Prints ONE JSON line (the last line of stdout: the training run prints its own lines
first). Run one method at a time, on a quiet machine::

    python bench/profile_train.py --mode full --trace /tmp/full.json
    python bench/profile_train.py --mode lora --peak-gflops 159.6 --shape-bench
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import train_peers  # noqa: E402  (the peer comparison: workloads, peak, FLOPs per token)
import train_vs_trl  # noqa: E402  (sftlab's worker: its config and run)

NODE_PREFIX = "autograd::engine::evaluate_function: "
MATMUL_KERNELS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
MATMUL_WRAPPERS = {"aten::linear", "aten::matmul"}
MATMUL_NODES = ("MmBackward", "AddmmBackward", "BmmBackward", "BaddbmmBackward",
                "LinearBackward", "MatmulBackward")
ATTENTION_MARKS = ("scaled_dot_product", "flash_attention", "ScaledDotProduct")
LAYOUT_OPS = {"copy_", "cat", "to", "_to_copy", "slice", "select", "view", "reshape",
              "transpose", "t", "contiguous", "clone", "empty", "empty_like", "empty_strided",
              "zeros", "zeros_like", "zero_", "fill_", "full", "full_like", "index",
              "index_select", "index_put_", "_index_put_impl_", "embedding",
              "embedding_backward", "embedding_dense_backward", "unsqueeze", "squeeze",
              "expand", "as_strided", "split", "narrow", "unbind", "stack", "new_zeros",
              "new_empty", "detach", "detach_", "alias", "_unsafe_view", "unsafe_split",
              "permute", "resize_", "set_", "_reshape_alias", "lift_fresh", "item",
              "_local_scalar_dense", "masked_fill", "arange", "tensor", "scalar_tensor",
              "gather", "scatter_add_", "split_with_sizes", "chunk", "flatten"}
LOSS_SCOPE = "profile::linear_cross_entropy"
OPTIMIZER_SCOPE = "Optimizer.step"


def main() -> None:
    args = parse_args()
    train_peers.wait_quiet(args.quiet_frac, args.max_wait)
    peak = args.peak_gflops or train_peers.measure_peak()
    if not peak:
        raise SystemExit("no fp32 peak: peak_flops.py failed; pass --peak-gflops")
    meter = train_peers.peer_model().ContentionMeter()  # others' CPU share during training
    os.environ["BENCH_PEAK_FP32_GFLOPS"] = str(peak)  # the worker's own 6N MFU uses it
    torch.set_num_threads(args.threads or torch.get_num_threads())
    recorder = StepRecorder(first=args.warmup + args.steps, count=args.profile_steps)
    recorder.install()
    worker = train_vs_trl.run_sftlab(worker_args(args))
    report = analyse(recorder, args, peak, worker)
    report.update(meter.stop())
    if args.shape_bench:
        sizes = {"T": recorder.stats[-1]["tokens"], "N": recorder.stats[-1]["labelled"]}
        report["matmul_shape_bench"] = shape_bench(report["matmul_by_shape"][:8], peak, sizes)
    if args.trace:
        recorder.profiler.export_chrome_trace(args.trace)
        report["trace"] = args.trace
    print(json.dumps(report), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="full", choices=["full", "lora"])
    parser.add_argument("--workload", default="short", choices=sorted(train_peers.WORKLOADS))
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps without the profiler")
    parser.add_argument("--profile-steps", type=int, default=3, help="timed steps under it, after")
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="fp32 peak to use; 0: measure it as train_peers does (~40 s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--release-memory", type=int, default=1, choices=[0, 1])
    parser.add_argument("--trace", default="", help="also write a chrome trace of the profiled steps")
    parser.add_argument("--shape-bench", action="store_true",
                        help="time the 8 costliest GEMM shapes alone (a few seconds)")
    parser.add_argument("--top", type=int, default=15, help="ops listed by self CPU time")
    parser.add_argument("--quiet-frac", type=float, default=0.10,
                        help="first wait until other processes use less than this CPU share")
    parser.add_argument("--max-wait", type=float, default=300, help="longest wait for quiet, seconds")
    return parser.parse_args()


def worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace ``run_sftlab`` reads, from the peer defaults plus the workload's flags
    (as ``train_peers`` builds the worker's command line)."""
    peer = argparse.ArgumentParser(add_help=False)
    train_peers.peer_model().add_common_args(peer)
    ns = peer.parse_args(train_peers.WORKLOADS[args.workload])
    ns.steps, ns.warmup = args.steps + args.profile_steps, args.warmup
    ns.mode, ns.loss, ns.release_memory = args.mode, "chunked", args.release_memory
    return ns


class StepRecorder:
    """Wraps sftlab's ``train_step`` (the loop calls it through the module): records each
    step's end time and stats, and runs the profiler over steps ``first+1 .. first+count``.

    Every window is measured between the ends of two ``train_step`` calls, so a step
    includes its batch building, logging and bookkeeping, as the loop's own step time does.
    The LM-head loss is wrapped in a ``record_function`` scope so its ops can be told apart.
    """

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.ends: list[float] = []
        self.stats: list[dict] = []
        self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        self.window: tuple[float, float] | None = None
        self._started = 0.0

    def install(self) -> None:
        from sftlab.train import loss, sft

        inner_step, inner_loss = sft.train_step, loss.linear_cross_entropy

        def train_step(run, batches):
            stats = inner_step(run, batches)
            self._after_step(stats)
            return stats

        def linear_cross_entropy(*a, **k):
            with record_function(LOSS_SCOPE):
                return inner_loss(*a, **k)

        sft.train_step, loss.linear_cross_entropy = train_step, linear_cross_entropy

    def _after_step(self, stats: dict) -> None:
        now = time.perf_counter()
        self.ends.append(now)
        self.stats.append({k: stats[k] for k in ("tokens", "labelled", "loss")})
        # page faults: memory handed back to the OS is faulted in again on its next use
        self.stats[-1]["minor_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        done = len(self.ends)
        if done == self.first:
            self.profiler.start()
            self._started = time.perf_counter()
        elif done == self.first + self.count:
            self.window = (self._started, now)
            self.profiler.stop()


# -- analysis --------------------------------------------------------------------------

def analyse(rec: StepRecorder, args, peak: float, worker: dict) -> dict:
    if rec.window is None:
        raise SystemExit(f"the run ended after {len(rec.ends)} steps, before the profiled ones")
    events = rec.profiler.events()
    wall_us = (rec.window[1] - rec.window[0]) * 1e6
    per_step = args.profile_steps
    ops = [e for e in events if not e.is_user_annotation]
    by_category: dict[str, float] = defaultdict(float)
    for event in ops:
        by_category[category(event)] += event.self_cpu_time_total
    by_category["outside_ops"] = wall_us - sum(e.self_cpu_time_total for e in ops)
    profiled = rec.stats[rec.first:rec.first + rec.count]
    names = {**{s["labelled"]: "N" for s in profiled}, **{s["tokens"]: "T" for s in profiled}}
    matmul = matmul_summary(ops, names)
    attention = attention_flops(ops)
    prof_tokens = sum(s["tokens"] for s in rec.stats[rec.first:rec.first + rec.count])
    plain_tokens = sum(s["tokens"] for s in rec.stats[args.warmup:rec.first])
    plain_s = rec.ends[rec.first - 1] - rec.ends[args.warmup - 1] if args.warmup else None
    n_trainable = worker.get("n_trainable_params", 0)
    model_flops = train_peers.flops_per_token(args.mode, args.workload, n_trainable)
    wall_s = wall_us / 1e6
    matmul_s = matmul["kernel_self_s"]
    threads = sorted({e.thread for e in ops})
    return {
        "benchmark": "profile_train", "mode": args.mode, "workload": args.workload,
        "torch_threads": torch.get_num_threads(), "event_threads": len(threads),
        "peak_fp32_gflops": peak, "warmup": args.warmup,
        "unprofiled": step_figures(plain_s, args.steps, plain_tokens, model_flops, peak),
        "profiled": step_figures(wall_s, per_step, prof_tokens, model_flops, peak),
        "step_s_from_2nd": [round(b - a, 3) for a, b in zip(rec.ends, rec.ends[1:])],
        "step_tokens": [s["tokens"] for s in rec.stats],
        "step_labelled": [s["labelled"] for s in rec.stats],
        "minor_faults_per_step": [b["minor_faults"] - a["minor_faults"]
                                  for a, b in zip(rec.stats, rec.stats[1:])],
        "profiler_overhead_frac": (round(wall_s / per_step / (plain_s / args.steps) - 1, 3)
                                   if plain_s else None),
        "step_time_s": round(wall_s / per_step, 4),
        "time_by_category_s_per_step": {k: round(v / 1e6 / per_step, 4)
                                        for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "time_by_category_frac": {k: round(v / wall_us, 4)
                                  for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "matmul_flops_per_step": matmul["flops"] / per_step,
        "matmul_kernel_s_per_step": round(matmul_s / per_step, 4),
        "matmul_gflops": round(matmul["flops"] / matmul_s / 1e9, 2),
        "matmul_frac_of_peak": round(matmul["flops"] / matmul_s / 1e9 / peak, 4),
        "matmul_time_frac_of_step": round(matmul_s / wall_s, 4),
        "hardware_mfu": round(matmul["flops"] / wall_s / 1e9 / peak, 4),
        "model_flops_per_step": round(model_flops * prof_tokens / per_step),
        "attention": {**attention, "flops_per_step": attention["flops"] / per_step,
                      "gflops": round(attention["flops"] / max(by_category["attention"], 1) / 1e3, 2)},
        "matmul_by_shape": matmul["by_shape"],
        "matmul_calls_per_step": matmul["calls"] / per_step,
        "ops_per_step": round(len(ops) / per_step),
        "top_ops_self_cpu": top_ops(ops, args.top, wall_us, per_step),
        "worker": {k: worker.get(k) for k in ("trained_tokens_per_s", "seconds_per_step",
                                              "n_trainable_params", "final_loss", "peak_rss_mib")},
    }


def step_figures(seconds: float | None, steps: int, tokens: int, flops_per_token: float,
                 peak: float) -> dict | None:
    """Tokens/s and the MFU ``train_peers`` reports (model FLOPs per trained token)."""
    if not seconds or not steps:
        return None
    return {"steps": steps, "s_per_step": round(seconds / steps, 4), "tokens": tokens,
            "trained_tokens_per_s": round(tokens / seconds, 2),
            "mfu": round(flops_per_token * tokens / seconds / (peak * 1e9), 4)}


def node_name(name: str) -> str:
    return name[len(NODE_PREFIX):] if name.startswith(NODE_PREFIX) else name


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def category(event) -> str:
    """The category one op's self time counts in (see the module docstring)."""
    name = event.name
    base = node_name(name)
    if name in MATMUL_KERNELS or name in MATMUL_WRAPPERS or base.startswith(MATMUL_NODES):
        return "matmul"
    if any(mark in name for mark in ATTENTION_MARKS):
        return "attention"
    scopes = [a.name for a in ancestors(event)]
    if any(s.startswith(OPTIMIZER_SCOPE) for s in scopes):
        return "optimizer"
    if LOSS_SCOPE in scopes or "_LinearCrossEntropyBackward" in base:
        return "loss"
    if name.startswith(NODE_PREFIX) or base.endswith(("Backward0", "Backward1", "Backward")):
        return "autograd_engine"
    short = name.split("::", 1)[-1]
    if short in LAYOUT_OPS:
        return "memory_layout"
    if name.startswith("aten::"):
        return "elementwise_norm_activation"
    return "other"


def matmul_flops(name: str, shapes: list) -> float:
    """2*M*K*N (times the batch) from an mm/addmm/bmm call's recorded input shapes."""
    dims = [s for s in shapes if isinstance(s, list) and len(s) >= 2]
    if name in ("aten::mm", "aten::bmm"):
        a, b = dims[0], dims[1]
    else:  # addmm(self, mat1, mat2) / baddbmm(self, b1, b2); self may be 1-D (bias)
        a, b = dims[-2], dims[-1]
    batch = a[0] if len(a) == 3 else 1
    m, k, n = a[-2], a[-1], b[-1]
    return 2.0 * batch * m * k * n


def matmul_summary(ops, names: dict) -> dict:
    """FLOPs and self time of the GEMM kernels, in total and per (op, shape); a dimension
    in ``names`` (a profiled step's token count "T", labelled positions "N") is shown by
    that name, so the shapes of different steps group together."""
    shapes: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for event in ops:
        if event.name not in MATMUL_KERNELS:
            continue
        try:
            flops = matmul_flops(event.name, event.input_shapes)
        except (IndexError, TypeError):
            flops = 0.0
        dims = [[names.get(d, d) for d in s] for s in event.input_shapes
                if isinstance(s, list) and len(s) >= 2][-2:]
        row = shapes[(event.name, json.dumps(dims))]
        row[0] += 1
        row[1] += flops
        row[2] += event.self_cpu_time_total
    total_flops = sum(r[1] for r in shapes.values())
    total_us = sum(r[2] for r in shapes.values())
    rows = sorted(shapes.items(), key=lambda kv: -kv[1][2])
    return {"flops": total_flops, "kernel_self_s": total_us / 1e6,
            "calls": sum(r[0] for r in shapes.values()),
            "by_shape": [{"op": op, "shapes": json.loads(dims), "calls": calls,
                          "time_frac_of_matmul": round(us / total_us, 4),
                          "gflops": round(flops / us / 1e3, 2) if us else None}
                         for (op, dims), (calls, flops, us) in rows[:12]]}


def attention_flops(ops) -> dict:
    """Causal attention's useful FLOPs (QK^T and AV on the lower triangle, backward 2x), so
    the same count as ``train_peers.flops_per_token``."""
    forward = 0.0
    calls = 0
    for event in ops:
        if event.name != "aten::_scaled_dot_product_flash_attention_for_cpu":
            continue
        q = event.input_shapes[0]  # [B, heads, L, D]
        batch, heads, length, dim = q
        forward += 4.0 * batch * heads * dim * length * (length + 1) / 2
        calls += 1
    return {"calls": calls, "flops": 3 * forward}


def top_ops(ops, top: int, wall_us: float, steps: int) -> list[dict]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in ops:
        row = totals[event.name]
        row[0] += 1
        row[1] += event.self_cpu_time_total
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"op": name, "category": category_of_name(name, ops), "calls_per_step": calls / steps,
             "self_s_per_step": round(us / 1e6 / steps, 4), "frac_of_step": round(us / wall_us, 4),
             "callers": callers(name, ops, wall_us)}
            for name, (calls, us) in rows]


def callers(name: str, ops, wall_us: float, top: int = 3) -> dict:
    """Where an op's self time comes from: its nearest autograd node (backward) or named
    scope, else its parent op, with the share of the step each one takes."""
    times: dict[str, float] = defaultdict(float)
    for event in ops:
        if event.name == name:
            times[caller(event)] += event.self_cpu_time_total
    rows = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return {who: round(us / wall_us, 4) for who, us in rows}


def caller(event) -> str:
    first = None
    for parent in ancestors(event):
        base = node_name(parent.name)
        if parent.name.startswith(NODE_PREFIX) or parent.name.startswith(OPTIMIZER_SCOPE) \
                or parent.name == LOSS_SCOPE:
            return base
        first = first or base
    return first or "(top level)"


def category_of_name(name: str, ops) -> str:
    """The category most of an op name's self time counts in (an op can be in several)."""
    times: dict[str, float] = defaultdict(float)
    for event in ops:
        if event.name == name:
            times[category(event)] += event.self_cpu_time_total
    return max(times, key=times.get)


def shape_bench(rows: list[dict], peak: float, sizes: dict, seconds: float = 0.5) -> list[dict]:
    """Each GEMM shape alone (``a [M, K] @ b [K, N]``, b a transposed ``[N, K]`` as a
    weight is; bmm batched the same), repeated for ``seconds``: its GFLOP/s on this CPU.
    ``sizes`` gives the named dimensions ("T", "N") the last profiled step's values."""
    out = []
    for row in rows:
        a_shape, b_shape = ([sizes.get(d, d) for d in dims] for dims in row["shapes"])
        a = torch.randn(*a_shape)
        b = torch.randn(*b_shape[:-2], b_shape[-1], b_shape[-2]).transpose(-1, -2)
        flops = 2.0 * a.numel() * b_shape[-1]
        op = torch.bmm if a.dim() == 3 else torch.mm
        op(a, b)
        times = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 5:
            t0 = time.perf_counter()
            op(a, b)
            times.append(time.perf_counter() - t0)
        rate = flops / statistics.median(times) / 1e9
        out.append({"op": row["op"], "shapes": row["shapes"], "in_step_gflops": row["gflops"],
                    "alone_gflops": round(rate, 2), "alone_frac_of_peak": round(rate / peak, 4)})
    return out


if __name__ == "__main__":
    main()
