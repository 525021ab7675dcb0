"""Self-Instruct (Wang et al. 2022): grow a task pool from 175 human-written seed tasks.

Each round: (1) prompt the teacher with 8 in-context instructions (6 human, 2 generated
once available) to continue a numbered list of tasks; (2) filter the new instructions
(length, keyword blocklist, leading punctuation or non-English character, "Write a
program", duplicates, ROUGE-L >= 0.7 to anything in the pool); (3) ask whether each is a
classification task; (4) generate instances output-first for classification tasks
(class label, then an input for it) and input-first otherwise. Every rejection is counted
by reason. Records are written as they are accepted and a rerun continues the same pool.
"""
from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from tqdm import tqdm

from sftlab.data.io import read_rows
from sftlab.synth.base import SynthReport, make_teacher, pipeline, provenance
from sftlab.synth.client import ChatRequest, Teacher, TeacherConfig
from sftlab.synth.rouge import max_rouge_l, tokenize
from sftlab.synth.store import RecordStore, stable_id
from sftlab.types import Message

TEMPLATE_VERSION = "self-instruct/v1"
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
             "map", "maps", "draw", "plot", "go to")
_BLOCKLIST_RE = re.compile(r"\b(" + "|".join(map(re.escape, BLOCKLIST)) + r")\b", re.IGNORECASE)

CLASSIFY_PROMPT = """Can the following task be regarded as a classification task with finite output labels?

Task: Given my personality and the job, tell me if I would be suitable.
Is it classification? Yes

Task: Give me an example of a time when you had to use your sense of humor.
Is it classification? No

Task: Tell me if the sentence is factually correct. Yes or no?
Is it classification? Yes

Task: Write a short story about a dog who learns to fly.
Is it classification? No

Task: {instruction}
Is it classification?"""

INPUT_FIRST_PROMPT = """Come up with examples for the following tasks. Try to generate multiple examples when possible. If the task doesn't require additional input, you can generate the output directly.

Task: Which exercises are best for reducing belly fat at home?
Output:
- Lying leg raises
- Leg in and out
- Plank

Task: Sort the given list ascendingly.
Example 1
List: [10, 92, 2, 5, -4, 92, 5, 101]
Output: [-4, 2, 5, 5, 10, 92, 92, 101]
Example 2
Input 2 - List: [9.99, 10, -5, -1000, 5e6, 999]
Output: [-1000, -5, 9.99, 10, 999, 5e6]

Task: {instruction}
"""

OUTPUT_FIRST_PROMPT = """Given the classification task definition and the class labels, generate an input that corresponds to each of the class labels. If the task doesn't require input, just generate the correct class label.

Task: Classify the sentiment of the sentence into positive, negative, or mixed.
Class label: mixed
Sentence: I enjoy the flavor of the restaurant but their service is too slow.
Class label: Positive
Sentence: I had a great day today. The weather was beautiful and I spent time with friends.
Class label: Negative
Sentence: I was really disappointed by the latest superhero movie.

Task: Tell me if the following email is a promotion email or not.
Class label: Promotion
Email: Check out our amazing new sale! We've got discounts on all of your favorite products.
Class label: Not Promotion
Email: We hope you are doing well. Let us know if you need any help.

Task: {instruction}
"""


