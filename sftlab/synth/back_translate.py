"""Instruction back-translation with self-curation (Humpback; Li et al. 2023).

Unlabelled texts (e.g. web documents) are treated as *answers*; a model learns to write the
instruction each answer responds to, and the model itself keeps only the good pairs:

1. **backward model** ``M_yx``: the base model fine-tuned (sftlab's ``train``) on the seed
   pairs turned around: user = the seed response, assistant = the seed instruction;
2. **self-augmentation**: ``M_yx`` writes an instruction for every unlabelled text
   (candidates, kept in ``<work_dir>/candidates.jsonl``);
3. **self-curation**: the forward seed model ``M_0`` (the base model fine-tuned on the seed
   pairs, or ``forward_model``, or any teacher with ``scorer: teacher``) rates each
   (instruction, text) pair 1-5 with ``RATING_TEMPLATE``; pairs rated ``>= threshold``
   are kept (the paper's A_5 set for ``threshold: 5``);
4. with ``iterations > 1``: ``M_t`` is trained on seed + the pairs curated by ``M_{t-1}``
   and re-rates every candidate (the paper's second curation round); ``tag_sources`` adds
   the paper's system-prompt tags telling seed data from augmented data.

Output (``output``, JSONL): the pairs curated in the LAST iteration, as conversations
(user = generated instruction, assistant = the unlabelled text) with provenance::

    {"id": "3f9a...", "messages": [{"role": "user", "content": "Give me a recipe for crepes."},
                                   {"role": "assistant", "content": "Making crepes is ..."}],
     "source": "back-translate", "meta": {"text_id": "9beb2e7fedb5", "score": 5,
     "provenance": {"pipeline": "back-translate", "teacher": "<scorer>", "backward_model": "...",
                    "template_version": "back-translate/v1", "seed": 0, "round": 0,
                    "iteration": 0, "score": 5}}}

Earlier iterations' curated sets are ``<work_dir>/curated_{t}.jsonl``; every rating (raw
text and parsed score) is in ``<work_dir>/scores_{t}.jsonl``; each trained model is a
training run directory ``<work_dir>/{backward,forward_0,...}`` (its ``train_data.jsonl``
holds exactly what it was trained on). Everything is resumable: a rerun skips finished
training stages, generated instructions and ratings. Every text that does not end up in
the output is counted under one reason: ``empty text``, ``text too long``, ``empty
instruction``, ``unparseable score``, ``below threshold`` (and ``duplicate text``), or, for a
text whose prompt (with its longest reply) does not fit a local model's context,
``TOO_LONG_TO_BACK_TRANSLATE`` or ``TOO_LONG_TO_RATE``: such a text is skipped, not a stop.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from sftlab.config import load_config
from sftlab.data.chat import tokenize_conversations
from sftlab.data.io import iter_records, read_conversations, write_conversations
from sftlab.errors import ConfigError, DataError
from sftlab.infer.hf import HFGenerator, prompt_to_ids
from sftlab.models import context_length, load_model, load_tokenizer
from sftlab.synth.base import SynthReport, content_ids, make_teacher, pipeline
from sftlab.synth.client import ChatRequest, GeneratorTeacher, Teacher, TeacherConfig
from sftlab.synth.store import RecordStore, stable_id
from sftlab.train.config import TrainConfig
from sftlab.train.sft import train
from sftlab.types import Conversation, Message

TEMPLATE_VERSION = "back-translate/v1"
STAGE_MARKER = "stage.json"
# system turns telling seed (human) data from back-translated data (the paper's tagging)
SEED_TAG = "Answer in the style of an AI Assistant."
AUGMENTED_TAG = "Answer with knowledge from web search."
# reasons a text is skipped, as counted in the report
TOO_LONG_TO_BACK_TRANSLATE = "text longer than the backward model's context"
TOO_LONG_TO_RATE = "rating prompt longer than the scorer's context"

# Our wording of the paper's 5-point self-curation rubric (Li et al. 2023, Table 19).
RATING_TEMPLATE = """\
Below is an instruction from a user and a candidate answer. Judge whether the answer is a \
good example of how an AI assistant should respond to the instruction, and rate it on this \
5-point scale:

