"""Setting a study up: its directory, its run store, its settings; shared by every study."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from sftlab.models import resolve_model
from sftlab.study.config import StudyConfig
from sftlab.study.runs import RunStore, write_json


def open_study(config: StudyConfig, name: str) -> tuple[Path, RunStore]:
    """The study directory (printed first) and the store of its runs, claimed for this
    process (``RunStore.claim``); saves the config."""
    out = Path(config.output_dir or f"runs/study-{name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"study directory: {out}", flush=True)
    if config.threads:
        import torch  # the trainer sets its own threads; generation and scoring read this

        torch.set_num_threads(config.threads)
    write_json(out / "study_config.json", asdict(config))
    runs = Path(config.runs_dir).resolve() if config.runs_dir else out / "runs"
    store = RunStore(runs, resolve_model(config.model), job_settings(config))
    store.claim()  # one study at a time on a runs folder; the study releases it when done
    return out, store


def job_settings(config: StudyConfig) -> dict:
    """What a run's result depends on besides its data, seed and model: part of its key."""
    return {"train": {"epochs": config.epochs, "max_steps": config.max_steps, "batch_size": config.batch_size,
                      "lr": config.lr, "lora_rank": config.lora_rank, "max_length": config.max_length,
                      "threads": config.threads},
            "eval": {"max_new_tokens": config.max_new_tokens, "batch_size": config.eval_batch_size}}


def run_info(run: dict) -> dict:
    """The part of a run's ``done.json`` that study.json keeps."""
    return {k: run[k] for k in ("seed", "run_dir", "examples", "steps", "final_loss", "trained_tokens")}


class Clock:
    """Seconds since the study started, for ``timings_s``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)
