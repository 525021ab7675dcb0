"""The run directory: what a training run leaves behind, so it can be checked and redone.

``<output_dir>/``::

    run.json        resolved config, library versions, git revision, chat-template hash,
                    data fingerprint (sha256 of the tokenized data), seed, processes, device
    config.yaml     the resolved config alone (``sftlab train config.yaml`` reruns it)
    metrics.jsonl   one JSON object per log step, e.g.
                    {"step": 10, "loss": 2.31, "lr": 2e-05, "grad_norm": 1.7,
                     "tokens_per_s": 812.4, "padding_fraction": 0.013, "step_time_s": 2.5,
                     "tokens": 2048, "padded_tokens": 2075, "labelled_tokens": 1020,
                     "peak_memory_mb": 912.0, "elapsed_s": 25.2}
                    (tokens = real tokens trained since the previous row, all processes)
                    (with ``objective: spin`` "pairs" in place of "labelled_tokens", and the
                    window's mean "margin", "accuracy", "reward_real", "reward_generated")
                    and eval rows {"step": 10, "eval_loss": 2.40}; one run's rows, each step
                    once (a resume drops the rows after its checkpoint; a fresh start moves an
                    earlier run's file to metrics.previous.jsonl)
    loss.png        training (and eval) loss against step
    check.json      ``sftlab check`` on the saved result: training renderer, saved template,
                    server prompt and reply parser, stop tokens (``sftlab.infer.conformance``)
    checkpoints/    see ``sftlab.train.checkpoint``
    model/ | adapter/   the trained result with the tokenizer (chat template) beside it
    tracking/ mlruns/ wandb/   with ``report_to``: TensorBoard event files, the MLflow file
                    store (unless MLFLOW_TRACKING_URI is set), W&B's run files; each gets
                    every metrics.jsonl row (``start_trackers``, ``track``)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import time
from pathlib import Path

import torch

from sftlab.config import config_to_dict, dump_config, flatten
from sftlab.data.chat import format_mask
from sftlab.errors import ConfigError
from sftlab.models import library_versions


def write_run_json(run) -> None:
    """Provenance of ``run`` (an ``sftlab.train.sft.Run``) into ``run.json`` and ``config.yaml``."""
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    dump_config(run.config, out / "config.yaml")
    trainable, total, percent = run.prepared.summary
    info = {
        "config": config_to_dict(run.config),
        "versions": library_versions(),
        "git_revision": git_revision(),
        "chat_template_sha256": _sha256(getattr(run.tokenizer, "chat_template", None) or ""),
        # the template training rendered with, for ``sftlab check`` to compare the saved one against
        "chat_template": getattr(run.tokenizer, "chat_template", None),
        "data_fingerprint": run.data_order["data_sha256"],
        "train_examples": len(run.train_examples),
        "train_units": len(run.units),
        "eval_units": len(run.eval_units),
        "seed": run.config.seed,
        "processes": run.accelerator.num_processes,
        "device": str(run.accelerator.device),
        "total_steps": run.total_steps,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(percent, 6),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the sftlab checkout (``+dirty`` with local changes), else None."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mask_preview(example, tokenizer, max_chars: int = 1500) -> str:
    """One example with its trained tokens marked (``sftlab.data.chat.format_mask``)."""
    text = format_mask(example, tokenizer, color=False)
    return text if len(text) <= max_chars else text[:max_chars] + f" ... ({len(text)} chars)"


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated on GPU, else the process's peak RSS (MiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Window:
    """Step statistics between two log rows (loss weighted by the loss's units).

    ``count_key`` names the window's count of those units in the row (``labelled_tokens``,
    ``pairs``); ``metric_names`` are the objective's extra metrics, summed over units in
    each step's ``stats["metric_sums"]`` and written as means over the window's units.
    """

    def __init__(self, count_key: str = "labelled_tokens",
                 metric_names: tuple[str, ...] = ()) -> None:
        self.count_key, self.metric_names = count_key, metric_names
        self.started = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = self.labelled = self.tokens = self.padded = 0.0
        self.seconds, self.steps = 0.0, 0
        self.metric_sums = dict.fromkeys(self.metric_names, 0.0)

    def add(self, stats: dict, seconds: float) -> None:
        self.loss_sum += stats["loss"] * stats["labelled"]
        self.labelled += stats["labelled"]
        self.tokens += stats["tokens"]
        self.padded += stats["padded"]
        self.seconds += seconds
        self.steps += 1
        for key, value in stats.get("metric_sums", {}).items():
            self.metric_sums[key] += value

    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def flush(self, step: int, last: dict) -> dict:
        row = {
            "step": step,
            "loss": round(self.loss_sum / max(self.labelled, 1), 6),
            "lr": last["lr"],
            "grad_norm": None if last["grad_norm"] is None else round(last["grad_norm"], 6),
            "tokens_per_s": round(self.tokens_per_s(), 2),
            "padding_fraction": round(1 - self.tokens / self.padded, 4) if self.padded else 0.0,
            "step_time_s": round(self.seconds / max(self.steps, 1), 4),
            "tokens": int(self.tokens),
            "padded_tokens": int(self.padded),
            self.count_key: int(self.labelled),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "elapsed_s": round(time.perf_counter() - self.started, 2),
        }
        row.update({k: round(v / max(self.labelled, 1), 6) for k, v in self.metric_sums.items()})
        self._reset()
        return row


def append_metrics(output_dir: Path, row: dict) -> None:
    with (Path(output_dir) / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def rotate_metrics(output_dir: Path) -> Path | None:
    """A fresh start: move an earlier run's ``metrics.jsonl`` to ``metrics.previous.jsonl``
    (replacing an older one); returns where it went, or None when there was none."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    previous = path.with_name("metrics.previous.jsonl")
    path.replace(previous)
    return previous


