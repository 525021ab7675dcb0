"""sftlab study superficial: token ranks, the instruction variants, bad keys, and a run on the tiny model."""
import json
import re

import pytest
import torch

from sftlab.cli import main
from sftlab.cli.study import checkable_benchmark, checkable_templates
from sftlab.errors import ConfigError
from sftlab.study import runs, superficial
from sftlab.study.config import SuperficialConfig


# ---------------------------------------------------------------- token ranks

def test_a_token_ranks_one_plus_the_entries_with_a_larger_logit(tiny_model):
    prompt = [1, 40, 41, 42, 43]
    with torch.inference_mode():
        logits = tiny_model(input_ids=torch.tensor([prompt])).logits[0, -1]
    order = logits.argsort(descending=True).tolist()
    for k in (1, 2, 5, 100):
        assert superficial.token_ranks(tiny_model, prompt, [order[k - 1]]) == [k]
    # a second token is ranked given the first (teacher forcing), from the same single pass
    with torch.inference_mode():
        second = tiny_model(input_ids=torch.tensor([prompt + [order[3]]])).logits[0, -1]
    target = second.argsort(descending=True)[6].item()
    assert superficial.token_ranks(tiny_model, prompt, [order[3], target]) == [4, 7]


def test_fractions_per_position_bucket_and_the_most_shifted_tokens():
    rows = [{"token_ids": [5, 6, 7, 5], "tokens": ["a", "b", "c", "a"], "ranks": [1, 2, 9, 4], "tuned_ranks": [1] * 4},
            {"token_ids": [5, 8], "tokens": ["a", "d"], "ranks": [7, 1], "tuned_ranks": [1, 1]}]
    summary = superficial.shift_summary(rows, [1, 2, 4], top=2, seed=0, resamples=100)
    assert summary["tokens"] == 6 and summary["responses"] == 2
    assert [summary["overall"][c]["mean"] for c in superficial.CATEGORIES] == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    first, middle, last = summary["by_position"]
    assert [b["positions"] for b in summary["by_position"]] == ["1", "2-3", "4+"]
    assert first["shifted"]["mean"] == 0.5 and first["shifted"]["n"] == 2
    assert middle["unshifted"]["tokens"] == 3 and middle["marginal"]["mean"] == pytest.approx(1 / 3)
    assert last["shifted"]["mean"] == 1.0 and last["shifted"]["n"] == 1  # only the first response reaches 4
    assert summary["top_shifted_tokens"] == [
        {"token": "a", "id": 5, "count": 2, "share_of_shifted": 2 / 3, "occurrences": 3},
        {"token": "c", "id": 7, "count": 1, "share_of_shifted": 1 / 3, "occurrences": 1}]
    for c in superficial.CATEGORIES:
        block = summary["overall"][c]
        assert block["low"] <= block["mean"] <= block["high"] and block["n"] == 2


