"""The runner: files written, seeded numbers, responses files, chat modes, subtasks, MC."""
import json

import pytest

from sftlab.errors import ConfigError, DataError
from sftlab.eval.results import format_table
from sftlab.eval.runner import EvalConfig, apply_chat_mode, evaluate, limit_docs
from sftlab.infer.base import Generation
from sftlab.types import Message


class ScriptedGenerator:
    """Test-only generator: answers "The answer is N." with N = the prompt's length mod 3,
    so outputs are deterministic, differ by prompt, and are right only sometimes."""

    name = "scripted"

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, sampling):
        self.prompts += list(prompts)
        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1].content
            out.append(Generation(f"Let me think. The answer is {len(text) % 3}.\n", 10, 8, "stop"))
        return out


def gsm8k_file(tmp_path, targets):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    rows = [{"question": f"Question number {i}?", "answer": f"work\n#### {t}"} for i, t in enumerate(targets)]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path


def test_gsm8k_writes_three_files_and_is_reproducible(tmp_path):
    data = gsm8k_file(tmp_path, [0, 1, 2, 0, 1, 2, 5, 4])
    config = EvalConfig(model="scripted", tasks=["gsm8k"], data_dir=str(data), output_dir=str(tmp_path / "out"))
    first = evaluate(config, generator=ScriptedGenerator(), progress=False)
    second = evaluate(config, generator=ScriptedGenerator(), progress=False)
    assert first["tasks"]["gsm8k"]["metrics"] == second["tasks"]["gsm8k"]["metrics"]
    metric = first["tasks"]["gsm8k"]["metrics"]["exact_match_strict"]
    assert metric["n"] == 8 and metric["low"] <= metric["mean"] <= metric["high"]
    samples = [json.loads(line) for line in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    expected = [float(str(len(s["prompt"]) % 3) == s["target"]) for s in samples]
    assert [s["scores"]["exact_match_strict"] for s in samples] == expected
    assert metric["mean"] == pytest.approx(sum(expected) / 8)
    settings = json.loads((tmp_path / "out/settings.json").read_text())
    assert settings["tasks"]["gsm8k"]["num_fewshot"] == 8
    assert settings["tasks"]["gsm8k"]["generation"]["stop"] == ["Q:", "</s>", "<|im_end|>"]
    assert "transformers" in settings["versions"]
    assert "gsm8k" in format_table(first)


def test_responses_file_by_id_gives_same_scores(tmp_path):
    data = gsm8k_file(tmp_path, [3, 7])
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"id": "gsm8k-1", "response": "The answer is 7."}) + "\n"
                         + json.dumps({"id": "gsm8k-0", "response": "#### 4"}) + "\n")
    config = EvalConfig(model="x", tasks=["gsm8k"], data_dir=str(data), responses=str(responses))
    result = evaluate(config, progress=False)
    assert result["tasks"]["gsm8k"]["metrics"]["exact_match_strict"]["mean"] == 0.5
    responses.write_text(json.dumps({"id": "other", "response": "1"}) + "\n")
    with pytest.raises(DataError, match="no response"):
        evaluate(config, progress=False)


def test_chat_modes_and_num_fewshot(tmp_path):
    data = gsm8k_file(tmp_path, [1])
    generator = ScriptedGenerator()
    evaluate(EvalConfig(tasks=["gsm8k"], data_dir=str(data), chat_template="on", num_fewshot=0),
             generator=generator, progress=False)
    assert generator.prompts[0] == [Message("user", "Q: Question number 0?\nA:")]
    assert apply_chat_mode([Message("user", "hi")], "off") == "hi"
    with pytest.raises(ConfigError):
        evaluate(EvalConfig(tasks=["gsm8k"], chat_template="maybe"), progress=False)


def test_bbh_subtasks_and_macro_average(shared_data):
    config = EvalConfig(tasks=["bbh"], data_dir=str(shared_data), limit=2)
    result = evaluate(config, generator=ScriptedGenerator(), progress=False)
    summary = result["tasks"]["bbh"]
    assert len(summary["subtasks"]) == 27
    assert summary["metrics"]["exact_match"]["n"] == 54
    macro = sum(s["exact_match"]["mean"] for s in summary["subtasks"].values()) / 27
    assert summary["extra"]["exact_match_macro"] == pytest.approx(macro)


