"""SPIN: self-play fine-tuning (Chen et al. 2024) on an SFT data set, no teacher needed.

For ``t = 0 .. iterations-1``, starting from the SFT model ``θ_0`` (``model``):

1. **generate**: ``θ_t`` answers every prompt of the SFT data (greedy or sampled);
2. **pair**: real = the human (SFT) response, generated = ``θ_t``'s response; both are
   tokenized with only the response labelled, and ``θ_t``'s sequence log-probs of both
   are computed once (frozen, no grad): ``θ_t`` is the reference of this iteration;
3. **train** ``θ_{t+1}`` from ``θ_t`` with the SPIN loss for ``train.epochs`` epochs, with
   sftlab's one training loop (``sftlab.train.sft.train``, ``objective: spin``; the
   ``train`` section below becomes its ``TrainConfig``), and save it to
   ``output_dir/iter_{t+1}`` (a full Hugging Face model directory beside the loop's
   ``run.json``, ``metrics.jsonl`` and ``loss.png``; LoRA/DoRA/IA3 adapters are merged
   first so the next iteration starts from a plain model).

Pairs are written to ``output`` (append-only JSONL, one line per pair and iteration) in
the conversational preference layout (``prompt`` messages, ``chosen`` = real,
``rejected`` = generated) with the reference log-probs and provenance in ``meta``::

    {"id": "9c0f...", "prompt": [{"role": "user", "content": "Describe ..."}],
     "chosen": [{"role": "assistant", "content": "Making crepes is ..."}],
     "rejected": [{"role": "assistant", "content": "Crepes are ..."}],
     "meta": {"iteration": 0, "example_id": "alpaca_en_demo-0", "ref_logp_chosen": -812.4,
              "ref_logp_rejected": -95.1, "provenance": {"pipeline": "spin", ...}}}

The same file trains with ``sftlab train objective=spin data.paths=[runs/spin/pairs.jsonl]``
(one iteration's records at a time: its reference is that iteration's model).

Rerunning resumes: a finished iteration (``iter_{t+1}/spin_iteration.json``) is skipped,
and pairs already in ``output`` are not generated again: a pair is keyed by its
conversation's own ``id``, else by its content, so a reordered, prepended or renamed data
file resumes too. Raising ``iterations`` and rerunning continues from the last saved model.

    sftlab synth spin model=runs/sft data=alpaca_en_demo.json iterations=2 \\
        output_dir=runs/spin output=runs/spin/pairs.jsonl train.optim.lr=1e-6
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sftlab.data.io import read_conversations
from sftlab.errors import ConfigError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.models import load_model, load_tokenizer, pad_id
from sftlab.synth.base import SynthReport, content_ids, has_default_id, pipeline
from sftlab.synth.store import RecordStore, stable_id
from sftlab.train.checkpoint import quiet_transformers
from sftlab.train.config import (DataSection, MethodConfig, ModelSection, OptimSection,
                                 SpinSection, TrainConfig)
from sftlab.train.pairwise import Pair, pair_from_record, reference_logps
from sftlab.train.sft import train
from sftlab.types import Message

TEMPLATE_VERSION = "spin/v1"
MARKER = "spin_iteration.json"
# methods whose result is a plain model after merging (the next iteration's θ_t)
MERGEABLE = {"full", "freeze", "lora", "dora", "ia3"}


@dataclass
class SpinGeneration:
    """The ``generation`` section: how θ_t writes its own responses."""

    temperature: float = 0.0
    """0 = greedy (deterministic y'); above 0 samples with ``top_p``, seeded by ``seed + t``."""
    top_p: float = 1.0
    """Nucleus-sampling threshold (with temperature above 0)."""
    max_new_tokens: int = 256
    """Longest generated response, in tokens."""
    batch_size: int = 8
    """Prompts generated together."""


@dataclass
class SpinTrain:
    """The ``train`` section: what each iteration's ``TrainConfig`` (``objective: spin``) gets."""

    beta: float = 0.1
    """Inverse temperature of the logistic loss (SPIN's λ^-1; the paper uses 0.1)."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """``full``, ``freeze``, or a PEFT method merged after training (``lora``, ``dora``, ``ia3``)."""
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=5e-7, schedule="linear",
                                                                     warmup_ratio=0.1))
    """The SPIN paper trains at lr 5e-7 (RMSProp) with a linear schedule and 10% warm-up;
    sftlab's optimizers are AdamW or SGD, so tune ``lr`` for yours."""
    epochs: int = 2
    """Passes over the pairs per iteration."""
    batch_size: int = 8
    """Pairs per micro-batch."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step (pairs per step = batch_size x this)."""
    max_length: int = 1024
    """Prompt + response tokens; longer examples are truncated (a pair losing all of a
    response's labels is dropped)."""
    seed: int = 0
    """Training seed (data order, dropout)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("train.epochs, train.batch_size and train.grad_accumulation must be "
                             "at least 1")


@dataclass
class SpinConfig:
    model: str = "default"
    """θ_0: the SFT model (``tiny``, ``default``, a model or run directory)."""
    data: str = "sft.jsonl"
    """The SFT data (any format ``sftlab data`` reads); the last assistant turn is 'real'."""
    limit: int | None = None
    """Use only the first N conversations."""
    output: str = "runs/spin/pairs.jsonl"
    """JSONL file of the (real, generated) pairs of every iteration (append-only: reruns resume)."""
    output_dir: str = "runs/spin"
    """Models of each iteration: ``iter_1`` ... ``iter_T``."""
    iterations: int = 1
    """Self-play iterations T (each generates, pairs and trains once)."""
    generation: SpinGeneration = field(default_factory=SpinGeneration)
    """How each iteration's model writes its responses."""
    train: SpinTrain = field(default_factory=SpinTrain)
    """How each iteration trains (SPIN loss, method, optimizer, batch)."""
    device: str = "cpu"
    """Where generation and the reference log-probs run (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``). Training runs where the training loop's accelerate puts it (the GPU when
    there is one)."""
    seed: int = 0
    """Sampling seed (iteration t samples with seed + t)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.train.method.name not in MERGEABLE:
            raise ConfigError(f"train.method.name={self.train.method.name!r}: SPIN saves a full "
                              f"model every iteration; use one of {sorted(MERGEABLE)}")


@pipeline("spin", SpinConfig)
def run(config: SpinConfig) -> SynthReport:
    """All iterations; returns the report (``extra["iterations"]``: per-iteration metrics)."""
    report = SynthReport("spin", extra={"iterations": []})
    examples = sft_examples(config, report)
    out = Path(config.output_dir)
    with RecordStore(config.output) as store:
        for t in range(config.iterations):
            saved = out / f"iter_{t + 1}"
            if (saved / MARKER).exists():
                report.extra["iterations"].append(json.loads((saved / MARKER).read_text()))
                continue
            source = config.model if t == 0 else str(out / f"iter_{t}")
            tokenizer = load_tokenizer(source)
            pairs = iteration_pairs(config, t, source, tokenizer, examples, store, report)
            report.extra["iterations"].append(train_iteration(config, t, source, tokenizer, pairs, saved))
        report.total = len(store)
    return report


def sft_examples(config: SpinConfig, report: SynthReport) -> list[tuple[str, list[Message], str, str]]:
    """``(example_id, prompt messages, real response, key)`` per conversation: the prompt is
    everything before the LAST assistant turn; ``key`` (what its pairs' ids come from) is the
    conversation's own id, else a hash of prompt and response (``content_ids``), which stays
    when the data file is reordered or renamed. Conversations without one are counted."""
    conversations = read_conversations(config.data).conversations[:config.limit]
    examples = []
    for index, conversation in enumerate(conversations):
        last = max((i for i, m in enumerate(conversation.messages) if m.role == "assistant"), default=-1)
        if last < 1 or not any(m.role == "user" for m in conversation.messages[:last]):
            report.rejected["no user turn before an assistant turn"] += 1
            continue
        examples.append((conversation.id or f"#{index}", conversation.messages[:last],
                         conversation.messages[last].content))
    if not examples:
        raise ConfigError(f"{config.data}: no conversation with a user and an assistant turn")
    keys = content_ids([(None if not conversation_id or has_default_id(conversation_id, config.data)
                         or conversation_id.startswith("#") else conversation_id,
                         [[m.to_dict() for m in prompt], real]) for conversation_id, prompt, real in examples])
    return [example + (key,) for example, key in zip(examples, keys)]


def iteration_pairs(config: SpinConfig, t: int, source: str, tokenizer, examples, store: RecordStore,
                    report: SynthReport) -> list[Pair]:
    """Generate with θ_t what ``store`` lacks, score both sides with θ_t (the frozen
    reference), write the records; return this iteration's pairs, with reference log-probs."""
    todo = [e for e in examples if _record_id(config, t, e) not in store]
    if todo:
        model = load_model(source, device=config.device)
        generator = HFGenerator(model, tokenizer, batch_size=config.generation.batch_size)
        sampling = SamplingConfig(max_new_tokens=config.generation.max_new_tokens,
                                  temperature=config.generation.temperature,
                                  top_p=config.generation.top_p, seed=config.seed + t)
        padding = pad_id(tokenizer)
        size = config.generation.batch_size
        for start in tqdm(range(0, len(todo), size), desc=f"spin generate (iteration {t})",
                          unit="batch", disable=not config.progress):
            batch = todo[start:start + size]
            texts = [g.text.strip() for g in generator.generate([e[1] for e in batch], sampling)]
            report.requests += len(batch)
            records = [_record(config, t, source, e, text) for e, text in zip(batch, texts)]
            made = [(r, _pair(r, tokenizer, config.train.max_length, report)) for r in records]
            made = [(r, p) for r, p in made if p is not None]
            reference_logps(model, [p for _, p in made], padding, config.train.batch_size)
            for record, pair in made:
                record["meta"].update(ref_logp_chosen=pair.ref_real, ref_logp_rejected=pair.ref_generated)
                report.written += store.write(record)
        del generator, model
    # reference log-probs come from each record's meta (pair_from_record reads them)
    pairs = [_pair(r, tokenizer, config.train.max_length, None) for r in store
             if r["meta"]["iteration"] == t]
    return [p for p in pairs if p is not None]


def train_iteration(config: SpinConfig, t: int, source: str, tokenizer, pairs: list[Pair],
                    saved: Path) -> dict:
    """θ_{t+1} = θ_t trained with the SPIN loss on ``pairs`` by the main training loop;
    saved as a full model + tokenizer in ``saved`` (with the loop's run files)."""
    if not pairs:
        raise ConfigError(f"iteration {t}: no training pair (every pair was dropped; "
                          "raise train.max_length?)")
    (saved / "metrics.jsonl").unlink(missing_ok=True)  # an unfinished try's rows: redone
    model = load_model(source, device=config.device)
    result = train(iteration_train_config(config, source, saved), model=model,
                   tokenizer=tokenizer, train_examples=pairs)
    prepared, history = result.prepared, result.history
    trained = prepared.model.merge_and_unload() if prepared.kind == "peft" else prepared.model
    with quiet_transformers():  # no "Writing model shards" bar
        trained.save_pretrained(str(saved))
    tokenizer.save_pretrained(str(saved))
    summary = {"iteration": t, "reference": source, "saved": str(saved), "pairs": len(pairs),
               "steps": len(history), "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
               "last_margin": history[-1]["margin"], "last_accuracy": history[-1]["accuracy"]}
    # written last: its presence means the iteration is complete
    (saved / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def iteration_train_config(config: SpinConfig, source: str, saved: Path):
    """The ``TrainConfig`` of one iteration: ``objective: spin`` with the ``train`` section's
    settings, one log row per step, run files in ``saved`` (the model is saved merged by
    ``train_iteration``, not by the loop)."""
    section = config.train
    return TrainConfig(
        model=ModelSection(name=source), data=DataSection(max_length=section.max_length),
        method=section.method, optim=section.optim, objective="spin",
        spin=SpinSection(beta=section.beta), batch_size=section.batch_size,
        grad_accumulation=section.grad_accumulation, epochs=section.epochs, seed=section.seed,
        log_every=1, output_dir=str(saved), save_model=False, progress=config.progress)


def _record_id(config: SpinConfig, t: int, example) -> str:
    _, prompt, real, key = example
    return stable_id("spin", t, key, [m.to_dict() for m in prompt], real, config.seed,
                     config.generation.temperature)


def _record(config: SpinConfig, t: int, source: str, example, generated: str) -> dict:
    example_id, prompt, real, _ = example
    return {"id": _record_id(config, t, example), "prompt": [m.to_dict() for m in prompt],
            "chosen": [{"role": "assistant", "content": real}],
            "rejected": [{"role": "assistant", "content": generated}],
            "meta": {"iteration": t, "example_id": example_id, "provenance": {
                "pipeline": "spin", "teacher": source, "template_version": TEMPLATE_VERSION,
                "seed": config.seed, "round": t}}}


def _pair(record: dict, tokenizer, max_length: int, report: SynthReport | None) -> Pair | None:
    """Tokenize both sides with only the final response labelled (``pair_from_record``, as
    ``sftlab train objective=spin`` reads the file); None (counted) if either side would
    train nothing (e.g. truncated away)."""
    pair, reason = pair_from_record(record, tokenizer, max_length)
    if pair is None and report is not None:
        report.rejected[reason] += 1
    return pair
