"""The longest single sequence one training step fits under a peak-RSS cap: sftlab vs TRL.

What it measures: ONE optimizer step on ONE example of ``L`` tokens (batch 1, labels on
the second half, fp32, 2 threads, gradient checkpointing on), full fine-tuning and LoRA,
on the peer benchmark's random SmolLM2-135M-shaped Llama (``../shared/peer-bench/model.py``
``build_model``, imported at run time). Each (side, method, L) runs in a FRESH process
(``--worker``), which reports its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``: model
build, optimizer state and the step together) and the step's seconds.

Sides:
  sftlab  sftlab's loop (``sftlab.train.sft.train``) with the settings of
          ``bench/train_vs_trl.py`` (chunked LM head on labelled positions, fused AdamW,
          ``optim.in_backward`` for full, ``release_memory``) plus
          ``gradient_checkpointing: true``, ``threads: 2``. The one example is a batch of
          its own, so ``data.padding_free`` is off by default: padding-free collation builds
          a ``[L, L]`` boolean block mask (L^2 bytes, 1 GiB at 32k tokens) that a single
          example does not need; ``--sftlab-padding-free`` measures it on.
  trl     TRL's ``SFTTrainer`` as the peer runner ``trl_sft.py`` configures it (fp32,
          lr 1e-4 constant, no clipping, ``adamw_torch``; LoRA r=16, alpha=32 on all seven
          projections) with ``gradient_checkpointing=True`` (TRL's default), from this
          script's worker so both sides train the very same example.

A step at 30k+ tokens takes many minutes on a 2-core CPU, so by default the script measures
a few short lengths, fits ``peak RSS = a + b*L`` (and ``+ c*L^2`` when 3+ points show
curvature) per side and method, and reports the longest ``L`` whose predicted peak is under
the cap: EXTRAPOLATED from the fitted points, not measured. Only points at
``L >= --fit-from`` (sftlab 2048, TRL 4096) enter the fit: both LM heads work in tiles whose size grows with
``L`` up to a ceiling, so shorter points have a steeper slope than the long tail. sftlab
projects 1024 labelled positions at a time (``[1024, 49152]`` fp32, 192 MiB, reached at
L = 2048 with labels on half); TRL 1.16's fused LM head projects every position, off GPU,
in ``[4096, 32768]`` tiles (512 MiB, reached at L = 4097). ``--bisect`` measures instead:
it doubles ``L`` from the prediction's neighbourhood and bisects to ``--bisect-tokens``
resolution, each try a fresh process killed as soon as its RSS passes the cap (hours).

Every worker is watched: a process whose RSS passes ``--kill-gib`` (default the cap + 1) is
killed and reported as not fitting, so a bad guess cannot exhaust the machine.

    python bench/long_context.py --save                 # 4096,6144,2048 tokens; ~20 min
    python bench/long_context.py --lengths 4096,8192 --save   # a longer lever arm, ~40 min
    python bench/long_context.py --bisect --sides sftlab --methods lora   # real search, slow
    python bench/long_context.py --worker --side sftlab --method full --length 1024
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

PEER = Path(os.environ.get("SFTLAB_PEER_BENCH", Path(__file__).resolve().parents[2] / "shared" / "peer-bench"))
REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "long_context.json"
THREADS = 2
# Shortest L whose LM-head tile is at its ceiling (module docstring): the fits start there
FIT_FROM = {"sftlab": 2048, "trl": 4096}
MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,6144,2048",
                        help="tokens per measured step, measured in this order")
    parser.add_argument("--fit-from", type=int, default=0,
                        help="fit only points with L >= this (default per side: "
                             "sftlab 2048, trl 4096; below it the LM-head tiles still grow)")
    parser.add_argument("--sides", default="sftlab,trl")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--cap-gib", type=float, default=8.0, help="peak-RSS budget")
    parser.add_argument("--kill-gib", type=float, default=None,
                        help="kill a worker whose RSS passes this (default: cap + 1 GiB; "
                             "with --bisect: the cap)")
    parser.add_argument("--sftlab-padding-free", action="store_true",
                        help="sftlab with data.padding_free (adds an [L, L] mask)")
    parser.add_argument("--bisect", action="store_true", help="measure the longest L (slow)")
    parser.add_argument("--bisect-tokens", type=int, default=1024, help="bisection resolution")
    parser.add_argument("--save", action="store_true", help=f"write {RESULT.relative_to(REPO)}")
    parser.add_argument("--worker", action="store_true", help="run one step, print its JSON")
    parser.add_argument("--side", choices=["sftlab", "trl"], default="sftlab")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)), flush=True)
        return
    report = bisect_all(args) if args.bisect else extrapolate_all(args)
    line = json.dumps(report)
    print(line, flush=True)
    if args.save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(line + "\n")


# -- one step in this process ---------------------------------------------------------------

def long_example(length: int) -> tuple[list[int], list[int]]:
    """``length`` token ids (BOS, random ids from the peer's data generator, EOS) and labels
    that train the second half only (-100 on the first ``length // 2`` positions)."""
    peer = _peer_model()
    row = peer.make_dataset(1, length, length)[0]
    ids = row["input_ids"]
    half = length // 2
    return ids, [-100] * half + ids[half:]


def run_worker(args) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    run = run_sftlab_step if args.side == "sftlab" else run_trl_step
    result = run(args.method, args.length, args)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"side": args.side, "method": args.method, "length": args.length,
            "peak_rss_mib": round(peak_kib / 1024, 1), "threads": torch.get_num_threads(),
            **result}


def run_sftlab_step(method: str, length: int, args) -> dict:
    """One step of sftlab's loop with the ``train_vs_trl.py`` settings plus checkpointing."""
    peer = _peer_model()
    from sftlab.config import build_config
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train
    from sftlab.types import Tokenized

    ids, labels = long_example(length)
    settings = {
        "method": {"name": method, "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.0}},
        "optim": {"name": "adamw", "lr": peer.LR, "schedule": "constant", "weight_decay": 0.0,
                  "max_grad_norm": 0.0, "implementation": "fused",
                  "in_backward": method == "full"},
        "data": {"padding_free": bool(args.sftlab_padding_free), "shuffle": False},
        "batch_size": 1, "max_steps": 1, "gradient_checkpointing": True, "threads": THREADS,
        "seed": peer.MODEL_SEED, "output_dir": f"/tmp/sftlab-long-{os.getpid()}",
        "save_model": False, "plot": False, "progress": False, "log_every": 1,
    }
    model = peer.build_model("sdpa")
    result = train(build_config(TrainConfig, settings), model=model,
                   tokenizer=peer.make_tokenizer(), train_examples=[Tokenized(ids, labels, id="0")])
    step = [r for r in result.history if "loss" in r][0]
    return {"step_s": round(step["step_time_s"], 2), "loss": round(step["loss"], 4),
            "padding_free": bool(args.sftlab_padding_free)}


def run_trl_step(method: str, length: int, args) -> dict:
    """One step of TRL's SFTTrainer configured as the peer runner does, checkpointing on."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    import tempfile

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    peer = _peer_model()
    ids, labels = long_example(length)
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                                 task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"])
    config = SFTConfig(
        output_dir=os.path.join(tempfile.gettempdir(), f"trl-long-{os.getpid()}"),
        per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=1,
        learning_rate=peer.LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, optim="adamw_torch", bf16=False, fp16=False,
        gradient_checkpointing=True, packing=False, max_length=length,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
        seed=peer.MODEL_SEED, data_seed=peer.DATA_SEED)

    class StepTimer(TrainerCallback):
        """Wall time of the one step (forward, backward, optimizer), without setup."""

        def on_step_begin(self, *_, **__):
            self.begin = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds = time.perf_counter() - self.begin

    timer = StepTimer()
    trainer = SFTTrainer(model=peer.build_model("sdpa"), args=config,
                         train_dataset=Dataset.from_dict({"input_ids": [ids], "labels": [labels]}),
                         processing_class=peer.make_tokenizer(), peft_config=peft_config,
                         callbacks=[timer])
    output = trainer.train()
    return {"step_s": round(timer.seconds, 2), "loss": round(float(output.training_loss), 4)}


def _peer_model():
    if str(PEER) not in sys.path:
        sys.path.insert(0, str(PEER))
    import model as peer  # the peer benchmark's model.py: build_model, make_dataset, LR, seeds

    return peer


# -- fresh processes, watched ---------------------------------------------------------------

def measure(side: str, method: str, length: int, args, kill_mib: float) -> dict:
    """Run one worker; kill it if its RSS passes ``kill_mib`` (then ``fits`` is False)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--side", side,
               "--method", method, "--length", str(length)]
    if args.sftlab_padding_free:
        command.append("--sftlab-padding-free")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": str(THREADS)}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PEER, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    watch = {"killed": False, "max_seen_mib": 0.0}
    threading.Thread(target=_watch_rss, args=(process, kill_mib, watch), daemon=True).start()
    stdout, stderr = process.communicate()
    wall = round(time.perf_counter() - started, 1)
    if watch["killed"]:
        return {"side": side, "method": method, "length": length, "fits": False,
                "killed_above_mib": kill_mib, "process_wall_s": wall}
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            return {**json.loads(line), "process_wall_s": wall}
    return {"side": side, "method": method, "length": length, "error": stderr[-2000:],
            "returncode": process.returncode}


def _watch_rss(process: subprocess.Popen, kill_mib: float, watch: dict) -> None:
    """Poll the worker's VmRSS every 50 ms; SIGKILL it past ``kill_mib``."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            rss = int(fields["VmRSS"].split()[0]) / 1024
        except (OSError, KeyError, ValueError):
            rss = 0.0
        watch["max_seen_mib"] = max(watch["max_seen_mib"], rss)
        if rss > kill_mib:
            watch["killed"] = True
            process.kill()
            return
        time.sleep(0.05)


# -- fit and extrapolate --------------------------------------------------------------------

def fit(points: list[tuple[int, float]]) -> dict:
    """Least-squares ``rss_mib = a + b*L`` and, with 3+ points, ``a + b*L + c*L^2``.

    The quadratic is the one used for prediction only when its ``c`` is positive and it
    removes at least half of the linear fit's largest residual: a curvature the data shows,
    not noise that a 3-point quadratic always absorbs."""
    import numpy as np

    lengths = np.array([p[0] for p in points], dtype=float)
    rss = np.array([p[1] for p in points], dtype=float)
    linear = np.polyfit(lengths, rss, 1)
    linear_residual = float(np.max(np.abs(np.polyval(linear, lengths) - rss)))
    out = {"linear": {"a_mib": round(float(linear[1]), 1),
                      "b_kib_per_token": round(float(linear[0]) * 1024, 2),
                      "max_residual_mib": round(linear_residual, 1)},
           "used": "linear", "coefficients": [float(linear[1]), float(linear[0]), 0.0]}
    if len(points) >= 3:
        quad = np.polyfit(lengths, rss, 2)
        quad_residual = float(np.max(np.abs(np.polyval(quad, lengths) - rss)))
        out["quadratic"] = {"a_mib": round(float(quad[2]), 1),
                            "b_kib_per_token": round(float(quad[1]) * 1024, 2),
                            "c_kib_per_token2": float(quad[0]) * 1024,
                            "max_residual_mib": round(quad_residual, 1)}
        if quad[0] > 0 and quad_residual <= 0.5 * linear_residual and linear_residual > 20:
            out["used"] = "quadratic"
            out["coefficients"] = [float(quad[2]), float(quad[1]), float(quad[0])]
    return out


def longest_under(coefficients: list[float], cap_mib: float) -> int | None:
    """Largest ``L`` with ``a + b*L + c*L^2 <= cap`` (None when even L=0 is over or b<=0)."""
    a, b, c = coefficients
    if a > cap_mib or (c <= 0 and b <= 0):
        return None
    if c <= 0:
        return int((cap_mib - a) / b)
    return int((-b + (b * b + 4 * c * (cap_mib - a)) ** 0.5) / (2 * c))


def extrapolate_all(args) -> dict:
    """Every (side, method) at each length in turn (lengths outermost, in the given order),
    so an interrupted run still has every side and method at the first lengths."""
    lengths = [int(x) for x in args.lengths.split(",") if x]
    cap_mib = args.cap_gib * 1024
    kill_mib = (args.kill_gib or args.cap_gib + 1) * 1024
    points: dict[tuple[str, str], list[dict]] = {}
    for length in lengths:
        for method in _split(args.methods):
            for side in _split(args.sides):
                result = measure(side, method, length, args, kill_mib)
                print(json.dumps({"progress": result}), file=sys.stderr, flush=True)
                points.setdefault((method, side), []).append(result)
                if args.save:  # a partial file survives an interrupted run
                    RESULT.write_text(json.dumps(_extrapolated(points, args, cap_mib, True)) + "\n")
    return _extrapolated(points, args, cap_mib, partial=False)


def _extrapolated(points: dict, args, cap_mib: float, partial: bool) -> dict:
    runs: dict[str, dict] = {}
    for (method, side), measured in points.items():
        fit_from = args.fit_from or FIT_FROM[side]
        runs.setdefault(method, {})[side] = {
            "fit_from": fit_from,
            **summarize(sorted(measured, key=lambda p: p["length"]), cap_mib, fit_from)}
    for sides in runs.values():
        ours, theirs = (sides.get(s, {}).get("predicted_max_length") for s in ("sftlab", "trl"))
        if ours and theirs:
            sides["sftlab_over_trl_max_length"] = round(ours / theirs, 2)
    return {"benchmark": "long_context", "mode": "extrapolated", "partial": partial,
            **_workload(args, cap_mib),
            "note": "predicted_max_length is NOT measured: 'basis' says whether it is "
                    "interpolated between two measured points that bracket the cap or "
                    "extrapolated from the fit; run --bisect to measure it",
            "methods": runs}


def summarize(points: list[dict], cap_mib: float, fit_from: int) -> dict:
    """The measured points, the fit, and the predicted longest L under the cap.

    When a measured point is already over the cap the longest L lies between two measured
    points, and the prediction interpolates linearly between them (``basis``
    ``interpolated``; a worker killed past the kill threshold counts as being at it, so the
    result is then an upper bound). Otherwise it extrapolates the fit (``extrapolated``)."""
    out = {"points": [{k: p.get(k) for k in ("length", "peak_rss_mib", "step_s", "loss",
                                             "process_wall_s", "fits", "killed_above_mib",
                                             "error")
                       if p.get(k) is not None} for p in points]}
    measured = [(p["length"], p["peak_rss_mib"]) for p in points if "peak_rss_mib" in p]
    if len(measured) >= 2:  # every measured point, the short ones too: for comparison
        out["slope_all_points_kib_per_token"] = fit(measured)["linear"]["b_kib_per_token"]
    good = [p for p in points if "peak_rss_mib" in p and p["length"] >= fit_from]
    if len(good) >= 2:
        fitted = fit([(p["length"], p["peak_rss_mib"]) for p in good])
        out["fit"] = {"points_used": [p["length"] for p in good],
                      **{k: v for k, v in fitted.items() if k != "coefficients"}}
        out["slope_kib_per_token"] = fitted[fitted["used"]]["b_kib_per_token"]
        out["predicted_max_length"] = longest_under(fitted["coefficients"], cap_mib)
        out["basis"] = "extrapolated"
    bracket = _bracket(points, cap_mib)
    if bracket is not None:
        out.update(bracket)
    return out


def _bracket(points: list[dict], cap_mib: float) -> dict | None:
    """Linear interpolation between the longest point under the cap and the shortest over."""
    rss = {p["length"]: p.get("peak_rss_mib", p.get("killed_above_mib")) for p in points
           if "peak_rss_mib" in p or "killed_above_mib" in p}
    over = sorted(length for length, value in rss.items() if value > cap_mib)
    under = sorted(length for length, value in rss.items() if value <= cap_mib
                   and (not over or length < over[0]))
    if not over:
        return None
    high = over[0]
    if not under:
        return {"predicted_max_length": None, "basis": f"over the cap already at L={high}"}
    low = under[-1]
    slope = (rss[high] - rss[low]) / (high - low)
    killed = "peak_rss_mib" not in next(p for p in points if p["length"] == high)
    return {"predicted_max_length": int(low + (cap_mib - rss[low]) / slope),
            "basis": (f"interpolated between measured L={low} (under the cap) and L={high} "
                      f"(over{', killed: an upper bound' if killed else ''})"),
            "bracket_slope_kib_per_token": round(slope * 1024, 2)}


# -- bisection (measured) -------------------------------------------------------------------

def bisect_all(args) -> dict:
    """Per side and method: the longest L (to ``--bisect-tokens``) whose step stays under the
    cap, every try a fresh process killed at the cap. Starts from the first of ``--lengths``
    and doubles until a try fails."""
    cap_mib = args.cap_gib * 1024
    kill_mib = (args.kill_gib or args.cap_gib) * 1024
    found: dict[str, dict[str, dict]] = {}
    for method in _split(args.methods):
        for side in _split(args.sides):
            found.setdefault(method, {})[side] = bisect_one(side, method, args, cap_mib, kill_mib)
    for method, sides in found.items():
        ours, theirs = (sides.get(s, {}).get("max_length") for s in ("sftlab", "trl"))
        if ours and theirs:
            sides["sftlab_over_trl_max_length"] = round(ours / theirs, 2)
    return {"benchmark": "long_context", "mode": "bisect", **_workload(args, cap_mib),
            "bisect_tokens": args.bisect_tokens, "methods": found}


def bisect_one(side: str, method: str, args, cap_mib: float, kill_mib: float) -> dict:
    tries: list[dict] = []

    def fits(length: int) -> bool:
        result = measure(side, method, length, args, kill_mib)
        print(json.dumps({"progress": result}), file=sys.stderr, flush=True)
        tries.append({k: result.get(k) for k in ("length", "peak_rss_mib", "step_s", "fits")})
        return result.get("peak_rss_mib", float("inf")) <= cap_mib

    low, high = 0, int(args.lengths.split(",")[0])
    while fits(high):
        low, high = high, high * 2
    while high - low > args.bisect_tokens:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"max_length": low or None, "first_failing_length": high, "tries": tries}


def _workload(args, cap_mib: float) -> dict:
    return {"cap_mib": cap_mib, "batch_size": 1, "labels": "second half", "dtype": "float32",
            "threads": THREADS, "gradient_checkpointing": True, "attn": "sdpa",
            "sftlab_padding_free": bool(args.sftlab_padding_free), "peer_bench": str(PEER)}


def _split(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


if __name__ == "__main__":
    main()
