"""sftlab's training engine vs TRL's SFTTrainer on the same workload, in the same run.

The workload is the peer benchmark's (``../shared/peer-bench``, imported at run time so it
is identical, not copied): a random SmolLM2-135M-shaped Llama, synthetic prompt+response
examples of 32-128 tokens with labels on the response, batch 4, AdamW lr 1e-4 constant,
no clipping, fp32, 2 warm-up + 10 timed steps, sequential order. TRL runs as the peer's
own runner (``trl_sft.py --mode full|lora --json``); sftlab runs as this script's worker
(``--worker``) with the same model, data, order, batch and optimizer. Runs alternate
(TRL, sftlab, sftlab, TRL, ...) over ``--rounds`` rounds, each in a fresh process, and the
script prints ONE JSON line: per mode, each side's trained tokens/s, peak RSS and losses,
and the paired (same-round) ratios.

sftlab's settings (all ordinary config keys): ``data.padding_free`` (each batch is one
row: the same 4 examples, no padding, attention isolated per example), the LM head only at
labelled positions without a full logits tensor, fused AdamW, and for full fine-tuning
``optim.in_backward`` (each parameter is updated as soon as its gradient is complete, so
the model's gradients never all exist at once; same AdamW math), per-example attention in
the padding-free row, and ``release_memory`` (on by default; ``--release-memory 0`` turns
it off: slightly faster steps, higher peak RSS). A ``full_logits`` run of
sftlab (the plain ``model(...).logits`` cross-entropy instead of the chunked head) shows
what the chunked loss saves in peak memory.

    python bench/train_vs_trl.py --rounds 2                 # the comparison (minutes)
    python bench/train_vs_trl.py --worker --mode lora --steps 3 --warmup 1   # one sftlab run
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

PEER = Path(os.environ.get("SFTLAB_PEER_BENCH", Path(__file__).resolve().parents[2] / "shared" / "peer-bench"))
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--worker", action="store_true", help="run sftlab once, print its JSON")
    parser.add_argument("--mode", default="full", choices=["full", "lora", "qlora"],
                        help="qlora: the worker only (the peer benchmark's TRL runner has no 4-bit mode)")
    parser.add_argument("--loss", default="chunked", choices=["chunked", "full_logits"],
                        help="worker: the LM-head loss implementation")
    parser.add_argument("--no-memory-demo", action="store_true",
                        help="skip the full-logits memory comparison run")
    parser.add_argument("--release-memory", type=int, default=1, choices=[0, 1],
                        help="sftlab's release_memory setting (default 1, as in sftlab: memory "
                             "freed in the forward pass goes back to the OS every 5 layers)")
    peer_args = argparse.ArgumentParser(add_help=False)
    _peer_model().add_common_args(peer_args)
    for action in peer_args._actions:
        if action.dest != "json":
            parser._add_action(action)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_sftlab(args)), flush=True)
        return
    print(json.dumps(compare(args)), flush=True)


def _peer_model():
    sys.path.insert(0, str(PEER))
    import model as peer  # the peer benchmark's model.py: build_model, make_dataset, summarize

    return peer


def _workload_flags(args) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
            str(args.batch_size), "--min-len", str(args.min_len), "--max-len", str(args.max_len),
            "--attn", args.attn]


# -- the sftlab side ------------------------------------------------------------------------

def run_sftlab(args) -> dict:
    """Train with sftlab's loop on the peer workload; the result in the peer's JSON shape."""
    import torch

    peer = _peer_model()
    from sftlab.config import build_config
    from sftlab.train.config import TrainConfig
    from sftlab.train.sft import train
    from sftlab.types import Tokenized

    started = time.perf_counter()
    rows = peer.make_dataset(peer.n_examples_needed(args.batch_size, args.warmup, args.steps),
                             args.min_len, args.max_len)
    examples = [Tokenized(r["input_ids"], r["labels"], id=str(i)) for i, r in enumerate(rows)]
    model = peer.build_model(args.attn)
    n_total = peer.n_params(model)
    settings = {
        "method": {"name": args.mode, "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.0}},
        "optim": {"name": "adamw", "lr": peer.LR, "schedule": "constant", "weight_decay": 0.0,
                  "max_grad_norm": 0.0, "implementation": "fused",
                  "in_backward": args.mode == "full"},
        "data": {"padding_free": True, "shuffle": False},
        "batch_size": args.batch_size, "max_steps": args.warmup + args.steps,
        "seed": peer.MODEL_SEED, "output_dir": f"/tmp/sftlab-bench-{os.getpid()}",
        "save_model": False, "plot": False, "progress": False, "log_every": 1,
        "release_memory": bool(args.release_memory),
    }
    config = build_config(TrainConfig, settings)
    if args.loss == "full_logits":
        _use_full_logits_loss()
    result = train(config, model=model, tokenizer=peer.make_tokenizer(), train_examples=examples)
    timed = [r for r in result.history if "loss" in r][args.warmup:]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = peer.summarize(
        f"sftlab:{args.mode}", [r["step_time_s"] for r in timed],
        [(r["tokens"], r["padded_tokens"], r["labelled_tokens"]) for r in timed],
        [r["loss"] for r in timed], n_total, n_trainable, warmup=args.warmup,
        extra={"mode": args.mode, "loss_impl": args.loss, **peer.workload_info(args),
               "release_memory": bool(args.release_memory),
               "setup_and_train_s": round(time.perf_counter() - started, 2),
               "torch_threads": torch.get_num_threads()})
    return summary


def _use_full_logits_loss() -> None:
    """Swap the chunked LM-head loss for the plain one (full logits), for the memory demo."""
    from sftlab.train import loss

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        total = loss.reference_loss_sum(self.model, input_ids, labels, attention_mask, position_ids)
        return total, (loss.next_token_targets(labels, position_ids) != -100).sum()

    loss.CausalLMLoss.forward = forward


# -- the comparison -------------------------------------------------------------------------

def _run_json(command: list[str], cwd: Path) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            result = json.loads(line)
            result["process_wall_s"] = round(time.perf_counter() - started, 1)
            return result
    return {"error": done.stderr[-2000:], "returncode": done.returncode}


def compare(args) -> dict:
    flags = _workload_flags(args)
    modes = [m for m in args.modes.split(",") if m]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for round_index in range(args.rounds):
        for mode in modes:
            trl = [sys.executable, str(PEER / "trl_sft.py"), "--mode", mode, "--json", *flags]
            ours = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode,
                    "--release-memory", str(args.release_memory), *flags]
            order = [("trl", trl), ("sftlab", ours)]
            if round_index % 2:  # alternate who runs first: the machine's speed drifts
                order.reverse()
            pair = {name: _run_json(command, PEER) for name, command in order}
            pair["round"] = round_index + 1
            runs[mode].append(pair)
            print(json.dumps({"progress": f"round {round_index + 1} {mode}",
                              **{k: _short(v) for k, v in pair.items() if k != "round"}}),
                  file=sys.stderr, flush=True)
    workload = {k: getattr(args, k) for k in ("rounds", "modes", "steps", "warmup", "batch_size",
                                              "min_len", "max_len", "attn", "release_memory")}
    report = {"benchmark": "train_vs_trl", "workload": {**workload, "peer_bench": str(PEER)},
              "modes": {m: summarize_mode(runs[m]) for m in modes}}
    if not args.no_memory_demo:
        demo = memory_demo(args, modes, flags)
        for mode in modes:
            chunked = report["modes"][mode].get("sftlab", {}).get("peak_rss_mib")
            demo[mode]["chunked_median"] = statistics.median(chunked) if chunked else None
        report["chunked_vs_full_logits_peak_rss_mib"] = demo
    return report


def memory_demo(args, modes, flags) -> dict:
    """Peak RSS of sftlab with the chunked LM-head loss vs the full-logits loss (one run each)."""
    out = {}
    for mode in modes:
        full = _run_json([sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode,
                          "--loss", "full_logits", "--release-memory", str(args.release_memory),
                          *flags], PEER)
        out[mode] = {"full_logits": full.get("peak_rss_mib"),
                     "full_logits_final_loss": full.get("final_loss"), "error": full.get("error")}
    return out


def _short(result: dict) -> dict:
    keys = ("trained_tokens_per_s", "peak_rss_mib", "final_loss", "padding_fraction", "error")
    return {k: result.get(k) for k in keys if k in result}


def summarize_mode(pairs: list[dict]) -> dict:
    """Medians per side and the median of same-round ratios (sftlab / TRL)."""
    ok = [p for p in pairs if "error" not in p["trl"] and "error" not in p["sftlab"]]
    errors = [{k: p[k].get("error") for k in ("trl", "sftlab") if "error" in p[k]}
              for p in pairs if p not in ok]
    if not ok:
        return {"error": errors}
    side = {}
    for name in ("trl", "sftlab"):
        results = [p[name] for p in ok]
        side[name] = {
            "trained_tokens_per_s": [r["trained_tokens_per_s"] for r in results],
            "peak_rss_mib": [r["peak_rss_mib"] for r in results],
            "padding_fraction": results[0]["padding_fraction"],
            "losses": results[0]["losses"],
            # CPU share other processes took during the timed steps (TRL's runner measures it)
            "other_procs_cpu_frac": [r.get("other_procs_cpu_frac") for r in results],
        }
    speed = [p["sftlab"]["trained_tokens_per_s"] / p["trl"]["trained_tokens_per_s"] for p in ok]
    memory = [p["sftlab"]["peak_rss_mib"] / p["trl"]["peak_rss_mib"] for p in ok]
    trl_losses, our_losses = side["trl"]["losses"], side["sftlab"]["losses"]
    loss_diff = max((abs(a - b) for a, b in zip(trl_losses, our_losses)), default=None)
    return {**side,
            "speed_ratio_per_round": [round(x, 3) for x in speed],
            "speed_ratio_median": round(statistics.median(speed), 3),
            "peak_rss_ratio_per_round": [round(x, 3) for x in memory],
            "peak_rss_ratio_median": round(statistics.median(memory), 3),
            "max_abs_loss_diff": loss_diff, "errors": errors}


if __name__ == "__main__":
    main()
