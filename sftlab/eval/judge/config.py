"""The configs of ``sftlab judge winrate | alpaca-eval | mt-bench``.

Shared by the CLI, YAML files (``--config``) and Python; each run saves its resolved config
in ``settings.json`` beside its results::

    judge: {model: gpt-4o-mini, base_url: https://api.openai.com/v1}
    baseline: ../shared/data/alpaca_eval/gpt4_1106_preview_outputs.json
    outputs: out/model_outputs.json
    limit: 20
    output_dir: out/alpaca
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class JudgeSection:
    """The judge model and how to reach it."""

    model: str = ""
    """Judge model: a model name at `base_url`, or a model sftlab loads locally (`tiny`,
    `default`, a directory)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint of the judge; none: run `model` locally."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge endpoint's API key."""
    cache_dir: str = "~/.cache/sftlab/judge"
    """Judge completions cache, keyed by model, messages and parameters ('' = no cache)."""
    max_tokens: int | None = None
    """Length limit of each judge reply; none: the command's own (alpaca-eval 512,
    mt-bench 2048 as FastChat)."""
    probe: int = 8
    """The first N judge requests run first; when none of their replies holds a verdict the
    run stops with an error quoting one (0: judge everything regardless)."""


@dataclass
class WinrateConfig:
    """``sftlab judge winrate``: win rates of AlpacaEval annotation files."""

    annotations: list[str] = field(default_factory=list)
    """Annotation files: a JSON list or JSONL, each row with output_1 (baseline), output_2
    (model) and preference (1, 2, 1.5 for a tie, or fractional)."""
    json: bool = False
    """Print JSON instead of a table."""
    seed: int = 1234
    """Seed of the bootstrap behind the standard errors."""


@dataclass
class AlpacaEvalConfig:
    """``sftlab judge alpaca-eval``: pairwise judging against baseline outputs."""

    model: str | None = None
    """Model to generate the outputs with (`tiny`, `default`, a directory); omit with `outputs`."""
    outputs: str | None = None
    """The model's outputs instead of generating (AlpacaEval JSON: instruction, output, generator)."""
    baseline: str = ""
    """Baseline outputs JSON (instruction, output, generator), e.g. the GPT-4 outputs of AlpacaEval."""
    judge: JudgeSection = field(default_factory=JudgeSection)
    limit: int | None = None
    """Judge only the first N instructions."""
    batch_size: int = 8
    """Prompts per batch, for the model and a local judge."""
    adapter: str | None = None
    """PEFT adapter applied to `model`."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """Engine that generates with `model`: `auto` (llama.cpp for GGUF models, the default
    model included, when llama-cpp-python is installed, else hf), `hf`, `llamacpp`
    (`sftlab.infer.backends`); settings.json names the one that ran."""
    max_new_tokens: int = 1024
    """Length limit of each generated output."""
    one_order: bool = False
    """Judge each pair once (model second) instead of in both orders."""
    seed: int = 1234
    """Seed of the bootstrap behind the standard errors."""
    output_dir: str = ""
    """Directory for model_outputs.json, annotations.json, results.json, samples.jsonl and
    settings.json."""


@dataclass
class MTBenchConfig:
    """``sftlab judge mt-bench``: single-answer grading of the 80 two-turn questions."""

    model: str | None = None
    """Model to answer with (`tiny`, `default`, a directory); omit with `answers`."""
    answers: str | None = None
    """FastChat model-answer JSONL instead of generating."""
    data_dir: str = ""
    """Folder with question.jsonl, judge_prompts.jsonl and reference_answer_gpt-4.jsonl."""
    judge: JudgeSection = field(default_factory=JudgeSection)
    limit: int | None = None
    """Answer and grade only the first N questions."""
    batch_size: int = 8
    """Prompts per batch, for the model and a local judge."""
    adapter: str | None = None
    """PEFT adapter applied to `model`."""
    backend: Literal["auto", "hf", "llamacpp"] = "auto"
    """Engine that generates with `model`: `auto` (llama.cpp for GGUF models, the default
    model included, when llama-cpp-python is installed, else hf), `hf`, `llamacpp`
    (`sftlab.infer.backends`); settings.json names the one that ran."""
    max_new_tokens: int = 1024
    """Length limit of each answer turn."""
    seed: int = 1234
    """Sampling seed of the answers."""
    output_dir: str = ""
    """Directory for model_answers.jsonl, results.json, samples.jsonl, settings.json and
    mt_bench_radar.png."""
