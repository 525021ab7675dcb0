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

from sftlab.errors import ConfigError


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
        if not self.seeds:
            raise ConfigError("seeds: give at least one training seed (e.g. seeds=[0,1])")
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


DEFAULT_POSITION_BUCKETS = (1, 6, 21)


@dataclass
class SuperficialConfig(StudyConfig):
    """``sftlab study superficial``: how much of tuning is style (URIAL; Kung & Peng)."""

    token_shift: bool = True
    """Measure the token-distribution shift (URIAL): the rank of each token the tuned model
    generates under the untuned model given the same prefix."""
    tuned: str = ""
    """The tuned model of the token shift: an adapter, a training run directory or a model
    directory (``tiny``/``default`` too); empty: a LoRA run on the checkable-task pool (the
    ``original`` variant's first seed)."""
    prompts: str = ""
    """The prompts the tuned model answers for the token shift: a prompt file (any format
    ``sftlab generate`` reads, e.g. ``{"prompt": "..."}`` rows); empty: the held-out checkable items."""
    max_prompts: int = 0
    """Answer only the first N prompts (0: all)."""
    response_tokens: int = 64
    """Length limit of each greedy response of the token shift."""
    position_buckets: list[int] = field(default_factory=lambda: list(DEFAULT_POSITION_BUCKETS))
    """First response positions of the buckets the shift is also broken down by: ``[1, 6, 21]``
    is tokens 1-5, 6-20 and 21 on."""
    top_tokens: int = 20
    """How many of the most often shifted tokens to list, with their counts."""
    variants: list[str] = field(default_factory=lambda: ["original", "simplified", "delusive"])
    """Training-data variants (Kung & Peng 2023), each trained per seed and evaluated on the
    held-out items: ``original``; ``simplified`` (the task description replaced by its output
    space, e.g. "Answer with a number.", the input kept); ``delusive`` (the instruction kept,
    each answer replaced by another instance's answer of the same task). Empty: skip them."""
    include_base: bool = True
    """Also evaluate the untuned model on the held-out items, drawn as a dashed line."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast:
            self.max_prompts = min(self.max_prompts, 4) if self.max_prompts else 4
            self.response_tokens = min(self.response_tokens, 8)
            self.top_tokens = min(self.top_tokens, 5)
            if self.position_buckets == list(DEFAULT_POSITION_BUCKETS):  # buckets given with --fast are kept
                self.position_buckets = [1, 3, 6]


DEFAULT_SUPPORTED_TASKS = ("uppercase", "first_item", "reverse_words", "sort_numbers", "add", "max_number")
DEFAULT_IMITATION_SIZES = (32, 128)


@dataclass
class ImitationConfig(StudyConfig):
    """``sftlab study imitation``: imitating a stronger model copies its style, not its
    capability (Gudibande et al. 2023)."""

    teacher: str = ""
    """The model imitated. Empty: a LoRA run of ``model`` on the whole checkable-task pool
    (every seen task, with the gold answers; seed: the first of ``seeds``), so stronger than
    the students on those tasks; a model name or directory (``default``, ``tiny``, a run
    directory) runs locally; with ``teacher_base_url``, the model name served there."""
    teacher_base_url: str = ""
    """OpenAI-compatible endpoint of ``teacher`` (e.g. ``http://localhost:8000/v1``); checked to
    answer ``GET /models`` before anything trains. Empty: the teacher runs in-process."""
    teacher_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the teacher endpoint's API key (a local server needs none)."""
    teacher_max_tokens: int = 64
    """Length limit of each teacher answer that the students imitate (greedy)."""
    supported_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_SUPPORTED_TASKS))
    """The tasks imitated: the teacher answers these tasks' pool prompts and the students train
    on those answers. Every other task of the evaluation is ``unsupported`` (seen tasks left out
    here, and the unseen tasks)."""
    imitation_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_IMITATION_SIZES))
    """Imitation examples per student, increasing; for each seed the smaller sets are among the
    larger (nested). At most the supported tasks' pool (``train_per_task`` each)."""
    judge: str = ""
    """Pairwise judge of each student's answers against the teacher's (win rate, both orders):
    a model name served at ``judge_base_url``, or without it a model sftlab loads locally.
    Empty: no judge; the win rate is reported as unavailable and the rest runs."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of ``judge``; checked to answer ``GET /models`` before
    anything trains. Empty: ``judge`` runs locally."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge endpoint's API key (a local server needs none)."""
    judge_max_tokens: int = 256
    """Reply length limit of each pairwise verdict (an explanation, then ``[[A]]``/``[[B]]``/``[[C]]``)."""
    judge_per_task: int = 4
    """Held-out items per task whose student and teacher answers go to the judge (the first N
    of each task, supported and unsupported)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast:
            if self.imitation_sizes == list(DEFAULT_IMITATION_SIZES):  # sizes given with --fast are kept
                self.imitation_sizes = [4, 8]
            self.teacher_max_tokens = min(self.teacher_max_tokens, 8)
            self.judge_per_task = min(self.judge_per_task, 1)
            self.judge_max_tokens = min(self.judge_max_tokens, 32)
