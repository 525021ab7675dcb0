"""Mixtures (sftlab.data.mix) and their engine (sftlab.data.dedup): exact and near-duplicate
removal, decontamination, caps and weights, the CLI."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import yaml

from sftlab.config import build_config, load_config
from sftlab.data.dedup import exact_duplicates, near_duplicates, words
from sftlab.data.mix import (
    DecontaminateConfig,
    EvalFileConfig,
    MixConfig,
    build_mixture,
    contaminated,
    mixture_counts,
    sample_mixture,
)
from sftlab.errors import ConfigError
from sftlab.types import Conversation, Message


def chat(user: str, assistant: str, id: str, source: str = "train") -> Conversation:
    return Conversation([Message("user", user), Message("assistant", assistant)], id=id,
                        meta={"mix_source": source})


@pytest.fixture(scope="module")
def alpaca(shared_data):
    rows = json.loads((shared_data / "formats" / "alpaca_en_demo.json").read_text())
    return [chat(f"{r['instruction']}\n\n{r['input']}".strip(), r["output"], f"alpaca-{i}")
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def gsm8k_test(shared_data):
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def fragment(text: str, max_words: int) -> str:
    """The longest prefix of ``text`` (whole whitespace words) with at most ``max_words`` words
    as the decontaminator counts them."""
    pieces = text.split()
    while len(words(" ".join(pieces))) > max_words:
        pieces.pop()
    return " ".join(pieces)


# -- decontamination -------------------------------------------------------------------------


def test_planted_gsm8k_test_questions_are_removed(shared_data, alpaca, gsm8k_test):
    unrelated = alpaca[:300]
    verbatim = [chat(row["question"], "Let me think.", f"verbatim-{i}") for i, row in enumerate(gsm8k_test[:10])]
    embedded = [chat(f"Please help with my homework. {row['question']} Thanks a lot!", row["answer"],
                     f"embedded-{i}") for i, row in enumerate(gsm8k_test[10:20])]
    # a fragment of fewer than 13 words shares no 13-gram with its source question
    fragments = [chat(fragment(row["question"], 12), "ok", f"fragment-{i}")
                 for i, row in enumerate(gsm8k_test[20:25])]
    records = unrelated + verbatim + embedded + fragments
    config = DecontaminateConfig(evals=[EvalFileConfig(str(shared_data / "gsm8k" / "test.jsonl"), "question")])
    removed = contaminated(records, config)
    removed_ids = {records[position].id for position in removed}
    assert removed_ids == {c.id for c in verbatim + embedded}
    first = removed[len(unrelated)]
    assert first == {"eval": "test.jsonl", "eval_index": 0}
    # n is configurable: with 8-grams the fragments match too
    shorter = contaminated(records, DecontaminateConfig(ngram=8, evals=config.evals))
    assert {records[p].id for p in shorter} >= removed_ids | {c.id for c in fragments}


def test_assistant_turns_are_checked_unless_told_otherwise(shared_data, gsm8k_test):
    leaked = chat("Write a math problem for a child.", gsm8k_test[3]["question"], "leak")
    config = DecontaminateConfig(evals=[EvalFileConfig(str(shared_data / "gsm8k" / "test.jsonl"), "question")])
    assert list(contaminated([leaked], config)) == [0]
    config.check = "user"
    assert contaminated([leaked], config) == {}


def test_short_evaluation_texts_match_whole(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"instruction": "Name three famous painters from the Dutch golden age"}) + "\n"
                    + json.dumps({"instruction": "Say hi"}) + "\n")
    records = [chat("Quick: name three famous painters from the Dutch golden age, please", "x", "a"),
               chat("Say hi", "hi", "b"),  # shorter than min_words: never matched
               chat("Name three famous sculptors", "y", "c")]
    config = DecontaminateConfig(evals=[EvalFileConfig(str(path), "instruction")])
    assert {records[p].id for p in contaminated(records, config)} == {"a"}


# -- duplicates ------------------------------------------------------------------------------


def test_exact_duplicates_ignore_case_spacing_and_punctuation():
    records = [chat("What is the capital of France?", "Paris.", "a"),
               chat("what is the  capital of france", "PARIS", "b"),
               chat("What is the capital of Spain?", "Madrid.", "c")]
    assert exact_duplicates(records) == {1: {"duplicate_of": "a"}}


def test_lightly_edited_copy_is_a_near_duplicate(alpaca):
    original = max(alpaca[:200], key=lambda c: len(c.messages[1].content))
    text = original.messages[1].content
    edited = text.replace(".", "!", 1).replace(" the ", " a ", 1) + " Hope this helps."
    copy = chat(original.messages[0].content, edited, "edited-copy")
    different = alpaca[1] if alpaca[1] is not original else alpaca[2]
    records = [original, different, copy]
    removed = near_duplicates(records, threshold=0.8)
    assert list(removed) == [2]
    assert removed[2]["duplicate_of"] == original.id and 0.8 <= removed[2]["similarity"] < 1.0
    assert near_duplicates(records, threshold=0.99) == {}


def test_near_duplicates_on_real_data_have_high_similarity(alpaca):
    removed = near_duplicates(alpaca, threshold=0.8)
    assert removed and all(detail["similarity"] >= 0.8 for detail in removed.values())
    # every exact duplicate is also found as a near duplicate
    assert set(exact_duplicates(alpaca)) <= set(removed)


# -- caps and weights ------------------------------------------------------------------------


def test_mixture_counts():
    offered = {"a": 100, "b": 50, "c": 0}
    weights = {"a": 1.0, "b": 2.0, "c": 5.0}
    assert mixture_counts(offered, weights, None) == {"a": 100, "b": 100, "c": 0}
    assert mixture_counts(offered, {"a": 1.0, "b": 1.0, "c": 1.0}, 31) == {"a": 21, "b": 10, "c": 0}
    assert sum(mixture_counts({"a": 7, "b": 5, "c": 3}, {"a": 1, "b": 1, "c": 1}, 10).values()) == 10


def test_caps_and_weights_give_expected_counts_deterministically():
    pools = {"big": [chat(f"q{i}", "a", f"big-{i}", "big") for i in range(500)],
             "small": [chat(f"s{i}", "a", f"small-{i}", "small") for i in range(40)],
             "capped": [chat(f"c{i}", "a", f"capped-{i}", "capped") for i in range(300)]}
    config = build_config(MixConfig, dict(sources=[{"path": "big", "name": "big", "weight": 0.5},
                                {"path": "small", "name": "small", "weight": 2.5},
                                {"path": "capped", "name": "capped", "max_examples": 60}], cap=200))
    mixed = sample_mixture(pools, config)
    assert Counter(c.meta["mix_source"] for c in mixed) == {"big": 100, "small": 100, "capped": 60}
    small_ids = [c.id for c in mixed if c.meta["mix_source"] == "small"]
    assert len(set(small_ids)) == 100 and sum("#r2" in i for i in small_ids) == 20  # 2 full repeats + 20
    assert [c.id for c in sample_mixture(pools, config)] == [c.id for c in mixed]
    config.seed = 1
    assert [c.id for c in sample_mixture(pools, config)] != [c.id for c in mixed]
    config.total = 130
    assert Counter(c.meta["mix_source"] for c in sample_mixture(pools, config)) == {
        "big": 50, "small": 50, "capped": 30}


def test_config_errors():
    with pytest.raises(ConfigError, match=r"did you mean 'sources\[0\].max_examples'"):
        build_config(MixConfig, {"sources": [{"path": "a.json", "max_example": 3}]})
    with pytest.raises(ConfigError, match="named 'a.json'"):
        build_config(MixConfig, {"sources": [{"path": "x/a.json"}, {"path": "y/a.json"}]})
    with pytest.raises(ConfigError, match="threshold"):
        load_config(MixConfig, None, ["dedup.threshold=1.5"])


# -- end to end ------------------------------------------------------------------------------


def test_mix_command_writes_output_report_and_config(tmp_path, shared_data, gsm8k_test):
    alpaca_rows = json.loads((shared_data / "formats" / "alpaca_en_demo.json").read_text())[:200]
    planted = [{"instruction": row["question"], "input": "", "output": "42"} for row in gsm8k_test[:5]]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca_rows + planted + [alpaca_rows[3]]))
    chats = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Tell me fact number {i} about owls."},
                                           {"role": "assistant", "content": f"Owl fact {i}."}], "meta": {}}
             for i in range(50)]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chats))
    config = {
        "sources": [{"path": str(tmp_path / "alpaca.json"), "name": "alpaca"},
                    {"path": str(tmp_path / "chats.jsonl"), "name": "owls", "max_examples": 20},
                    {"path": str(shared_data / "self_instruct" / "seed_tasks.jsonl"), "weight": 0.2}],
        "dedup": {"threshold": 0.95},
        "decontaminate": {"evals": [{"path": str(shared_data / "gsm8k" / "test.jsonl"), "field": "question"},
                                    {"path": str(shared_data / "humaneval" / "HumanEval.jsonl.gz"),
                                     "field": "prompt"}]},
    }
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    from sftlab.cli import main

    out = tmp_path / "out" / "mix.jsonl"
    assert main(["data", "mix", str(tmp_path / "mix.yaml"), "-o", str(out), "--set", "seed=3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    report = json.loads((tmp_path / "out" / "mix.report.json").read_text())
    sources = report["sources"]
    assert sources["alpaca"]["read"] == 206 and sources["alpaca"]["contaminated"] == 5
    assert sources["alpaca"]["exact_duplicate"] >= 1
    assert {e["id"] for e in report["removed"]["contaminated"]} == {f"alpaca-{i}" for i in range(200, 205)}
    assert "alpaca-205" in {e["id"] for e in report["removed"]["exact_duplicate"]}
    assert sources["owls"]["selected"] == 20 and sources["seed_tasks.jsonl"]["selected"] == 35
    assert len(rows) == report["total"] == sources["alpaca"]["selected"] + 20 + 35
    assert report["removed_counts"]["contaminated"] == 5
    resolved = load_config(MixConfig, tmp_path / "out" / "mix.config.yaml")
    assert resolved.seed == 3 and resolved.sources[1].max_examples == 20
    # the resolved config reproduces the same mixture
    assert [c.id for c in build_mixture(resolved).conversations] == [row["id"] for row in rows]


def test_task_and_promptsource_sources_are_rendered_then_decontaminated(tmp_path, shared_data):
    humaneval = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "gsm8k_train.jsonl").write_text("".join(lines[:300]))
    config = build_config(MixConfig, dict(
        sources=[{"path": str(tmp_path / "gsm8k_train.jsonl"), "task": "gsm8k", "name": "gsm8k",
                  "options": {"few_shot": 1}, "max_examples": 40},
                 {"path": str(humaneval), "name": "p3_humaneval",
                  "promptsource": str(shared_data / "promptsource" / "openai_humaneval" / "templates.yaml")}],
        decontaminate={"evals": [{"path": str(humaneval), "field": "prompt"}]}))
    result = build_mixture(config)
    sources = result.report["sources"]
    assert sources["gsm8k"]["read"] == 300 and sources["gsm8k"]["selected"] == 40
    # P3's HumanEval prompts contain the benchmark prompts: all of them are contaminated
    assert sources["p3_humaneval"]["read"] == 322
    assert sources["p3_humaneval"]["contaminated"] + sources["p3_humaneval"]["exact_duplicate"] \
        + sources["p3_humaneval"]["near_duplicate"] == 322
    assert sources["p3_humaneval"]["selected"] == 0
    assert all(c.meta["task"] == "gsm8k" and c.meta["few_shot"] == 1 for c in result.conversations)


@pytest.mark.slow
def test_ten_thousand_records_are_cleaned_quickly(tmp_path, shared_data, gsm8k_test):
    """Full pipeline on 10k distinct records (alpaca demo, GSM8K train, planted GSM8K test
    questions, ShareGPT), against three evaluation sets; CPU time, as the box is shared."""
    gsm = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()]
    rows = [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in gsm + gsm8k_test]
    (tmp_path / "gsm.json").write_text(json.dumps(rows[: 10_000 - 999 - 500]))
    data = shared_data / "formats"
    config = build_config(MixConfig, dict(
        sources=[{"path": str(data / "alpaca_en_demo.json")}, {"path": str(tmp_path / "gsm.json")},
                 {"path": str(data / "sharegpt_dummy_conversation.json")}],
        decontaminate={"evals": [
            {"path": str(shared_data / "gsm8k" / "test.jsonl"), "field": "question"},
            {"path": str(shared_data / "humaneval" / "HumanEval.jsonl.gz"), "field": "prompt"},
            {"path": str(shared_data / "alpaca_eval" / "gpt4_1106_preview_outputs.json"), "field": "instruction"}]}))
    started = time.process_time()
    report = build_mixture(config).report
    cpu = time.process_time() - started
    assert sum(row["read"] for row in report["sources"].values()) == 10_000
    planted = 10_000 - 999 - 500 - len(gsm)
    assert report["sources"]["gsm.json"]["contaminated"] >= planted
    assert cpu < 10, f"mixing 10k records took {cpu:.1f} s of CPU"
