"""SPIN: self-play fine-tuning (Chen et al. 2024) on an SFT data set, no teacher needed.

For ``t = 0 .. iterations-1``, starting from the SFT model ``θ_0`` (``model``):

1. **generate**: ``θ_t`` answers every prompt of the SFT data (greedy or sampled);
2. **pair**: real = the human (SFT) response, generated = ``θ_t``'s response; both are
   tokenized with only the response labelled, and ``θ_t``'s sequence log-probs of both
   are computed once (frozen, no grad): ``θ_t`` is the reference of this iteration;
3. **train** ``θ_{t+1}`` from ``θ_t`` with the SPIN loss (``sftlab.train.pairwise``) for
   ``train.epochs`` epochs, and save it to ``output_dir/iter_{t+1}`` (a full Hugging Face
   model directory; LoRA/DoRA/IA3 adapters are merged first so the next iteration starts
   from a plain model).

Pairs are written to ``output`` (append-only JSONL, one line per pair and iteration) in
the conversational preference layout (``prompt`` messages, ``chosen`` = real,
``rejected`` = generated) with the reference log-probs and provenance in ``meta``::

    {"id": "9c0f...", "prompt": [{"role": "user", "content": "Describe ..."}],
     "chosen": [{"role": "assistant", "content": "Making crepes is ..."}],
     "rejected": [{"role": "assistant", "content": "Crepes are ..."}],
     "meta": {"iteration": 0, "example_id": "alpaca_en_demo-0", "ref_logp_chosen": -812.4,
              "ref_logp_rejected": -95.1, "provenance": {"pipeline": "spin", ...}}}

Rerunning resumes: a finished iteration (``iter_{t+1}/spin_iteration.json``) is skipped,
and pairs already in ``output`` are not generated again. Raising ``iterations`` and
rerunning continues from the last saved model.

    sftlab synth spin model=runs/sft data=alpaca_en_demo.json iterations=2 \\
        output_dir=runs/spin output=runs/spin/pairs.jsonl train.optim.lr=1e-6
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.data.synth.base import SynthReport, pipeline
from sftlab.data.synth.store import RecordStore, stable_id
from sftlab.errors import ConfigError
from sftlab.train.pairwise import Pair, PairTrainConfig
from sftlab.types import Conversation, Message

TEMPLATE_VERSION = "spin/v1"
MARKER = "spin_iteration.json"
# methods whose result is a plain model after merging (the next iteration's θ_t)
MERGEABLE = {"full", "freeze", "lora", "dora", "ia3"}


@dataclass
class SpinGeneration:
    temperature: float = 0.0
    """0 = greedy (deterministic y'); above 0 samples with ``top_p``, seeded by ``seed + t``."""
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 8


@dataclass
class SpinConfig:
    model: str = "default"
    """θ_0: the SFT model (``tiny``, ``default``, a model or run directory)."""
    data: str = "sft.jsonl"
    """The SFT data (any format ``sftlab data`` reads); the last assistant turn is 'real'."""
    limit: int | None = None
    """Use only the first N conversations."""
    output: str = "runs/spin/pairs.jsonl"
    output_dir: str = "runs/spin"
    """Models of each iteration: ``iter_1`` ... ``iter_T``."""
    iterations: int = 1
    generation: SpinGeneration = field(default_factory=SpinGeneration)
    train: PairTrainConfig = field(default_factory=PairTrainConfig)
    device: str = "cpu"
    """Where generation and training run (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.train.method.name not in MERGEABLE:
            raise ConfigError(f"train.method.name={self.train.method.name!r}: SPIN saves a full "
                              f"model every iteration; use one of {sorted(MERGEABLE)}")


@pipeline("spin", SpinConfig)
def run(config: SpinConfig) -> SynthReport:
    """All iterations; returns the report (``extra["iterations"]``: per-iteration metrics)."""
    from sftlab.models import load_tokenizer

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


def sft_examples(config: SpinConfig, report: SynthReport) -> list[tuple[str, list[Message], str]]:
    """``(example_id, prompt messages, real response)`` per conversation: the prompt is
    everything before the LAST assistant turn. Conversations without one are counted."""
    from sftlab.data.io import read_conversations

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
    return examples


def iteration_pairs(config: SpinConfig, t: int, source: str, tokenizer, examples, store: RecordStore,
                    report: SynthReport) -> list[Pair]:
    """Generate with θ_t what ``store`` lacks, score both sides with θ_t (the frozen
    reference), write the records; return this iteration's pairs, with reference log-probs."""
    from tqdm.auto import tqdm

    from sftlab.infer.base import SamplingConfig
    from sftlab.infer.hf import HFGenerator
    from sftlab.models import load_model
    from sftlab.train.pairwise import reference_logps

    todo = [e for e in examples if _record_id(config, t, e) not in store]
    if todo:
        model = load_model(source, device=config.device)
        generator = HFGenerator(model, tokenizer, batch_size=config.generation.batch_size)
        sampling = SamplingConfig(max_new_tokens=config.generation.max_new_tokens,
                                  temperature=config.generation.temperature,
                                  top_p=config.generation.top_p, seed=config.seed + t)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        size = config.generation.batch_size
        for start in tqdm(range(0, len(todo), size), desc=f"spin generate (iteration {t})",
                          unit="batch", disable=not config.progress):
            batch = todo[start:start + size]
            texts = [g.text.strip() for g in generator.generate([e[1] for e in batch], sampling)]
            report.requests += len(batch)
            records = [_record(config, t, source, e, text) for e, text in zip(batch, texts)]
            made = [(r, _pair(r, tokenizer, config.train.max_length, report)) for r in records]
            made = [(r, p) for r, p in made if p is not None]
            reference_logps(model, [p for _, p in made], pad_id, config.train.batch_size)
            for record, pair in made:
                record["meta"].update(ref_logp_chosen=pair.ref_real, ref_logp_rejected=pair.ref_generated)
                report.written += store.write(record)
        del generator, model
    pairs = []
    for record in store:
        if record["meta"]["iteration"] == t:
            pair = _pair(record, tokenizer, config.train.max_length, None)
            if pair is not None:
                pair.ref_real = record["meta"]["ref_logp_chosen"]
                pair.ref_generated = record["meta"]["ref_logp_rejected"]
                pairs.append(pair)
    return pairs


def train_iteration(config: SpinConfig, t: int, source: str, tokenizer, pairs: list[Pair],
                    saved: Path) -> dict:
    """θ_{t+1} = θ_t trained with the SPIN loss on ``pairs``; saved as a full model + tokenizer."""
    from sftlab.models import load_model
    from sftlab.train.pairwise import train_pairs

    model = load_model(source, device=config.device)
    prepared, history = train_pairs(model, tokenizer, pairs, config.train, progress=config.progress)
    trained = prepared.model.merge_and_unload() if prepared.kind == "peft" else prepared.model
    saved.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(str(saved))
    tokenizer.save_pretrained(str(saved))
    with (saved / "metrics.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in history)
    summary = {"iteration": t, "reference": source, "saved": str(saved), "pairs": len(pairs),
               "steps": len(history), "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
               "last_margin": history[-1]["margin"], "last_accuracy": history[-1]["accuracy"]}
    # written last: its presence means the iteration is complete
    (saved / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _record_id(config: SpinConfig, t: int, example) -> str:
    example_id, prompt, real = example
    return stable_id("spin", t, example_id, [m.to_dict() for m in prompt], real, config.seed,
                     config.generation.temperature)


def _record(config: SpinConfig, t: int, source: str, example, generated: str) -> dict:
    example_id, prompt, real = example
    return {"id": _record_id(config, t, example), "prompt": [m.to_dict() for m in prompt],
            "chosen": [{"role": "assistant", "content": real}],
            "rejected": [{"role": "assistant", "content": generated}],
            "meta": {"iteration": t, "example_id": example_id, "provenance": {
                "pipeline": "spin", "teacher": source, "template_version": TEMPLATE_VERSION,
                "seed": config.seed, "round": t}}}


def _pair(record: dict, tokenizer, max_length: int, report: SynthReport | None) -> Pair | None:
    """Tokenize both sides with only the final response labelled; None (counted) if either
    side would train nothing (e.g. truncated away)."""
    from sftlab.data.chat import tokenize_conversations

    prompt = [Message(m["role"], m["content"]) for m in record["prompt"]]
    sides = [Conversation(prompt + [Message("assistant", record[k][0]["content"])])
             for k in ("chosen", "rejected")]
    result = tokenize_conversations(sides, tokenizer, max_length=max_length, strategy="last_assistant")
    if len(result.examples) != 2:
        if report is not None:  # one count per pair, under the first side's reason
            report.rejected[f"pair dropped: {result.dropped_ids[0][1]}"] += 1
        return None
    return Pair(result.examples[0], result.examples[1], id=record["id"])
