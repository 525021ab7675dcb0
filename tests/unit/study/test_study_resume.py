"""A study run again trains and generates nothing it has; a new seed trains only its runs."""
import json

import pytest

from sftlab.cli.study import checkable_benchmark
from sftlab.errors import ConfigError
from sftlab.study import runs
from sftlab.study.config import SizeSweepConfig
from sftlab.study.size_sweep import run_size_sweep


def counting(monkeypatch, name):
    calls = []
    original = getattr(runs, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(runs, name, wrapper)
    return calls


def forbidden(monkeypatch, name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} was called on a resumed study")

    monkeypatch.setattr(runs, name, fail)


def test_a_second_invocation_trains_and_evaluates_nothing_new(tmp_path, monkeypatch):
    config = SizeSweepConfig(model="tiny", fast=True, sizes=[4, 8], seeds=[0], output_dir=str(tmp_path / "s"))
    benchmark = checkable_benchmark(config)
    trained, generated = counting(monkeypatch, "finetune"), counting(monkeypatch, "generate_answers")
    first = run_size_sweep(config, benchmark)
    assert (len(trained), len(generated)) == (2, 3)  # 2 sizes x 1 seed, their evaluations + the base model

    forbidden(monkeypatch, "finetune")
    forbidden(monkeypatch, "generate_answers")
    again = run_size_sweep(config, benchmark)
    assert again["jobs"] == {"trained": 0, "reused": 5}
    assert again["curves"] == first["curves"]
    assert json.loads((tmp_path / "s" / "study.json").read_text())["curves"] == first["curves"]

    monkeypatch.undo()
    trained = counting(monkeypatch, "finetune")
    more = run_size_sweep(SizeSweepConfig(model="tiny", fast=True, sizes=[4, 8], seeds=[0, 1],
                                          output_dir=str(tmp_path / "s")), benchmark)
    assert len(trained) == 2 and more["jobs"]["trained"] == 2  # only seed 1's runs are new
    assert more["curves"][0]["points"][0]["runs"][0]["run_dir"] == first["curves"][0]["points"][0]["runs"][0]["run_dir"]


def test_a_changed_setting_is_a_new_run(tmp_path):
    store = runs.RunStore(tmp_path, "tiny", {"train": {"lr": 1e-3}, "eval": {}})
    other = runs.RunStore(tmp_path, "tiny", {"train": {"lr": 2e-3}, "eval": {}})
    pool = checkable_benchmark(SizeSweepConfig(fast=True)).pool[:4]
    assert store.train_key(pool, 0) != other.train_key(pool, 0)
    assert store.train_key(pool, 0) != store.train_key(pool, 1)
    assert store.train_key(pool, 0) != store.train_key(pool[::-1], 0)  # order changes batches
    assert store.train_key(pool, 0) == runs.RunStore(tmp_path, "tiny", {"train": {"lr": 1e-3}, "eval": {}}
                                                     ).train_key(list(pool), 0)


def test_sizes_beyond_the_pool_fail_before_anything_trains(tmp_path, monkeypatch):
    forbidden(monkeypatch, "finetune")
    config = SizeSweepConfig(model="tiny", fast=True, sizes=[4, 500], output_dir=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="sizes: the largest size 500 exceeds the pool of 52"):
        run_size_sweep(config, checkable_benchmark(config))
    assert not (tmp_path / "s").exists()


def test_a_runs_folder_in_use_by_a_live_process_is_refused(tmp_path):
    import os
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(holder.pid))
        with pytest.raises(ConfigError, match=f"runs_dir: .* in use by another study \\(process {holder.pid}\\)"):
            runs.RunStore(tmp_path, "tiny", {}).claim()
    finally:
        holder.kill()
        holder.wait()
    runs.RunStore(tmp_path, "tiny", {}).claim()  # its process ended: taken over
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
