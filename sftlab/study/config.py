"""The settings of ``sftlab study ...``: plain dataclasses, light to import.

``StudyConfig`` holds what every study shares (model, data build, training, evaluation,
where runs are kept); each study adds its own keys. ``fast`` shrinks everything to a run
of seconds on the tiny model, for the tests::

    config = SizeSweepConfig(model="tiny", fast=True)
    config.sizes, config.max_steps       # ([4, 8, 16], 2): sizes given with it are kept
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class StudyConfig:
    """Keys every study shares; the run directory keeps them in ``study_config.json``."""

    model: str = "default"
    """The model to tune: ``default`` (SmolLM2-135M-Instruct), ``tiny`` or a directory."""
    output_dir: str = ""
    """Study directory (study.json, plots, report.html); empty: ``runs/study-<name>``. Run the
    same command again with the same directory and the study continues where it stopped."""
    runs_dir: str = ""
    """Where trained runs and their evaluations are kept, keyed by a hash of what produced
    them; empty: ``<output_dir>/runs``. Two studies given the same folder share runs."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Training seeds (and subset seeds); every measurement is repeated for each."""
    data_seed: int = 0
    """Seeds the build of the checkable-task data (which instances, which templates)."""
    train_per_task: int = 64
    """Pool of training instances per seen checkable task (the quickstart's tasks)."""
    eval_per_task: int = 8
    """Held-out evaluation instances per checkable task (the same items for every run)."""
    epochs: int = 1
    """Passes over each run's training data."""
    max_steps: int = 0
    """Optimizer steps per run; 0: ``epochs`` full passes."""
    batch_size: int = 4
    """Packed rows of ``max_length`` tokens per optimizer step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine schedule, 10% warm-up)."""
    lora_rank: int = 16
    """LoRA rank (alpha is twice the rank)."""
    max_length: int = 256
    """Tokens per packed training row; longer examples are truncated."""
    max_new_tokens: int = 24
    """Answer length limit at evaluation (answers are short: exact match)."""
    eval_batch_size: int = 16
    """Prompts generated together at evaluation."""
    bootstrap_resamples: int = 1000
    """Bootstrap resamples behind each 95% interval (resampling evaluation items)."""
    threads: int = 0
    """torch threads (0: all cores)."""
    fast: bool = False
    """A tiny version for tests: a small pool, few items, two optimizer steps per run."""

    def __post_init__(self) -> None:
        if self.fast:
            self.train_per_task, self.eval_per_task = min(self.train_per_task, 4), min(self.eval_per_task, 2)
            self.max_new_tokens, self.max_steps = min(self.max_new_tokens, 8), 2
            self.bootstrap_resamples = min(self.bootstrap_resamples, 200)


DEFAULT_SIZES = (32, 128, 512)
DEFAULT_FRACTIONS = (0.0625, 0.25, 1.0)


