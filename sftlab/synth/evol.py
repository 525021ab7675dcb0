"""Evol-Instruct (WizardLM, Xu et al. 2023): evolve instructions into harder and rarer ones.

Each of ``rounds`` rounds takes every surviving instruction of the previous round, applies
one operator chosen at random (in-depth: add constraints, deepen, concretize, increase
reasoning steps, complicate the input; or in-breadth mutation), answers the evolved
instruction with the teacher, and eliminates failed evolutions as the paper does:
  1. no information gain over the original (the teacher judges the two as equal),
  2. the response is a refusal ("sorry") and short (< 80 words), or empty,
  3. the response holds only punctuation and stop words,
  4. the evolved instruction copies the evolving prompt's wording ("#Rewritten Prompt#", ...).
Eliminated instructions are counted by reason; the original stays in the pool for the next
round, as in the paper. What evolves is each prompt row's last user turn (an Alpaca
instruction with its input); a system turn or earlier turns of the row are not used.
Each row's lineage is keyed by its ``resume_ids`` id (its own ``id``, else its content), so
a reordered, prepended or renamed prompt file resumes it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from tqdm import tqdm

from sftlab.data.prompts import read_prompts
from sftlab.errors import ConfigError
from sftlab.synth.base import SynthReport, make_teacher, pipeline, provenance, resume_ids
from sftlab.synth.client import ChatRequest, Teacher, TeacherConfig
from sftlab.synth.store import RecordStore, stable_id
from sftlab.types import Conversation, Message

TEMPLATE_VERSION = "evol-instruct/v1"

_DEPTH = (
    "Act as a prompt rewriter. Rewrite the given prompt into a more complex version that famous "
    "AI systems would find a bit harder to handle, while staying reasonable and answerable by "
    "humans. Keep every non-text part (tables, code) and any input of the given prompt. "
    "Complicate it with this method:\n{method}\n"
    "Add only 10 to 20 words. Do not mention 'given prompt' or 'rewritten prompt'.\n\n"
    "#Given Prompt#:\n{instruction}\n\n#Rewritten Prompt#:\n"
)
DEPTH_METHODS = {
    "add_constraints": "Add one more constraint or requirement.",
    "deepen": "If the prompt asks about a certain issue, increase the depth and breadth of the inquiry.",
    "concretize": "Replace general concepts with more specific ones.",
    "increase_reasoning": "If the prompt can be solved with a few simple thinking steps, rewrite it "
                          "to explicitly ask for multiple-step reasoning.",
    "complicate_input": "Add a more complex input to the prompt, such as a table, code or data, "
                        "that the answer must use.",
}
_BREADTH = (
    "Act as a prompt creator. Draw inspiration from the given prompt to create a brand new prompt "
    "in the same domain but rarer, of similar length and complexity, reasonable and answerable by "
    "humans. Do not mention 'given prompt' or 'created prompt'.\n\n"
    "#Given Prompt#:\n{instruction}\n\n#Created Prompt#:\n"
)
_EQUALITY = (
    "Here are two instructions to ChatGPT AI. Do you think they are equal to each other, meeting "
    "these requirements:\n1. They have the same constraints and requirements.\n2. They have the "
    "same depth and breadth of the inquiry.\nThe first prompt: {first}\nThe second prompt: {second}\n"
    "Your judgement (just answer: Equal or Not Equal. No need to explain the reason.):"
)
OPERATORS = tuple(DEPTH_METHODS) + ("breadth",)
COPIED_WORDS = ("#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt",
                "rewritten prompt", "created prompt")
STOP_WORDS = set("a an the and or but if of to in on at by for with is are was were be been it this that "
                 "these those i you he she we they me him her us them my your our their as so not no".split())


@dataclass
class EvolConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The model that evolves, answers and judges the instructions."""
    prompts: str = "instructions.jsonl"
    """Prompt file of the instructions to evolve (JSON list or JSONL, any prompt row format;
    the last user turn of each row is the instruction)."""
    output: str = "evol.jsonl"
    """JSONL file of the evolved, answered instructions (append-only: a rerun resumes it)."""
    rounds: int = 3
    """Evolution rounds; each evolves the survivors of the previous one."""
    operators: list[str] = field(default_factory=lambda: list(OPERATORS))
    """Operators to draw from: add_constraints, deepen, concretize, increase_reasoning,
    complicate_input (in depth) and breadth (a new, rarer instruction)."""
    temperature: float = 0.7
    """Teacher sampling temperature (0 = greedy)."""
    max_tokens: int = 1024
    """Longest evolved instruction or answer, in tokens."""
    judge_equality: bool = True
    """Ask the teacher whether the evolved instruction equals the original (rule 1)."""
    seed: int = 0
    """Seed of the operator choice and of the teacher's sampling."""


