"""Judge verdict parsing, position-bias removal, MT-Bench prompts and the on-disk cache."""
import json

import pytest

from sftlab.eval.judge import mt_bench
from sftlab.eval.judge.client import CachedChat, cache_key
from sftlab.eval.judge.pairwise import combine_verdicts, judge_pairs, parse_verdict


class FakeJudge:
    """Test-only judge: always answers with the completion a rule picks from the prompt."""

    def __init__(self, rule):
        self.rule, self.model, self.calls = rule, "fake-judge", 0

    def complete(self, messages, temperature=0.0, max_tokens=1024):
        self.calls += 1
        return self.rule(messages[-1]["content"])


@pytest.mark.parametrize("text,verdict", [
    ("Assistant B is better. [[B]]", "B"), ("[[A]] ... on reflection [[C]]", "C"),
    ("[[ A ]]", "A"), ("A is better", None), ("[A]", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_combine_verdicts():
    assert combine_verdicts(["B", "A"]) == 2.0
    assert combine_verdicts(["A", "B"]) == 1.0
    assert combine_verdicts(["A", "A"]) == 1.5  # always-first judge -> tie
    assert combine_verdicts(["C", None]) == 1.5
    assert combine_verdicts([None, None]) is None


def test_both_orders_cancel_a_position_biased_judge():
    baseline = [{"instruction": f"task {i}", "output": "short", "generator": "base"} for i in range(4)]
    model = [{"instruction": f"task {i}", "output": "long answer", "generator": "mine"} for i in range(4)]
    always_a = FakeJudge(lambda prompt: "Looks fine. [[A]]")
    annotations = judge_pairs(baseline, model, CachedChat(always_a, None))
    assert [a["preference"] for a in annotations] == [1.5] * 4
    assert always_a.calls == 8
    assert annotations[0]["raw_completions"] == ["Looks fine. [[A]]"] * 2
    # a judge that recognises the model's output wins it every item, whatever the order
    picks_long = FakeJudge(lambda p: "[[A]]" if p.index("long answer") < p.index("short") else "[[B]]")
    assert [a["preference"] for a in judge_pairs(baseline, model, CachedChat(picks_long, None))] == [2.0] * 4


def test_cache_answers_repeated_calls_from_disk(tmp_path):
    judge = FakeJudge(lambda prompt: "[[8]]")
    cached = CachedChat(judge, tmp_path)
    messages = [{"role": "user", "content": "rate this"}]
    assert cached.complete(messages) == "[[8]]"
    again = CachedChat(FakeJudge(lambda prompt: "[[1]]"), tmp_path)  # a new process, same cache
    assert again.complete(messages) == "[[8]]" and again.hits == 1 and again.misses == 0
    assert cache_key("m", messages, {"temperature": 0}) != cache_key("m", messages, {"temperature": 1})
    assert len(list(tmp_path.rglob("*.json"))) == 1


@pytest.mark.parametrize("text,score", [
    ("Rating: [[7]]", 7.0), ("Rating: [[8.5]]", 8.5), ("[[3]] then Rating: [[9]]", 9.0),
    ("Rating: [6]", 6.0), ("Rating: 6/10", -1.0),
])
def test_mt_bench_rating(text, score):
    assert mt_bench.parse_rating(text) == score


def test_mt_bench_prompts_and_summary(shared_data):
    folder = shared_data / "mt_bench"
    questions = mt_bench.read_questions(folder)
    assert len(questions) == 80 and len({q["category"] for q in questions}) == 8
    prompts, references = mt_bench.read_judge_prompts(folder), mt_bench.read_references(folder)
    math_question = next(q for q in questions if q["category"] == "math")
    writing = next(q for q in questions if q["category"] == "writing")
    turn2 = mt_bench.judge_messages(math_question, ["a1", "a2"], 2, prompts, references)
    assert "Reference answer" in turn2[1]["content"] and "a2" in turn2[1]["content"]
    turn1 = mt_bench.judge_messages(writing, ["first answer", "x"], 1, prompts, references)
    assert "first answer" in turn1[1]["content"] and "Reference" not in turn1[1]["content"]
    chosen = [math_question, writing]
    judge = FakeJudge(lambda prompt: "Rating: [[4]]" if "Reference" in prompt else "meh")
    rows = mt_bench.judge_answers(chosen, {q["question_id"]: ["a", "b"] for q in chosen},
                                  CachedChat(judge, None), folder)
    summary = mt_bench.summarize(rows)
    assert summary["categories"]["math"] == 4.0 and summary["n_parse_failures"] == 2
    assert summary["score"] == 4.0 and len(rows) == 4 and rows[0]["raw_completion"]


def test_local_model_judge_batches_through_a_generator(tmp_path):
    from sftlab.eval.judge.client import GeneratorChat
    from sftlab.eval.judge.pairwise import generate_outputs
    from sftlab.infer.base import Generation

    class Scripted:
        """Test-only generator: rates by prompt length parity, counts its batches."""
        name = "scripted"
        batches = []

        def generate(self, prompts, sampling):
            self.batches.append(len(prompts))
            return [Generation(f"Rating: [[{len(p[-1].content) % 2 + 5}]]", 1, 1, "stop") for p in prompts]

    generator = Scripted()
    judge = CachedChat(GeneratorChat(generator), tmp_path)
    texts = judge.complete_many([[{"role": "user", "content": "ab"}], [{"role": "user", "content": "abc"}]])
    assert texts == ["Rating: [[5]]", "Rating: [[6]]"] and generator.batches == [2]
    outputs = generate_outputs(generator, ["Write a poem", "Add 2 and 2"], name="mine")
    assert outputs[1] == {"instruction": "Add 2 and 2", "output": "Rating: [[6]]", "generator": "mine"}