1: The answer is incomplete, vague, off-topic, controversial, or not what the user asked \
for; it may contain unrelated content such as advertising, navigation text or other noise.
2: The answer deals with most of what the user asked, but does not address the instruction \
itself; it may only sketch a general method instead of giving the solution.
3: The answer is helpful and covers the basics of the request, but it is not written from \
an AI assistant's point of view: it reads like a blog post, a web page or search results \
(personal stories, opinions, comments, links to share).
4: The answer is written from an AI assistant's point of view and addresses the instruction \
clearly, completely and comprehensively; it is well organised and self-contained, with only \
minor flaws such as being slightly too long or unfocused.
5: The answer is a perfect response from an AI assistant: focused on helping the user, no \
irrelevant sentences, expert knowledge, well written, logical, easy to follow, engaging.

First give a short reasoning for your rating, then write "Score: <rating>" on the last line.

Instruction: {instruction}

Answer: {answer}
"""

_SCORE = re.compile(r"score\s*(?:is|of|:|=)?\s*\**\s*([1-5])(?!\d|\.\d)", re.IGNORECASE)
_BARE = re.compile(r"^\s*\**\s*([1-5])\s*(?:/\s*5)?\s*\**\s*\.?\s*$")


def parse_score(text: str) -> int | None:
    """The rating in a rater's reply: the last ``Score: N`` (1-5), or a reply that is only
    the number; ``None`` when there is none (counted as ``unparseable score``).

    >>> parse_score("Well organised but long.\\nScore: 4"), parse_score("5"), parse_score("Score: 7")
    (4, 5, None)
    """
    found = _SCORE.findall(text)
    if found:
        return int(found[-1])
    bare = _BARE.match(text)
    return int(bare.group(1)) if bare else None


def reverse_pair(conversation: Conversation) -> Conversation:
    """A seed pair turned around for the backward model: user = response, assistant = instruction.

    >>> reverse_pair(Conversation([Message("user", "Add 2 and 3."), Message("assistant", "5")])).messages
    [Message(role='user', content='5'), Message(role='assistant', content='Add 2 and 3.')]
    """
    user, assistant = conversation.messages
    return Conversation([Message("user", assistant.content), Message("assistant", user.content)],
                        id=conversation.id, source=conversation.source)


# -- configuration ---------------------------------------------------------------------------

@dataclass
class StageTraining:
    """How one model of the pipeline is fine-tuned; unset fields come from ``train_yaml``
    (a ``sftlab train`` YAML) or ``TrainConfig``'s defaults. Its ``model`` and ``data``
    sections are ignored: the pipeline supplies both."""

    train_yaml: str | None = None
    """A ``sftlab train`` YAML the other fields start from (None: ``TrainConfig``'s defaults)."""
    method: str | None = None
    """``full``, ``lora``, ... (any ``sftlab train`` method that saves a model or PEFT adapter)."""
    lr: float | None = None
    """Peak learning rate."""
    steps: int | None = None
    """Optimizer steps; 0 means ``epochs`` passes."""
    epochs: int | None = None
    """Passes over the stage's training pairs (when ``steps`` is 0)."""
    batch_size: int | None = None
    """Examples per micro-batch."""
    max_length: int | None = None
    """Tokens per example; longer examples are truncated."""


@dataclass
class BackTranslateConfig:
    model: str = "default"
    """Base model of the backward and forward models (``tiny``, ``default``, a directory)."""
    seeds: str = "seed.json"
    """Seed (instruction, response) pairs, any format ``sftlab data`` reads; the first
    user/assistant exchange of each conversation is used."""
    seed_limit: int | None = None
    """Use only the first N seed pairs (None: all)."""
    unlabelled: str = "texts.jsonl"
    """JSONL rows with a ``text`` field (and optionally ``id``)."""
    unlabelled_limit: int | None = None
    """Use only the first N unlabelled texts (None: all)."""
    output: str = "back_translated.jsonl"
    """JSONL file of the pairs curated in the last iteration."""
    work_dir: str | None = None
    """Models and intermediate files; default ``<output>.work``."""
    backward: StageTraining = field(default_factory=StageTraining)
    """How the backward model M_yx (response -> instruction) is fine-tuned."""
    forward: StageTraining = field(default_factory=StageTraining)
    """How the forward models M_0, M_1, ... (instruction -> response) are fine-tuned."""
    forward_model: str | None = None
    """Use this model as M_0 instead of training one on the seeds."""
    scorer: Literal["forward", "teacher"] = "forward"
    """Who rates the pairs: the forward model M_t (self-curation) or ``teacher``."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The rater with ``scorer: teacher``."""
    threshold: int = 5
    """Keep pairs rated at least this (1-5); 5 is the paper's A_5 set."""
    iterations: int = 1
    """Curation rounds; each retrains the forward model on seed + last round's pairs and re-rates."""
    tag_sources: bool = False
    """Iterations >= 1 train M_t with the paper's source tags: a system turn ``SEED_TAG`` on
    seed pairs and ``AUGMENTED_TAG`` on curated ones; M_t then rates with ``SEED_TAG``."""
    temperature: float = 0.0
    """Sampling temperature of instruction generation and rating (0 = greedy)."""
    instruction_max_tokens: int = 128
    """Longest generated instruction, in tokens."""
    rating_max_tokens: int = 256
    """Longest rating (reasoning + score), in tokens."""
    batch_size: int = 8
    """Prompts per generation call."""
    max_text_chars: int = 8000
    """Longer texts are skipped (counted as ``text too long``)."""
    device: str = "cpu"
    """Where the trained models generate (training places itself via accelerate)."""
    seed: int = 0
    """Seed of training and of sampling."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= 5:
            raise ConfigError(f"threshold must be between 1 and 5, got {self.threshold}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.scorer == "teacher" and self.iterations > 1:
            raise ConfigError("iterations > 1 retrains the forward model to re-rate the pairs; "
                              "with scorer=teacher the ratings would not change: use iterations=1")


# -- the pipeline ----------------------------------------------------------------------------

@pipeline("back-translate", BackTranslateConfig)
def run(config: BackTranslateConfig, teacher: Teacher | None = None) -> SynthReport:
    """All steps; ``teacher`` replaces ``make_teacher(config.teacher)`` for ``scorer: teacher``."""
    work = Path(config.work_dir or f"{config.output}.work")
    report = SynthReport("back-translate", extra={"iterations": []})
    seeds = seed_pairs(config)
    texts = read_texts(config.unlabelled, config.unlabelled_limit)
    backward = train_stage(work / "backward", [reverse_pair(c) for c in seeds], config, config.backward)
    report.extra["backward_model"] = str(backward)
    candidates = augment(config, backward, texts, work / "candidates.jsonl", report)
    curated: list[Conversation] = []
    for t in range(config.iterations):
        scorer = _scorer(config, teacher, work, t, seeds, curated)
        scores = rate(config, t, scorer, candidates, work / f"scores_{t}.jsonl", report)
        report.count_refusals(scorer)
        last = t == config.iterations - 1
        target = Path(config.output) if last else work / f"curated_{t}.jsonl"
        curated, counts = curate(config, t, candidates, scores, texts, target, scorer.model,
                                 str(backward), report if last else None)
        report.extra["iterations"].append({"iteration": t, "scorer": scorer.model, "kept": len(curated),
                                           "texts": len(texts), "dropped": dict(counts)})
        if last:
            report.rejected = counts
    return report


def seed_pairs(config: BackTranslateConfig) -> list[Conversation]:
    """First user/assistant exchange of each seed conversation (system turns dropped)."""
    pairs = []
    for conversation in read_conversations(config.seeds).conversations[:config.seed_limit]:
        turns = [m for m in conversation.messages if m.role != "system"]
        if len(turns) >= 2 and turns[0].role == "user" and turns[1].role == "assistant":
            pairs.append(Conversation(turns[:2], id=conversation.id, source=conversation.source))
    if not pairs:
        raise ConfigError(f"seeds={config.seeds}: no conversation starts with a user/assistant exchange")
    return pairs


def read_texts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Unlabelled texts: rows ``{"text": ..., "id"?: ...}`` (JSONL, or a JSON list) ->
    ``[{"id", "text"}]``; a row without an id gets a hash of its text (``content_ids``), not
    its position, so a reordered, prepended or renamed file resumes without a text done twice."""
    path = Path(path)
    texts = []
    for record in iter_records(path):
        row = record.value
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError("no 'text' string in this row", file=str(path), line=record.line,
                            index=record.index, field="text",
                            hint="write one JSON object per line with a 'text' field")
        texts.append({"id": str(row["id"]) if "id" in row else None, "text": row["text"]})
    for text, key in zip(texts, content_ids([(x["id"], x["text"]) for x in texts])):
        text["id"] = key
    return texts[:limit]


def train_stage(run_dir: Path, conversations: list[Conversation], config: BackTranslateConfig,
                stage: StageTraining) -> Path:
    """Fine-tune ``config.model`` on ``conversations`` into ``run_dir`` (a ``sftlab train``
    run directory, loadable with ``load_model(run_dir)``); skipped when already done."""
    if (run_dir / STAGE_MARKER).exists():
        return run_dir
    train_config = stage_train_config(stage, config, run_dir)
    tokenizer = load_tokenizer(config.model)
    tokenized = tokenize_conversations(conversations, tokenizer, max_length=train_config.data.max_length,
                                       strategy=train_config.data.mask)
    if not tokenized.examples:
        raise ConfigError(f"{run_dir.name}: no trainable example ({tokenized.summary()})")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_conversations(conversations, run_dir / "train_data.jsonl")
    model = load_model(config.model, dtype=train_config.model.dtype).train()
    result = train(train_config, model=model, tokenizer=tokenizer, train_examples=tokenized.examples)
    if result.saved_to is None:
        raise ConfigError(f"{run_dir.name}: the training YAML sets save_model: false; the pipeline "
                          f"needs the trained model")
    (run_dir / STAGE_MARKER).write_text(json.dumps({
        "examples": len(tokenized.examples), "tokenize": tokenized.summary(), "steps": result.steps,
        "final_loss": result.final_loss, "saved_to": str(result.saved_to)}, indent=2) + "\n")
    return run_dir


def stage_train_config(stage: StageTraining, config: BackTranslateConfig, run_dir: Path):
    """``StageTraining`` -> a full ``TrainConfig`` (YAML or defaults, then the set fields)."""
    train_config = load_config(TrainConfig, stage.train_yaml, []) if stage.train_yaml else TrainConfig()
    train_config.model.name = config.model
    for value, (section, name) in [(stage.method, ("method", "name")), (stage.lr, ("optim", "lr")),
                                   (stage.max_length, ("data", "max_length"))]:
        if value is not None:
            setattr(getattr(train_config, section), name, value)
    for value, name in [(stage.steps, "max_steps"), (stage.epochs, "epochs"), (stage.batch_size, "batch_size")]:
        if value is not None:
            setattr(train_config, name, value)
    train_config.output_dir, train_config.seed = str(run_dir), config.seed
    train_config.progress = config.progress
    train_config.plot = False  # metrics.jsonl holds the curve
    return train_config


def _model_teacher(run_dir: Path | str, config: BackTranslateConfig) -> GeneratorTeacher:
    """A trained model (run directory or model path) behind the teacher interface, uncached:
    a retrained model at the same path must not reuse old answers (the stores resume instead)."""
    generator = HFGenerator(load_model(str(run_dir), device=config.device), load_tokenizer(str(run_dir)),
                            config.batch_size)
    return GeneratorTeacher(generator, str(run_dir), cache_dir=None)


def augment(config: BackTranslateConfig, backward: Path, texts: list[dict], path: Path,
            report: SynthReport) -> list[dict]:
    """Self-augmentation: ``M_yx`` writes an instruction for every usable text. Returns the
    candidates ``{"id", "text_id", "text", "instruction"}`` in text order (resumable store at
    ``path``; empty instructions are kept there and counted at curation)."""
    wanted = [_candidate_id(x, config) for x in usable(texts, config)[0]]
    with RecordStore(path) as store:
        todo = [x for x in usable(texts, config)[0] if _candidate_id(x, config) not in store]
        if todo:
            model = _model_teacher(backward, config)
            for start in tqdm(range(0, len(todo), config.batch_size), desc="back-translate: instructions",
                              unit="batch", disable=not config.progress):
                batch = todo[start:start + config.batch_size]
                requests = [ChatRequest([Message("user", x["text"])], temperature=config.temperature,
                                        max_tokens=config.instruction_max_tokens, seed=config.seed)
                            for x in batch]
                instructions, fits = _complete_fitting(model, requests)
                report.requests += sum(fits)
                for x, instruction, fit in zip(batch, instructions, fits):
                    row = {"id": _candidate_id(x, config), "text_id": x["id"], "text": x["text"],
                           "instruction": instruction.strip()}
                    store.write(row if fit else {**row, "skipped": TOO_LONG_TO_BACK_TRANSLATE})
        by_id = {c["id"]: c for c in store}
    return [by_id[i] for i in wanted]


def _complete_fitting(model: Teacher, requests: list[ChatRequest]) -> tuple[list[str], list[bool]]:
    """``model``'s replies to the requests that fit its context (``""`` for the others), and
    which fit: one text too long for the model is skipped instead of failing the batch."""
    fits = [_fits(model, request) for request in requests]
    replies = iter(model.complete([r for r, fit in zip(requests, fits) if fit]) if any(fits) else [])
    return [next(replies) if fit else "" for fit in fits], fits


def _fits(model: Teacher, request: ChatRequest) -> bool:
    """Whether a local model's context holds the prompt and its longest reply (an endpoint's
    context is not known here: it is its own judge)."""
    generator = getattr(model, "generator", None)
    if not isinstance(generator, HFGenerator):
        return True
    limit = context_length(generator.model)
    return not limit or len(prompt_to_ids(generator.tokenizer, request.messages)) + request.max_tokens <= limit


def usable(texts: list[dict], config: BackTranslateConfig) -> tuple[list[dict], Counter]:
    """Texts worth back-translating, and the others counted by reason."""
    kept, dropped, seen = [], Counter(), set()
    for x in texts:
        if not x["text"].strip():
            dropped["empty text"] += 1
        elif len(x["text"]) > config.max_text_chars:
            dropped["text too long"] += 1
        elif _candidate_id(x, config) in seen:
            dropped["duplicate text"] += 1
        else:
            seen.add(_candidate_id(x, config))
            kept.append(x)
    return kept, dropped


def _scorer(config: BackTranslateConfig, teacher: Teacher | None, work: Path, t: int,
            seeds: list[Conversation], curated: list[Conversation]) -> Teacher:
    """Iteration ``t``'s rater: the teacher, or M_t (M_0: seeds only; M_t: seeds + curated_{t-1})."""
    if config.scorer == "teacher":
        return teacher or make_teacher(config.teacher)
    if t == 0 and config.forward_model:
        return _model_teacher(config.forward_model, config)
    if t > 0 and config.tag_sources:
        seeds, curated = _tagged(seeds, SEED_TAG), _tagged(curated, AUGMENTED_TAG)
    return _model_teacher(train_stage(work / f"forward_{t}", seeds + curated, config, config.forward), config)


def _tagged(conversations: list[Conversation], tag: str) -> list[Conversation]:
    return [Conversation([Message("system", tag)] + c.messages, id=c.id, source=c.source, meta=c.meta)
            for c in conversations]


def _rating_messages(config: BackTranslateConfig, t: int, candidate: dict) -> list[Message]:
    """The rating request; a tagged M_t (t >= 1) is asked in its seed (AI assistant) mode."""
    prompt = RATING_TEMPLATE.format(instruction=candidate["instruction"], answer=candidate["text"])
    tagged = config.tag_sources and t > 0 and config.scorer == "forward"
    return ([Message("system", SEED_TAG)] if tagged else []) + [Message("user", prompt)]


def rate(config: BackTranslateConfig, t: int, scorer: Teacher, candidates: list[dict], path: Path,
         report: SynthReport) -> dict[str, dict]:
    """Self-curation ratings of every candidate with an instruction: ``{candidate id:
    {"id", "score": 1-5 or None, "rating": raw text}}`` (resumable store at ``path``)."""
    with RecordStore(path) as store:
        todo = [c for c in candidates if c["instruction"] and c["id"] not in store]
        for start in tqdm(range(0, len(todo), config.batch_size), desc="back-translate: ratings",
                          unit="batch", disable=not config.progress or not todo):
            batch = todo[start:start + config.batch_size]
            ratings, fits = _complete_fitting(scorer, [ChatRequest(
                _rating_messages(config, t, c), temperature=config.temperature, max_tokens=config.rating_max_tokens, seed=config.seed)
                for c in batch])
            report.requests += sum(fits)
            for c, rating, fit in zip(batch, ratings, fits):
                row = {"id": c["id"], "score": parse_score(rating) if fit else None, "rating": rating}
                store.write(row if fit else {**row, "skipped": TOO_LONG_TO_RATE})
        return {r["id"]: r for r in store}


def curate(config: BackTranslateConfig, t: int, candidates: list[dict], scores: dict[str, dict],
           texts: list[dict], target: Path, scorer_name: str, backward_name: str,
           report: SynthReport | None) -> tuple[list[Conversation], Counter]:
    """Keep candidates rated ``>= threshold`` into ``target``; count every other text by reason.

    ``len(kept) + sum(counts.values()) == len(texts)`` always. ``report`` (final iteration) gets
    ``written`` (new records) and ``total``.
    """
    counts = usable(texts, config)[1]
    kept = []
    with RecordStore(target) as store:
        for c in candidates:
            rating = scores.get(c["id"], {})
            score = rating.get("score")
            if c.get("skipped"):
                counts[c["skipped"]] += 1
            elif not c["instruction"]:
                counts["empty instruction"] += 1
            elif rating.get("skipped"):
                counts[rating["skipped"]] += 1
            elif score is None:
                counts["unparseable score"] += 1
            elif score < config.threshold:
                counts["below threshold"] += 1
            else:
                conversation = _record(config, t, c, score, scorer_name, backward_name)
                written = store.write(conversation.to_dict())
                if report is not None:
                    report.written += written
                kept.append(conversation)
        if report is not None:
            report.total = len(store)
    return kept, counts


def _candidate_id(text: dict, config: BackTranslateConfig) -> str:
    return stable_id("back-translate/candidate", text["id"], text["text"], config.seed, config.temperature)


def _record(config: BackTranslateConfig, t: int, candidate: dict, score: int, scorer_name: str,
            backward_name: str) -> Conversation:
    return Conversation(
        [Message("user", candidate["instruction"]), Message("assistant", candidate["text"])],
        id=stable_id("back-translate", t, candidate["id"], candidate["instruction"]),
        source="back-translate",
        meta={"text_id": candidate["text_id"], "score": score, "provenance": {
            "pipeline": "back-translate", "teacher": scorer_name, "backward_model": backward_name,
            "template_version": TEMPLATE_VERSION, "seed": config.seed, "round": t, "iteration": t,
            "score": score}})