@pytest.mark.parametrize("limit", [0, -2])
def test_a_limit_below_one_names_the_flag(tmp_path, limit):
    data = gsm8k_file(tmp_path, [1])
    with pytest.raises(ConfigError, match="^--limit must be at least 1"):
        evaluate(EvalConfig(tasks=["gsm8k"], data_dir=str(data), limit=limit),
                 generator=ScriptedGenerator(), progress=False)


def test_limit_per_subtask():
    docs = [{"subtask": s, "id": i} for i, s in enumerate("aaabbc")]
    assert [d["id"] for d in limit_docs(docs, 2)] == [0, 1, 3, 4, 5]


def test_mc_on_tiny_model(tmp_path, tiny_model, tiny_tokenizer):
    items = tmp_path / "mc.jsonl"
    items.write_text("\n".join(json.dumps({"question": f"Is {n} even?", "choices": ["yes", "no"],
                                           "answer": n % 2}) for n in range(6)))
    config = EvalConfig(tasks=[f"mc={items}", f"mc_letters={items}"], output_dir=str(tmp_path / "out"))
    result = evaluate(config, model=tiny_model, tokenizer=tiny_tokenizer, progress=False)
    for task in ("mc", "mc_letters"):
        metrics = result["tasks"][task]["metrics"]
        assert set(metrics) == {"acc", "acc_norm"} and metrics["acc"]["n"] == 6
        assert 0.0 <= result["tasks"][task]["extra"]["ece"] <= 1.0
    sample = json.loads((tmp_path / "out/samples.jsonl").read_text().splitlines()[0])
    logprobs = sample["meta"]["logprobs"]
    assert sample["extracted"] == logprobs.index(max(logprobs))


class PooledTask:
    """Test-only task whose aggregate is not the mean of per-sample scores (like IFEval's
    instruction-level accuracy): 2 of 3 checks pass on item 0, 0 of 1 on item 1."""

    name, num_fewshot, data_file = "pooled", None, ""
    from sftlab.infer.base import SamplingConfig as _S
    sampling = _S(max_new_tokens=4)

    def docs(self, data_path=None):
        return [{"id": "0", "passed": 2, "total": 3}, {"id": "1", "passed": 0, "total": 1}]

    def prompt(self, doc):
        return f"item {doc['id']}"

    def score(self, doc, response):
        return doc, {"fraction": doc["passed"] / doc["total"]}

    def aggregate(self, samples):
        return {"fraction": sum(s.extracted["passed"] for s in samples) / sum(s.extracted["total"] for s in samples)}


def test_task_aggregate_overrides_plain_mean_with_its_own_interval(monkeypatch):
    from sftlab.eval import runner

    monkeypatch.setattr(runner, "build_task", lambda name, config: PooledTask())
    result = evaluate(EvalConfig(tasks=["pooled"]), generator=ScriptedGenerator(), progress=False)
    metric = result["tasks"]["pooled"]["metrics"]["fraction"]
    assert metric["mean"] == pytest.approx(2 / 4)  # pooled, not (2/3 + 0) / 2
    assert metric["aggregate"] == "task" and metric["low"] <= 0.5 <= metric["high"]


def test_format_table_prints_counts_as_counts_not_percent():
    """An extra that is a count (``items_with_fewer_shots``) was printed x 100 (3 -> 300.00)."""
    metric = {"mean": 0.5, "low": 0.0, "high": 1.0, "stderr": 0.1, "n": 3}
    results = {"tasks": {"gsm8k": {"metrics": {"exact_match_strict": metric}, "subtasks": {},
                                   "extra": {"items_with_fewer_shots": 3, "exact_match_macro": 0.25}}}}
    rows = {line.split()[1]: line.split()[2] for line in format_table(results).splitlines()[1:]}
    assert rows == {"exact_match_strict": "50.00", "items_with_fewer_shots": "3", "exact_match_macro": "25.00"}
