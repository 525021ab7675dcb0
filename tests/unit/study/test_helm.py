"""sftlab study helm: perturbations, BBH as multiple choice, the metrics, and a run on the tiny model."""
import json
import re

import pytest

from sftlab.cli.study import checkable_benchmark
from sftlab.errors import ConfigError, DataError
from sftlab.eval.metrics import expected_calibration_error
from sftlab.eval.tasks import Bbh
from sftlab.study import helm
from sftlab.study.config import HelmConfig


# ---------------------------------------------------------------- perturbations

def test_typos_are_seeded_and_keep_numbers_short_words_and_the_answer():
    text = "Janet sells sixteen duck eggs every morning for 2 dollars each at the market."
    once = helm.add_typos(text, 1.0, "0:gsm8k-0", frozenset({"market"}))
    assert once == helm.add_typos(text, 1.0, "0:gsm8k-0", frozenset({"market"}))  # seeded
    assert once != helm.add_typos(text, 1.0, "0:gsm8k-1", frozenset({"market"}))  # per item
    assert re.findall(r"\d+", once) == ["2"] and once.endswith("the market.")
    for before, after in zip(text.split(), once.split()):
        if len(re.sub(r"[^A-Za-z]", "", before)) < 4 or before.startswith("market"):
            assert after == before
        else:  # one swap of neighbours or one dropped letter, never the first letter
            assert after != before and after[0] == before[0] and len(before) - len(after) in (0, 1)
    assert helm.add_typos(text, 0.0, "s") == text


def test_variants_rewrite_only_the_question_field():
    scenario = helm.Scenario("gsm8k", None, [{"id": "a", "question": "How many apples remain?", "target": "3",
                                              "answer": "... #### 3"}], "exact_match_flexible", "question")
    config = HelmConfig(paraphrases=["Consider the following. {text}", "{text}\nAnswer carefully."], typo_rate=1.0)
    variants = helm.variants(scenario, config)
    assert list(variants) == ["original", "paraphrase_1", "paraphrase_2", "typos"]
    assert variants["paraphrase_1"][0]["question"] == "Consider the following. How many apples remain?"
    assert variants["paraphrase_2"][0]["question"] == "How many apples remain?\nAnswer carefully."
    assert variants["typos"][0]["question"] != "How many apples remain?"
    for docs in variants.values():
        assert {k: v for k, v in docs[0].items() if k != "question"} == {"id": "a", "target": "3",
                                                                         "answer": "... #### 3"}
    assert scenario.docs[0]["question"] == "How many apples remain?"  # the original is not edited


def test_gold_words_of_a_choice_item_are_the_right_options():
    scenario = helm.Scenario("bbh_mc", None, [], "acc", "question")
    assert helm.gold_words(scenario, {"choices": ["yellow banana", "red"], "gold": 0}) == {"yellow", "banana"}


# ---------------------------------------------------------------- BBH as multiple choice

def test_bbh_subtasks_become_choice_items_whose_gold_is_the_target(shared_data):
    raw = Bbh(["sports_understanding", "date_understanding"]).docs(str(shared_data / "bbh"))
    docs = helm.bbh_choice_docs(raw)
    assert len(docs) == len(raw) == 500
    for before, after in zip(raw, docs):
        if before["subtask"] == "sports_understanding":
            assert after["choices"] == ["no", "yes"] and after["choices"][after["gold"]] == before["target"]
        else:
            letter = "ABCDEFGH"[after["gold"]]
            assert f"({letter}) {after['choices'][after['gold']]}" in before["input"]
            assert before["target"] == f"({letter})" and "Options:" not in after["question"]


def test_bbh_free_form_subtask_is_refused(shared_data):
    raw = Bbh(["word_sorting"]).docs(str(shared_data / "bbh"))
    with pytest.raises(DataError, match="free-form"):
        helm.bbh_choice_docs(raw)


# ---------------------------------------------------------------- metrics

def test_selective_accuracy_takes_the_most_confident_items():
    rows = [{"confidence": c, "correct": k} for c, k in [(0.1, 0), (0.95, 1), (0.3, 0), (0.9, 1)] * 5]
    block = helm.selective_accuracy(rows, 0.1, seed=0, resamples=50)
    assert block["n"] == 2 and block["mean"] == 1.0 and block["coverage"] == 0.1
    assert helm.selective_accuracy(rows, 1.0, seed=0, resamples=50)["mean"] == 0.5


def test_ece_block_is_the_ece_with_an_interval():
    confidences, correct = [0.9, 0.8, 0.7, 0.6, 0.95, 0.55] * 4, [1, 0, 1, 0, 1, 1] * 4
    block = helm.ece_block(confidences, correct, seed=0, resamples=200)
    assert block["mean"] == expected_calibration_error(confidences, correct) and block["n"] == 24
    assert block["low"] <= block["mean"] <= block["high"] and block["high"] > block["low"]


