import hashlib
import json
import random

import pytest

from sftlab.synth import self_instruct as si
from sftlab.synth.client import HTTPTeacher, TeacherConfig
from sftlab.synth.faults import FaultyServer
from sftlab.synth.rouge import rouge_l

TOPICS = ["volcanoes", "tax forms", "chess openings", "bread baking", "jazz history", "tide pools",
          "bicycle repair", "moon phases", "coral reefs", "paper folding", "rain gardens", "bee hives"]
VERBS = ["Explain", "Summarize", "Compare", "Classify", "Describe", "Critique", "Outline", "Rank"]
AUDIENCES = ["a child", "a retired sailor", "a busy nurse", "a first-year student", "a tourist"]


def rule_teacher(messages):
    """A deterministic stand-in teacher: each prompt maps to one fixed answer."""
    prompt = messages[-1]["content"]
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    if prompt.startswith("Come up with a series of tasks"):
        lines = [f"{rng.choice(VERBS)} {rng.choice(TOPICS)} for {rng.choice(AUDIENCES)} in {rng.randint(2, 9)} sentences."
                 for _ in range(3)]
        lines += ["Draw a map of your town.", "Say hi."]  # blocklisted, too short
        return "\n".join(f"{n}. {line}" if n > 9 else line for n, line in enumerate(lines, 9))
    last_task = prompt.split("Task:")[-1]
    if prompt.rstrip().endswith("Is it classification?"):
        return "Yes" if last_task.strip().startswith(("Classify", "Rank")) else "No"
    if prompt.startswith("Given the classification task"):
        return "Class label: Good\nText: Fine work.\nClass label: Bad\nText: Sloppy work."
    return "Example 1\nInput: some input\nOutput: some output"


def test_filters_reject_crafted_cases():
    assert si.reject_reason("Draw a diagram of the water cycle.") == "blocklisted keyword"
    assert si.reject_reason("Go to the store and buy milk today.") == "blocklisted keyword"
    assert si.reject_reason("Summarize this text.") == "too short"  # 3 words
    assert si.reject_reason("Write a program that sorts a list of names.") == "write a program"
    assert si.reject_reason('"Quote" the following passage in full please.') == "starts with punctuation"
    assert si.reject_reason("Écrivez un poème sur la mer et le vent.") == "starts with non-English character"
    assert si.reject_reason("Mapping rivers helps understand the regional floods well.") is None  # word boundary


def test_near_duplicate_is_rejected_by_rouge(tmp_path):
    pool = ["Write a short poem about the sea at night."]
    near = "Write a short poem about the ocean at night."
    assert rouge_l(near, pool[0]) >= 0.7
    report = si.SynthReport("self-instruct")
    config = si.SelfInstructConfig()
    from sftlab.synth.rouge import tokenize
    from sftlab.synth.store import RecordStore

    with RecordStore(tmp_path / "x.jsonl") as store:
        kept = si._filter(config, [f"{near}\n10. Name three famous bridges in Europe and their cities."],
                          [tokenize(p) for p in pool], store, report)
    assert kept == ["Name three famous bridges in Europe and their cities."]
    assert report.rejected["similar to the pool (ROUGE-L)"] == 1


def _config(tmp_path, server, output, **overrides):
    config = si.SelfInstructConfig(
        teacher=TeacherConfig(base_url=server.base_url, timeout=0.3, backoff=0.01, max_retries=12,
                              cache_dir=str(tmp_path / f"cache-{output}")),
        seed_tasks=str(overrides.pop("seed_tasks")), output=str(tmp_path / output),
        num_instructions=12, request_batch_size=2)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class Interrupt(Exception):
    pass


def test_end_to_end_with_faults_then_interrupted_and_resumed(tmp_path, shared_data):
    seeds = shared_data / "self_instruct" / "seed_tasks.jsonl"
    with FaultyServer(rule_teacher, error_rate=0.25, slow_seconds=0.5, seed=2) as server:
        full = _config(tmp_path, server, "full.jsonl", seed_tasks=seeds)
        report = si.run(full)
        assert report.total == 12 and report.written == 12
        assert report.rejected["blocklisted keyword"] > 0 and report.rejected["too short"] > 0
        rows = [json.loads(line) for line in open(full.output)]
        assert len({r["id"] for r in rows}) == 12
        assert all(r["provenance"]["pipeline"] == "self-instruct" for r in rows)
        assert all(r["instances"] for r in rows)
        assert any(r["is_classification"] for r in rows) and not all(r["is_classification"] for r in rows)
        # output-first instances for classification tasks: the label is the output
        assert all({i["output"] for i in r["instances"]} == {"Good", "Bad"} for r in rows if r["is_classification"])
        saved = report.save(full.output, full)
        assert json.loads(saved.read_text())["rejected"]

        # the same run, killed after a few teacher calls, then restarted
        partial = _config(tmp_path, server, "resumed.jsonl", seed_tasks=seeds)
        teacher = HTTPTeacher(partial.teacher)
        real_complete, calls = teacher.complete, []

        def dying_complete(requests):
            calls.append(1)
            if len(calls) == 5:
                raise Interrupt()
            return real_complete(requests)

        teacher.complete = dying_complete
        with pytest.raises(Interrupt):
            si.run(partial, teacher=teacher)
        interrupted = [json.loads(line) for line in open(partial.output)]
        assert 0 < len(interrupted) < 12
        si.run(partial)
    resumed = [json.loads(line) for line in open(partial.output)]
    assert [r["id"] for r in resumed] == [r["id"] for r in rows]  # no duplicate, none missing