@dataclass
class SelfInstructConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The model that writes instructions, classifies them and writes their instances."""
    seed_tasks: str = "seed_tasks.jsonl"
    """Self-Instruct's seed file (instruction, instances, is_classification per row; JSONL or a JSON list)."""
    output: str = "self_instruct.jsonl"
    """JSONL file of the generated tasks (append-only: a rerun continues the same pool)."""
    num_instructions: int = 100
    """Stop once this many generated instructions are in the output file."""
    max_requests: int = 200
    """Upper bound on instruction-generation requests (a poor teacher cannot loop forever)."""
    prompt_instructions: int = 8
    """In-context instructions in each generation prompt."""
    machine_in_prompt: int = 2
    """How many of them are generated ones (once there are any); the rest are seed tasks."""
    request_batch_size: int = 5
    """Generation prompts sent per round."""
    temperature: float = 0.7
    """Teacher sampling temperature for new instructions (0 = greedy)."""
    top_p: float = 0.5
    """Teacher nucleus-sampling threshold for new instructions."""
    max_tokens: int = 1024
    """Longest instruction-list continuation, in tokens (instances get a third of it)."""
    rouge_threshold: float = 0.7
    """Reject an instruction whose ROUGE-L to any pool instruction is >= this (the paper's rule)."""
    min_words: int = 4
    """Reject instructions with fewer words."""
    max_words: int = 150
    """Reject instructions with more words."""
    seed: int = 42
    """Seed of the in-context sampling and of the teacher's sampling."""


def encode_prompt(instructions: list[str]) -> str:
    """The numbered-list prompt the teacher continues."""
    lines = ["Come up with a series of tasks:"]
    for index, instruction in enumerate(instructions, 1):
        text = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
        lines.append(f"{index}. {text}")
    lines.append(f"{len(instructions) + 1}.")
    return "\n".join(lines)


def parse_instructions(text: str) -> list[str]:
    """Split a numbered continuation into instructions (the first has no number: the
    prompt ended with ``9.``)."""
    pieces = re.split(r"(?:^|\n)\s*\d+\s?[.)]\s", text.strip())
    return [re.sub(r"\s+", " ", p).strip() for p in pieces if p.strip()]


def reject_reason(instruction: str, min_words: int = 4, max_words: int = 150) -> str | None:
    """Why an instruction is filtered before the similarity check, or None to keep it.

    >>> reject_reason("Draw a picture of a cat sitting on a mat.")
    'blocklisted keyword'
    >>> reject_reason("Summarize the following news article in two sentences.") is None
    True
    """
    words = len(instruction.split())
    if words < min_words:
        return "too short"
    if words > max_words:
        return "too long"
    if _BLOCKLIST_RE.search(instruction):
        return "blocklisted keyword"
    if instruction.startswith("Write a program"):
        return "write a program"
    if instruction[0] in string.punctuation:
        return "starts with punctuation"
    if not instruction[0].isascii():
        return "starts with non-English character"
    return None


def parse_instances(text: str, classification: bool) -> list[dict[str, str]]:
    """Instances from an input-first ("Example N / Input / Output") or output-first
    ("Class label: X" then its input) generation."""
    if classification:
        instances = []
        for block in re.split(r"\n?Class label:\s*", text)[1:]:
            label, _, rest = block.partition("\n")
            body = re.sub(r"^\w[\w ]{0,20}:\s*", "", rest.strip(), count=1)
            if label.strip():
                instances.append({"input": body.strip(), "output": label.strip()})
        return instances
    blocks = re.split(r"\n?Example \d+\s*\n", text) if re.search(r"Example \d+", text) else [text]
    instances = []
    for block in blocks:
        if "Output:" not in block:
            continue
        source, _, output = block.partition("Output:")
        source = re.sub(r"^Input(?: \d+)?(?: -)?\s*:?\s*", "", source.strip())
        if output.strip():
            instances.append({"input": source.strip(), "output": output.strip()})
    return instances


