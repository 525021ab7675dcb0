"""Setting a study up: its directory, its run store, its settings; shared by every study."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from sftlab.errors import ConfigError
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


def check_endpoint(base_url: str, api_key_env: str, *, key: str, role: str) -> None:
    """``ConfigError`` naming ``key`` unless the OpenAI-compatible server at ``base_url``
    answers ``GET /models`` (the ``role``, e.g. judge or teacher, is said in the message)."""
    import httpx  # lazy: only a remote endpoint needs it

    url = base_url.rstrip("/") + "/models"
    api_key = os.environ.get(api_key_env)
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout=10)
    except httpx.HTTPError as error:
        raise ConfigError(f"{key}: {url} does not answer ({type(error).__name__}: {error}); start the "
                          f"{role}'s server or fix the URL") from None
    if response.status_code != 200:
        raise ConfigError(f"{key}: GET {url} answered HTTP {response.status_code}: {response.text[:200]}"
                          + (f" (is {api_key_env} set?)" if response.status_code in (401, 403) else ""))