def test_the_base_ranks_its_own_greedy_answers_first_everywhere(tmp_path, monkeypatch):
    """The invariant: tuned = base, so every token it generates greedily is the base's top token."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name three colours."}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "Sort 3, 1, 2"}]}) + "\n"
                       + json.dumps({"instruction": "Count the words", "input": "a b c"}) + "\n")

    def fail(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(runs, "finetune", fail)
    for source in ("", str(prompts)):  # the held-out items' prompts, and a prompt file
        config = SuperficialConfig(model="tiny", tuned="tiny", variants=[], prompts=source, max_prompts=12,
                                   response_tokens=24, eval_per_task=2, bootstrap_resamples=50,
                                   output_dir=str(tmp_path / f"s{bool(source)}"))
        shift = superficial.run_superficial(config, checkable_benchmark(config))["token_shift"]
        assert shift["responses"] == (3 if source else 12) and shift["tokens"] > 3 * shift["responses"]
        assert shift["overall"]["unshifted"]["mean"] == 1.0 and shift["top_shifted_tokens"] == []
        assert all(b["unshifted"]["mean"] == 1.0 for b in shift["by_position"] if b["unshifted"]["n"])
        rows = [json.loads(line) for line in open(shift["responses_file"])]
        assert all(set(r["ranks"]) == {1} and len(r["ranks"]) == len(r["token_ids"]) for r in rows)


# ---------------------------------------------------------------- the variants

@pytest.fixture(scope="module")
def pool():
    return checkable_benchmark(SuperficialConfig(train_per_task=12, eval_per_task=1)).pool


def test_simplified_prompts_keep_the_input_and_the_output_space_only(pool):
    templates = checkable_templates()
    spaces = superficial.output_spaces(pool)
    assert spaces["sentiment"] == "Answer with one of: negative, positive."
    assert spaces["add"] == "Answer with a number." and spaces["sort_numbers"].startswith("Answer with a list of numbers")
    simplified = superficial.variant_pool("simplified", pool, templates, seed=0)
    assert [c.id for c in simplified] == [c.id for c in pool]
    for before, after in zip(pool, simplified):
        task, template = before.meta["task"], templates[before.meta["task"]][before.meta["template"]]
        prompt = after.messages[0].content
        space, *values = prompt.split("\n")
        assert space == spaces[task] and after.messages[1] == before.messages[1]  # the answer is kept
        assert template.format(**dict(zip(re.findall(r"{(\w+)}", template), values))) == before.messages[0].content
        description = set(re.findall(r"[A-Za-z]{3,}", re.sub(r"{\w+}", " ", template)))
        allowed = set(re.findall(r"[A-Za-z]{3,}", space)) | set(re.findall(r"[A-Za-z]{3,}", " ".join(values)))
        assert not (description - allowed) & set(re.findall(r"[A-Za-z]{3,}", prompt)), (template, prompt)


def test_delusive_answers_are_wrong_but_from_the_same_tasks_answers(pool):
    delusive = superficial.variant_pool("delusive", pool, None, seed=0)
    answers = {}
    for c in pool:
        answers.setdefault(c.meta["task"], set()).add(c.messages[-1].content)
    changed = sum(a.messages[-1].content != b.messages[-1].content for a, b in zip(pool, delusive))
    assert changed == len(pool)  # every task of the pool has another answer to take
    for before, after in zip(pool, delusive):
        assert after.messages[0] == before.messages[0]  # the instruction kept
        assert after.messages[-1].content in answers[before.meta["task"]]
    assert superficial.delude(pool, 0) == delusive  # seeded
    assert [c.messages[-1].content for c in superficial.delude(pool, 1)] != [c.messages[-1].content for c in delusive]
    assert superficial.variant_pool("original", pool, None, 0) == list(pool)


def test_simplified_without_templates_says_what_it_needs(pool):
    with pytest.raises(ConfigError, match="^variants: simplified needs each example's template"):
        superficial.variant_pool("simplified", pool, {}, seed=0)


# ---------------------------------------------------------------- bad keys

@pytest.mark.parametrize("overrides, key", [
    ({"tuned": "no/such/run"}, "tuned"), ({"prompts": "no/such.jsonl"}, "prompts"),
    ({"position_buckets": [2, 6]}, "position_buckets"), ({"position_buckets": [1, 6, 6]}, "position_buckets"),
    ({"variants": ["original", "nope"]}, "variants"), ({"variants": ["delusive"]}, "variants"),
    ({"variants": [], "token_shift": False}, "variants"), ({"top_tokens": 0}, "top_tokens"),
    ({"max_prompts": -1}, "max_prompts")])
def test_bad_keys_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        superficial.check_config(SuperficialConfig(model="tiny", **overrides))


def test_a_missing_tuned_path_fails_before_anything_trains(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(runs, "finetune", fail)
    out = tmp_path / "s"
    assert main(["study", "superficial", "--fast", "--model", "tiny", "-o", str(out), f"tuned={tmp_path / 'nope'}"]) != 0
    error = capsys.readouterr().err
    assert "tuned:" in error and "does not exist" in error
    assert not out.exists()  # nothing was set up, let alone trained


def test_fast_shrinks_the_study():
    config = SuperficialConfig(fast=True)
    assert (config.max_prompts, config.response_tokens, config.top_tokens, config.position_buckets) == (4, 8, 5, [1, 3, 6])
    assert SuperficialConfig(fast=True, position_buckets=[1, 2]).position_buckets == [1, 2]


# ---------------------------------------------------------------- a run

def test_the_fast_study_from_the_command_line_then_a_rerun_that_computes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    argv = ["study", "superficial", "--fast", "--model", "tiny", "-o", str(out), "seeds=[0]", "eval_per_task=1"]
    assert main(argv) == 0
    summary = json.loads((out / "study.json").read_text())
    shift, variants = summary["token_shift"], summary["variants"]
    assert shift["responses"] == 4 and shift["tokens"] > 0 and len(shift["by_position"]) == 3
    assert shift["tuned_run"]["run_dir"] == variants["rows"][0]["runs"][0]["run_dir"]  # original, seed 0: one run
    assert shift["tuned_self_rank1"]["mean"] == 1.0
    assert sum(shift["overall"][c]["mean"] for c in superficial.CATEGORIES) == pytest.approx(1.0)
    assert [r["variant"] for r in variants["rows"]] == ["original", "simplified", "delusive"]
    assert set(variants["differences_vs_original"]) == {"simplified", "delusive"}
    for row in variants["rows"]:
        assert row["score"]["n"] == len(checkable_benchmark(SuperficialConfig(eval_per_task=1)).items)
        assert row["score"]["low"] <= row["score"]["mean"] <= row["score"]["high"]
    assert variants["base"] is not None and summary["jobs"]["trained"] == 3
    for name in ("shift_by_position.png", "top_shifted_tokens.png", "score_by_variant.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Kung &amp; Peng" in page and "URIAL" in page

    def fail(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(runs, "finetune", fail)
    monkeypatch.setattr(runs, "generate_answers", fail)
    monkeypatch.setattr(superficial, "measure_shift", fail)
    assert main(argv) == 0
    again = json.loads((out / "study.json").read_text())
    assert again["jobs"]["trained"] == 0 and again["token_shift"]["overall"] == shift["overall"]
    assert again["variants"]["rows"] == variants["rows"]