@dataclass
class SizeSweepConfig(StudyConfig):
    """``sftlab study size-sweep``: score against the number of training examples."""

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    """Training-set sizes n_1 < n_2 < ...; for each seed the n_1 examples are among the n_2."""
    mode: Literal["examples", "task_fraction"] = "examples"
    """``examples``: nested random subsets of ``sizes`` examples; ``task_fraction`` (Gupta
    et al. 2023): nested subsets holding ``fractions`` of each task's examples."""
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    """With ``mode: task_fraction``: fractions of each task's training examples, increasing, in (0, 1]."""
    setting: Literal["multi_task", "single_task"] = "multi_task"
    """With ``mode: task_fraction``: one run on every task's fraction, evaluated on all items
    (``multi_task``), or one run per task on its own fraction, evaluated on its items (``single_task``)."""
    tasks: list[str] = field(default_factory=list)
    """With ``setting: single_task``: the tasks to sweep; empty: every task of the pool."""
    include_base: bool = True
    """Also evaluate the untuned model, drawn as a dashed line."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast and self.sizes == list(DEFAULT_SIZES):  # sizes given with --fast are kept
            self.sizes = [4, 8, 16]
        if self.fast and self.fractions == list(DEFAULT_FRACTIONS):
            self.fractions = [0.25, 0.5, 1.0]


@dataclass
class CompareDataConfig(StudyConfig):
    """``sftlab study compare-data``: data sources at an equal budget, ranked, paired."""

    sources: list[str] = field(default_factory=lambda: ["random", "longest", "ifd"])
    """What to train on: ``random`` (k random pool examples, per seed), ``longest`` (the k
    with the longest responses), ``ifd`` (the k of highest instruction-following
    difficulty under the model to be tuned), ``judge`` (the k a judge rates highest for
    accuracy, AlpaGasus style; see ``judge``), or a data file path (any format sftlab reads,
    e.g. a mixture written by ``sftlab data mix``)."""
    pool: str = ""
    """The data file the selections pick from; empty: the checkable-task training pool."""
    k: int = 128
    """Examples each selection takes (before the budget is equalised)."""
    equalise: Literal["tokens", "examples"] = "tokens"
    """``tokens``: every source is cut to the same number of trained tokens (sftlab's
    tokenizer and loss mask); ``examples``: every source has k examples."""
    budget_tokens: int = 0
    """Trained tokens per source with ``equalise: tokens``; 0: the smallest source's tokens
    over its first k examples."""
    baseline: str = "random"
    """The source the paired differences are taken against."""
    ifd_max: float = 1.0
    """Examples with IFD at or above this are left out of the ``ifd`` selection (a ratio >=
    1: the instruction does not help predict the response, as Li et al. filter)."""
    judge: str = ""
    """The ``judge`` source's rater (AlpaGasus): a model name served at ``judge_base_url``,
    or without it a model sftlab loads locally (``default``, a directory). Needed when
    ``sources`` holds ``judge``."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of ``judge`` (e.g. ``http://localhost:8000/v1``); checked
    to answer ``GET /models`` before anything trains. Empty: ``judge`` runs locally."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge endpoint's API key (a local server needs none)."""
    judge_max_tokens: int = 64
    """Reply length limit of each rating (the score is on its first line)."""
    judge_min_score: float = 4.5
    """Examples the judge rates below this (0-5) are left out of the ``judge`` selection
    (AlpaGasus keeps 4.5 and above)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast:
            self.k = min(self.k, 8)


DEFAULT_SCENARIOS = ("gsm8k", "bbh_mc", "checkable")
DEFAULT_PARAPHRASES = ("Consider the following. {text}", "{text}\nAnswer carefully.")


@dataclass
class HelmConfig(StudyConfig):
    """``sftlab study helm``: a HELM-style table of metrics per model and scenario."""

    models: list[str] = field(default_factory=list)
    """Models side by side: names, model directories, adapters or training run directories,
    as ``sftlab eval`` takes them (e.g. ``[default, runs/lora1]``); empty: ``[model]``."""
    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    """``checkable`` (the quickstart's exactly-checkable tasks, ``eval_per_task`` each),
    ``bbh_mc`` (BIG-Bench Hard's ``mc_subtasks`` as lettered multiple choice, scored by
    log-likelihood), or any ``sftlab eval`` task as ``NAME`` or ``NAME=PATH`` (gsm8k, bbh,
    math, mc=FILE, mc_letters=FILE)."""
    data_dir: str = ""
    """The folder ``sftlab eval --data-dir`` takes (gsm8k/test.jsonl, bbh/, ...); needed by
    every scenario but ``checkable`` unless given as ``NAME=PATH``."""
    limit: int = 20
    """Items per data-file scenario (the first N; per subtask for bbh and bbh_mc)."""
    mc_subtasks: list[str] = field(default_factory=lambda: ["sports_understanding", "date_understanding"])
    """BBH subtasks of ``bbh_mc``: ones whose answers are lettered options or a small fixed set."""
    num_fewshot: int = -1
    """Few-shot exemplars of gsm8k / math / bbh prompts; -1: each task's own (8, 4, 3)."""
    generation_tokens: int = 160
    """Completion length limit of data-file generation scenarios (gsm8k's chains of thought);
    ``checkable`` uses ``max_new_tokens``."""
    paraphrases: list[str] = field(default_factory=lambda: list(DEFAULT_PARAPHRASES))
    """Rewordings of each item's question (``{text}``: the original) for the robustness
    columns; every item is answered under each one."""
    typo_rate: float = 0.2
    """Chance that a word of the question gets a typo (two letters swapped or one dropped,
    seeded per item); numbers and the words of the gold answer are never touched."""
    coverage: float = 0.1
    """Selective accuracy: accuracy on this fraction of items the model is most confident on."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast:
            self.limit, self.generation_tokens = min(self.limit, 2), min(self.generation_tokens, 8)
            self.mc_subtasks = self.mc_subtasks[:1]
            self.paraphrases = self.paraphrases[:1]
