"""Distillation (Alpaca / GPT-4-LLM style): a teacher answers a set of instructions.

With ``orca_system_prompts`` on, each instruction gets one of several system messages
asking for explanations and step-by-step reasoning (Orca, Mukherjee et al. 2023), chosen
deterministically from the instruction id, and the system message is kept in the record.
A prompt row's own system turn (and any earlier turns) go to the teacher and into the
record as they are; an Orca system prompt is only added to a prompt without one.
A prompt is answered once per output: its record id comes from ``resume_ids`` (its own
``id``, else its content), so a reordered, prepended or renamed prompt file resumes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from tqdm import tqdm

from sftlab.data.prompts import PromptRow, read_prompts
from sftlab.synth.base import SynthReport, make_teacher, pipeline, prompt_key, provenance, resume_ids
from sftlab.synth.client import ChatRequest, Teacher, TeacherConfig
from sftlab.synth.store import RecordStore, stable_id
from sftlab.types import Conversation, Message

TEMPLATE_VERSION = "distill/v1"
ORCA_SYSTEM_PROMPTS = (
    "You are an AI assistant. Provide a detailed answer so the user does not need to search "
    "elsewhere to understand it.",
    "You are an AI assistant. The user will give you a task. Complete it as faithfully as you "
    "can. While performing the task, think step by step and justify your steps.",
    "You are a helpful assistant who always explains the reasoning behind an answer.",
    "You are a teacher. Explain the task in simple steps: what it asks, any guidelines it gives, "
    "and how you use them to find the answer.",
    "You are an AI assistant that helps people find information. Think step by step before "
    "giving the final answer.",
)


@dataclass
class DistillConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The model that writes the answers."""
    prompts: str = "instructions.jsonl"
    """Prompt file (JSON list or JSONL): rows with `instruction` (+ `input`), `prompt`, or
    `messages` (the conversation up to its last user turn is the prompt)."""
    output: str = "distilled.jsonl"
    """JSONL file of the answered conversations (append-only: a rerun resumes it)."""
    orca_system_prompts: bool = False
    """Give each prompt without a system turn one of Orca's explain-your-reasoning system prompts."""
    temperature: float = 0.7
    """Teacher sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Teacher nucleus-sampling threshold."""
    max_tokens: int = 1024
    """Longest answer, in tokens."""
    batch_size: int = 16
    """Prompts sent to the teacher per batch."""
    min_response_chars: int = 1
    """Answers shorter than this (after stripping) are rejected."""
    seed: int = 0
    """Teacher sampling seed, also picks the Orca system prompt of each instruction."""


@pipeline("distill", DistillConfig)
def run(config: DistillConfig, teacher: Teacher | None = None) -> SynthReport:
    teacher = teacher or make_teacher(config.teacher)
    report = SynthReport("distill")
    prompts = read_prompts(config.prompts)
    keyed = list(zip(prompts, resume_ids(prompts, config.prompts)))
    with RecordStore(config.output) as store:
        todo = [(p, key) for p, key in keyed if _record_id(p, key, config) not in store]
        progress = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="distill", unit="answer")
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            messages = [_messages(p, key, config) for p, key in batch]
            answers = teacher.complete([
                ChatRequest(m, temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_tokens, seed=config.seed) for m in messages])
            report.requests += len(batch)
            for (prompt, key), turns, answer in zip(batch, messages, answers):
                progress.update(1)
                if len(answer.strip()) < config.min_response_chars:
                    report.rejected["empty or too short response"] += 1
                    continue
                conversation = Conversation(
                    turns + [Message("assistant", answer.strip())], id=_record_id(prompt, key, config),
                    source=f"distill:{teacher.model}",
                    meta={"prompt_id": prompt.id,
                          "provenance": provenance("distill", teacher, TEMPLATE_VERSION, config.seed, 0)})
                store.write(conversation.to_dict())
                report.written += 1
        progress.close()
        report.total = len(store)
    report.count_refusals(teacher)
    return report


def _record_id(prompt: PromptRow, key: str, config: DistillConfig) -> str:
    """``key`` is the prompt's ``resume_ids`` id (for a row with its own id, ``prompt.id``:
    the ids such records always had)."""
    return stable_id("distill", key, prompt_key(prompt), config.orca_system_prompts, config.seed)


def _messages(prompt: PromptRow, key: str, config: DistillConfig) -> list[Message]:
    """The prompt's turns, with an Orca system prompt first when asked for and it has none
    (chosen from ``key``, which stays when the file is reordered or renamed)."""
    turns = list(prompt.messages)
    if config.orca_system_prompts and turns[0].role != "system":
        system = random.Random(f"{config.seed}:{key}").choice(ORCA_SYSTEM_PROMPTS)
        turns.insert(0, Message("system", system))
    return turns
