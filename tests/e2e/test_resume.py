"""A run killed with SIGKILL after a checkpoint and resumed with ``--resume`` ends exactly
like an uninterrupted run: same loss curve, bitwise-identical final weights (CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

STEPS, SAVE_EVERY, KILL_AFTER = 40, 4, 8


def _command(shared_data, out, *extra):
    # 48 examples / batch 2 = 24 steps per epoch: the run crosses an epoch boundary
    return [sys.executable, "-m", "sftlab", "train",
            f"data.paths={shared_data / 'formats' / 'alpaca_en_demo.json'}", "data.limit=48",
            "data.max_length=96", "batch_size=2", "grad_accumulation=2", f"max_steps={STEPS}",
            f"save_every={SAVE_EVERY}", "keep_last=2", "optim.lr=0.003", "threads=1",
            "progress=false", "plot=false", f"output_dir={out}", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(shared_data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(shared_data, straight), check=True, env=_env(),
                   capture_output=True, timeout=600)

    process = subprocess.Popen(_command(shared_data, killed), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / f"step-{KILL_AFTER:06d}"
    deadline = time.time() + 300
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()
    done = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())]
    assert KILL_AFTER <= max(done) < STEPS

    result = subprocess.run(_command(shared_data, killed, "--resume"), env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout

    assert _losses(killed) == _losses(straight)
    assert [s for s, _ in _losses(killed)] == list(range(1, STEPS + 1))
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a), "final weights differ after resume"


def test_resume_with_another_dataset_or_batch_size_says_what_changed(shared_data, tmp_path):
    out = tmp_path / "run"
    short = ["max_steps=2", "save_every=2", "data.limit=16", "save_model=false"]
    subprocess.run(_command(shared_data, out, *short), check=True, env=_env(),
                   capture_output=True, timeout=300)
    changed = subprocess.run(_command(shared_data, out, *short, "batch_size=4", "data.limit=12",
                                      "--resume"),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "Traceback" not in changed.stderr
    assert "batch_size 2 -> 4" in changed.stderr and "train_examples 16 -> 12" in changed.stderr
    assert "new output_dir" in changed.stderr
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