def elimination_reason(original: str, evolved: str, response: str, judged_equal: bool) -> str | None:
    """Why an evolution failed, or None if it survives.

    >>> elimination_reason("Sum 2 and 3.", "#Rewritten Prompt#: Sum 2 and 3 please.", "5", False)
    'copies the evolving prompt'
    >>> elimination_reason("Sum 2 and 3.", "Sum 2 and 3, then square it.", "I'm sorry, I can't.", False)
    'refusal or too short response'
    """
    if not evolved.strip() or evolved.strip() == original.strip():
        return "no information gain"
    if any(word in evolved.lower() for word in COPIED_WORDS):
        return "copies the evolving prompt"
    if judged_equal:
        return "no information gain"
    words = response.split()
    if not words or ("sorry" in response.lower() and len(words) < 80):
        return "refusal or too short response"
    if all(w.strip(".,;:!?'\"()[]-").lower() in STOP_WORDS | {""} for w in words):
        return "only punctuation and stop words"
    return None


def evolve_prompt(operator: str, instruction: str) -> str:
    if operator == "breadth":
        return _BREADTH.format(instruction=instruction)
    return _DEPTH.format(method=DEPTH_METHODS[operator], instruction=instruction)


@pipeline("evol-instruct", EvolConfig)
def run(config: EvolConfig, teacher: Teacher | None = None) -> SynthReport:
    unknown = set(config.operators) - set(OPERATORS)
    if unknown:
        raise ConfigError(f"unknown evol operators {sorted(unknown)} (choose from: {', '.join(OPERATORS)})")
    teacher = teacher or make_teacher(config.teacher)
    report = SynthReport("evol-instruct")
    prompts = read_prompts(config.prompts)
    with RecordStore(config.output) as store:
        pool = list(zip(resume_ids(prompts, config.prompts), [prompt.text for prompt in prompts]))
        for round_index in tqdm(range(1, config.rounds + 1), desc="evol-instruct", unit="round"):
            pool = _evolve_round(config, teacher, pool, round_index, store, report)
        report.total = len(store)
    report.count_refusals(teacher)
    return report


def _evolve_round(config: EvolConfig, teacher: Teacher, pool: list[tuple[str, str]], round_index: int,
                  store: RecordStore, report: SynthReport) -> list[tuple[str, str]]:
    """One round over the pool; returns the next pool (survivors, or the original on failure).
    Every teacher call is deterministic in (instruction, operator, seed), so with the cache a
    resumed run repeats finished rounds for free and writes nothing twice."""
    operators = [random.Random(f"{config.seed}:{round_index}:{pid}").choice(config.operators) for pid, _ in pool]
    evolved = teacher.complete([
        ChatRequest([Message("user", evolve_prompt(op, text))], temperature=config.temperature,
                    max_tokens=config.max_tokens, seed=config.seed)
        for op, (_, text) in zip(operators, pool)])
    evolved = [_clean(e) for e in evolved]
    responses = teacher.complete([
        ChatRequest([Message("user", e)], temperature=config.temperature, max_tokens=config.max_tokens,
                    seed=config.seed) for e in evolved])
    equal = [False] * len(pool)
    if config.judge_equality:
        verdicts = teacher.complete([
            ChatRequest([Message("user", _EQUALITY.format(first=text, second=e))], temperature=0.0,
                        max_tokens=5, seed=config.seed) for (_, text), e in zip(pool, evolved)])
        equal = [v.strip().lower().startswith("equal") for v in verdicts]
    report.requests += len(pool) * (3 if config.judge_equality else 2)
    next_pool = []
    for (pid, text), op, new, response, same in zip(pool, operators, evolved, responses, equal):
        reason = elimination_reason(text, new, response, same)
        if reason:
            report.rejected[reason] += 1
            next_pool.append((pid, text))
            continue
        record_id = stable_id("evol-instruct", pid, round_index, new)
        conversation = Conversation(
            [Message("user", new), Message("assistant", response.strip())], id=record_id,
            source=f"evol-instruct:{teacher.model}",
            meta={"operator": op, "parent": text, "root_id": pid,
                  "provenance": provenance("evol-instruct", teacher, TEMPLATE_VERSION, config.seed, round_index)})
        if store.write(conversation.to_dict()):
            report.written += 1
        next_pool.append((pid, new))
    return next_pool


def _clean(text: str) -> str:
    """Drop a leading label the teacher may echo ("Rewritten Prompt:")."""
    return re.sub(r"^\s*#?\s*(rewritten|created) prompt#?\s*:?\s*", "", text.strip(), flags=re.IGNORECASE).strip()