@pipeline("self-instruct", SelfInstructConfig)
def run(config: SelfInstructConfig, teacher: Teacher | None = None) -> SynthReport:
    """Generate until ``num_instructions`` are stored. Batch ``r`` sees only instructions
    from batches before ``r``, so a resumed run redoes the interrupted batch exactly (with
    the response cache, at no cost) and writes the same records an uninterrupted run would."""
    teacher = teacher or make_teacher(config.teacher)
    seed_instructions = [task["instruction"] for task in read_rows(config.seed_tasks)]
    report = SynthReport("self-instruct")
    with RecordStore(config.output) as store:
        pool_tokens = [tokenize(i) for i in seed_instructions + [r["instruction"] for r in store]]
        progress = tqdm(total=config.num_instructions, initial=min(len(store), config.num_instructions),
                        desc="self-instruct", unit="instr")
        batch = max((r["provenance"]["round"] for r in store), default=0)
        while len(store) < config.num_instructions and report.requests < config.max_requests:
            earlier = [r["instruction"] for r in store if r["provenance"]["round"] < batch]
            prompts = [_sample_prompt(config, seed_instructions, earlier, batch + k)
                       for k in range(config.request_batch_size)]
            replies = teacher.complete([
                ChatRequest([Message("user", p)], temperature=config.temperature, top_p=config.top_p,
                            max_tokens=config.max_tokens, seed=config.seed + batch + k,
                            stop=["\n\n", "\n16", "16.", "16 ."])
                for k, p in enumerate(prompts)])
            report.requests += len(prompts)
            candidates = _filter(config, replies, pool_tokens, store, report)
            for instruction, record in zip(candidates, _complete_tasks(teacher, config, candidates)):
                if len(store) >= config.num_instructions:
                    break
                record.update(id=stable_id("self-instruct", instruction), instruction=instruction,
                              provenance=provenance("self-instruct", teacher, TEMPLATE_VERSION,
                                                    config.seed, batch))
                store.write(record)
                report.written += 1
                progress.update(1)
            batch += config.request_batch_size
        progress.close()
        report.total = len(store)
    report.extra["pool_size"] = len(seed_instructions) + report.total
    report.count_refusals(teacher)
    return report


def _filter(config: SelfInstructConfig, replies: list[str], pool_tokens: list[list[str]],
            store: RecordStore, report: SynthReport) -> list[str]:
    """New instructions that pass every filter, in order; each accepted one joins the pool."""
    accepted = []
    for reply in replies:
        for instruction in parse_instructions(reply):
            instruction = instruction[0].upper() + instruction[1:]
            if stable_id("self-instruct", instruction) in store:
                continue  # written before an interruption: not a rejection
            reason = reject_reason(instruction, config.min_words, config.max_words)
            if reason is None and instruction in accepted:
                reason = "duplicate"
            if reason is None and max_rouge_l(instruction, pool_tokens)[0] >= config.rouge_threshold:
                reason = "similar to the pool (ROUGE-L)"
            if reason:
                report.rejected[reason] += 1
                continue
            pool_tokens.append(tokenize(instruction))
            accepted.append(instruction)
    return accepted


def _sample_prompt(config: SelfInstructConfig, seeds: list[str], machine: list[str], index: int) -> str:
    rng = random.Random(config.seed * 1_000_003 + index)  # resumable: depends on the request only
    chosen = rng.sample(machine, min(config.machine_in_prompt, len(machine)))
    chosen += rng.sample(seeds, config.prompt_instructions - len(chosen))
    rng.shuffle(chosen)
    return encode_prompt(chosen)


def _complete_tasks(teacher: Teacher, config: SelfInstructConfig, instructions: list[str]) -> list[dict]:
    """Classification detection, then instances in the matching order (output-first or not)."""
    if not instructions:
        return []
    verdicts = teacher.complete([
        ChatRequest([Message("user", CLASSIFY_PROMPT.format(instruction=i))], temperature=0.0,
                    max_tokens=3, seed=config.seed) for i in instructions])
    is_classification = [v.strip().lower().startswith("yes") for v in verdicts]
    generations = teacher.complete([
        ChatRequest([Message("user", (OUTPUT_FIRST_PROMPT if clf else INPUT_FIRST_PROMPT).format(instruction=i))],
                    temperature=0.0, max_tokens=config.max_tokens // 3, seed=config.seed)
        for i, clf in zip(instructions, is_classification)])
    return [{"is_classification": clf, "instances": parse_instances(text, clf), "raw_instances": text}
            for clf, text in zip(is_classification, generations)]