def test_scenario_metrics_drops_are_paired_differences():
    def rows(correct, tokens=3):
        return [{"id": str(i), "correct": float(c), "confidence": 0.5, "prompt_tokens": 10, "completion_tokens": tokens}
                for i, c in enumerate(correct)]

    passes = {"original": {"seconds": 2.0, "rows": rows([1, 1, 1, 0])},
              "paraphrase_1": {"seconds": 1.0, "rows": rows([1, 0, 1, 0])},
              "paraphrase_2": {"seconds": 1.0, "rows": rows([0, 0, 1, 0])},
              "typos": {"seconds": 1.0, "rows": rows([1, 1, 1, 1])}}
    row = helm.scenario_metrics(passes, 0.1, seed=0, resamples=100)
    assert row["accuracy"]["mean"] == 0.75
    assert row["paraphrase_drop"]["mean"] == pytest.approx(0.75 - 0.375)  # each item averaged over rewordings
    assert row["typo_drop"]["mean"] == pytest.approx(-0.25) and row["typo_accuracy"]["mean"] == 1.0
    assert [b["mean"] for b in row["paraphrase_accuracy"]] == [0.5, 0.25]
    assert row["tokens_per_second"]["mean"] == 6.0 and row["latency_s"]["mean"] == 0.5
    assert row["prompt_tokens"]["mean"] == 10 and row["completion_tokens"]["n"] == 4


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, key", [
    ({"models": ["no/such/dir"]}, "models"), ({"models": ["tiny", "tiny"]}, "models"),
    ({"paraphrases": ["Reworded."]}, "paraphrases"), ({"coverage": 0.0}, "coverage"),
    ({"mc_subtasks": ["nope"]}, "mc_subtasks"), ({"typo_rate": 2.0}, "typo_rate")])
def test_bad_keys_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        helm.check_config(HelmConfig(model="tiny", **overrides))


def test_a_data_scenario_without_data_dir_says_how_to_give_it():
    config = HelmConfig(model="tiny", fast=True, scenarios=["gsm8k"])
    with pytest.raises(ConfigError, match="data_dir=DIR"):
        helm.build_scenarios(config, checkable_benchmark(config))
    with pytest.raises(ConfigError, match="not one of") as error:
        helm.build_scenarios(HelmConfig(model="tiny", scenarios=["nope"]), checkable_benchmark(config))
    assert str(error.value).count("checkable") == 1  # each valid scenario named once


def test_fast_shrinks_the_run():
    config = HelmConfig(fast=True)
    assert (config.limit, config.generation_tokens, len(config.paraphrases), len(config.mc_subtasks)) == (2, 8, 1, 1)


# ---------------------------------------------------------------- a run

def test_two_models_side_by_side_then_a_rerun_that_measures_nothing(tmp_path, tiny_model_dir, monkeypatch):
    items = tmp_path / "mc.jsonl"
    items.write_text("".join(json.dumps({"question": f"Which is larger, {a} or {b}?", "choices": [str(a), str(b)],
                                         "answer": int(b > a)}) + "\n" for a, b in [(3, 9), (8, 2), (5, 7)]))
    config = HelmConfig(model="tiny", models=["tiny", str(tiny_model_dir)], fast=True, eval_per_task=1,
                        scenarios=["checkable", f"mc={items}"], output_dir=str(tmp_path / "helm"))
    summary = helm.run_helm(config, checkable_benchmark(config))
    assert [(r["scenario"], r["model"]) for r in summary["table"]] == [
        ("checkable", "tiny"), ("mc", "tiny"), ("checkable", str(tiny_model_dir)), ("mc", str(tiny_model_dir))]
    for row in summary["table"]:
        n = row["accuracy"]["n"]
        assert n == (config.limit if row["scenario"] == "mc" else summary["scenarios"][0]["items"])  # limit: 2
        for key in ("accuracy", "ece", "selective_accuracy", "typo_drop", "paraphrase_drop"):
            assert row[key]["low"] <= row[key]["mean"] <= row[key]["high"], key
        assert row["selective_accuracy"]["n"] == -(-n // 10)  # the most confident 10% of items, rounded up
        assert row["prompt_tokens"]["mean"] > 0 and row["tokens_per_second"]["mean"] > 0
        assert (row["completion_tokens"]["mean"] == 0) == (row["scenario"] == "mc")
    tiny, saved = summary["table"][0], summary["table"][2]  # the same weights: the same answers
    assert tiny["accuracy"] == saved["accuracy"] and tiny["ece"] == saved["ece"]
    out = tmp_path / "helm"
    assert json.loads((out / "study.json").read_text())["table"][0]["model"] == "tiny"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(helm.COLUMNS) and page.count("<tr>") == 5
    assert all((out / f"{key}.png").read_bytes()[:4] == b"\x89PNG" for key, _, _ in helm.COLUMNS)

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(helm, "measure", fail)
    again = helm.run_helm(config, checkable_benchmark(config))
    assert again["jobs"]["reused"] == 2 * 2 * 3 and again["table"] == summary["table"]


def test_generation_confidence_is_the_geometric_mean_token_probability(tiny_model, tiny_tokenizer):
    from sftlab.eval.backend import EvalBackend
    from sftlab.eval.base import Sample
    from sftlab.eval.loglik import loglikelihoods

    backend = EvalBackend("tiny", loaded_model=tiny_model, tokenizer=tiny_tokenizer)
    samples = [Sample("t", "a", "Q: hi\nA:", None, " yes it is", None, {}), Sample("t", "b", "Q:", None, "", None, {})]
    [scored] = loglikelihoods(tiny_model, tiny_tokenizer, [("Q: hi\nA:", " yes it is")])
    confidences = helm.answer_confidences(backend, samples, batch_size=2)
    assert confidences[0] == pytest.approx(2.718281828 ** (scored.logprob / scored.num_tokens))
    assert 0 < confidences[0] < 1 and confidences[1] == 0.0


def test_an_adapter_run_directory_is_keyed_by_its_base_and_its_adapter(tmp_path, tiny_model):
    """models=[default, runs/lora1]: an adapter-only run dir loads as base + adapter, and its
    passes are cached under the adapter's files too (a retrained adapter is measured again)."""
    from peft import LoraConfig, get_peft_model

    from sftlab.models.export import record_base_name

    record_base_name(tiny_model, "tiny")
    run = tmp_path / "run"
    get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(run / "adapter"))
    key = helm.model_key(str(run))
    assert key != helm.model_key("tiny")
    (run / "adapter" / "README.md").write_text("retrained: more bytes")
    assert helm.model_key(str(run)) != key