def read_metrics(output_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def rewrite_metrics(output_dir: Path, rows: list[dict]) -> None:
    """After a resume: keep only the rows up to the checkpoint (the rest is redone)."""
    path = Path(output_dir) / "metrics.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def plot_loss(output_dir: Path, history: list[dict], unit: str = "labelled token") -> Path | None:
    """``loss.png``: training loss per logged step, eval loss as points; ``unit`` is what the
    loss is a mean over (the objective's ``unit_name``)."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib  # lazy: only needed at plot time, and slow to import

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss (mean per {unit})")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(output_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- experiment trackers ----------------------------------------------------------------
# ``report_to`` names -> the pinned package each needs (the ``tracking`` extra holds them)
TRACKERS = {"tensorboard": "tensorboard==2.21.0", "wandb": "wandb==0.31.0", "mlflow": "mlflow-skinny==3.18.0"}
PROJECT = "sftlab"  # W&B project, MLflow experiment and TensorBoard subdirectory


def check_trackers(names: list[str]) -> None:
    """``ConfigError`` for an unknown tracker or one whose package is not installed; called
    before anything loads, so a typo never costs a model load."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; use any of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"report_to: {name} needs its package, which is not installed: "
                              f"pip install 'sftlab[tracking]' (or pip install {TRACKERS[name]}), "
                              f"or remove {name} from report_to")


def tracker_kwargs(config) -> dict:
    """``Accelerator`` keyword arguments for ``config.report_to`` (none: no trackers)."""
    if not config.report_to:
        return {}
    return {"log_with": list(config.report_to), "project_dir": str(Path(config.output_dir) / "tracking")}


def start_trackers(accelerator, config) -> None:
    """Open one run in every tracker of ``config.report_to``, named ``config.run_name`` (or
    the output directory's name), with the resolved config as flat ``a.b`` parameters."""
    if not config.report_to:
        return
    name = config.run_name or Path(config.output_dir).resolve().name
    if "mlflow" in config.report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow  # lazy: optional

        # a file store in the run directory needs no server; MLflow 3 asks for this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((Path(config.output_dir) / "mlruns").resolve().as_uri())
    accelerator.init_trackers(PROJECT, config={"run_name": name, **flat_config(config_to_dict(config))},
                              init_kwargs={"wandb": {"name": name, "dir": str(config.output_dir)},
                                           "mlflow": {"run_name": name}})


def track(accelerator, row: dict) -> None:
    """Send one metrics.jsonl row's numbers to the trackers (a no-op without trackers)."""
    values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
    accelerator.log(values, step=row["step"])


def end_trackers(accelerator) -> None:
    """Close the trackers' runs (not ``accelerator.end_training``, which also ends the
    process group that the caller may still use)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def flat_config(values: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 2e-5}}`` -> ``{"optim.lr": 2e-5}``; lists and None as text, which
    every tracker accepts as a parameter."""
    return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in flatten(values, prefix).items()}
