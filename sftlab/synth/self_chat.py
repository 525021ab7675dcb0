"""Self-chat (Baize, Xu et al. 2023): the teacher writes both sides of a conversation that
starts from a seed topic, in the Baize transcript format ([Human] ... [AI] ...).

The transcript is extended until the teacher ends it (no new human turn, or a human turn
that only says goodbye or is empty) or ``max_turns`` human turns are reached; the result is
a multi-turn conversation that ends on an assistant turn. Each topic is chatted about once
per output and seed: records are keyed by ``resume_ids`` (a row's own id, else its content).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tqdm import tqdm

from sftlab.data.prompts import read_prompts
from sftlab.synth.base import SynthReport, make_teacher, pipeline, provenance, resume_ids
from sftlab.synth.client import ChatRequest, Teacher, TeacherConfig
from sftlab.synth.store import RecordStore, stable_id
from sftlab.types import Conversation, Message

TEMPLATE_VERSION = "self-chat/v1"
SELF_CHAT_TEMPLATE = (
    "The following is a conversation between a human and an AI assistant named Baize (and you are "
    "Baize). The human and the AI assistant take turns chatting. Human statements start with "
    "[Human] and AI assistant statements start with [AI]. The human will ask related questions on "
    "related topics or the previous conversation. The human will stop the conversation when they "
    "have no more questions. The AI assistant tries not to ask questions. Complete the transcript "
    "in exactly that format.\n[Human] Hello!\n[AI] Hi! How can I help you?\n"
)
_TURN = re.compile(r"\[(Human|AI)\]\s*")
_GOODBYE = re.compile(r"^(bye|goodbye|thanks?( you)?[.!]*|no more questions?[.!]*)$", re.IGNORECASE)


@dataclass
class SelfChatConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The model that writes both sides of each chat."""
    prompts: str = "topics.jsonl"
    """Seed topics: a prompt file with `prompt` (or `instruction`, or `messages`) rows, e.g. a
    Quora or Stack Overflow question; the last user turn of each row is the topic."""
    output: str = "self_chat.jsonl"
    """JSONL file of the conversations (append-only: a rerun resumes it)."""
    max_turns: int = 4
    """Most human turns per conversation."""
    max_calls: int = 4
    """Most teacher calls per conversation (each continues the transcript)."""
    temperature: float = 0.7
    """Teacher sampling temperature (0 = greedy)."""
    max_tokens: int = 1024
    """Longest continuation per teacher call, in tokens."""
    seed: int = 0
    """Teacher sampling seed (call k of a chat uses seed + k)."""


def parse_transcript(text: str) -> list[Message]:
    """``[Human] a [AI] b`` -> user/assistant messages, stopping at the end signal.

    >>> [m.role for m in parse_transcript("[Human] Hi\\n[AI] Hello\\n[Human] Bye\\n")]
    ['user', 'assistant']
    """
    parts = _TURN.split(text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        role = "user" if speaker == "Human" else "assistant"
        if role == "user" and (not content or _GOODBYE.match(content)):
            break
        if not content:
            break
        messages.append(Message(role, content))
    return messages


@pipeline("self-chat", SelfChatConfig)
def run(config: SelfChatConfig, teacher: Teacher | None = None) -> SynthReport:
    teacher = teacher or make_teacher(config.teacher)
    report = SynthReport("self-chat")
    topics = read_prompts(config.prompts)
    record_ids = [stable_id("self-chat", key, topic.text, config.seed)
                  for key, topic in zip(resume_ids(topics, config.prompts), topics)]
    with RecordStore(config.output) as store:
        for topic, record_id in tqdm(list(zip(topics, record_ids)), desc="self-chat", unit="chat"):
            if record_id in store:
                continue
            messages, calls = _chat(config, teacher, topic.text)
            report.requests += calls
            while messages and messages[-1].role != "assistant":
                messages.pop()
            if len(messages) < 2:
                report.rejected["no complete exchange"] += 1
                continue
            conversation = Conversation(messages, id=record_id, source=f"self-chat:{teacher.model}",
                                        meta={"topic": topic.text, "provenance": provenance(
                                            "self-chat", teacher, TEMPLATE_VERSION, config.seed, 0)})
            store.write(conversation.to_dict())
            report.written += 1
        report.total = len(store)
    report.count_refusals(teacher)
    return report


def _chat(config: SelfChatConfig, teacher: Teacher, topic: str) -> tuple[list[Message], int]:
    transcript = f"{SELF_CHAT_TEMPLATE}[Human] {topic.strip()}\n"
    messages = [Message("user", topic.strip())]
    for call in range(1, config.max_calls + 1):
        continuation = teacher.complete([ChatRequest(
            [Message("user", transcript)], temperature=config.temperature,
            max_tokens=config.max_tokens, seed=config.seed + call)])[0]
        if not continuation.lstrip().startswith("["):
            continuation = "[AI] " + continuation.lstrip()
        new = parse_transcript(continuation)
        # roles must alternate with what we have; drop a repeated role the teacher produced
        added = 0
        for message in new:
            if message.role == messages[-1].role:
                break
            messages.append(message)
            added += 1
            transcript += f"[{'Human' if message.role == 'user' else 'AI'}] {message.content}\n"
            if sum(m.role == "user" for m in messages) >= config.max_turns and message.role == "assistant":
                return messages, call
        # the teacher ends a chat by stopping after an [AI] turn or with a goodbye / empty turn
        ended = added < len(new) or not new or new[-1].role == "assistant" \
            or len(_TURN.split(continuation)) // 2 > len(new)
        if ended:
            return messages, call
    return messages, config.max_calls
