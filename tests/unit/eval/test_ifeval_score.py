"""IFEval strict/loose scoring and the four headline accuracies."""
import json

import pytest

from sftlab.errors import DataError
from sftlab.eval.ifeval import (
    METRICS,
    aggregate,
    loose_variants,
    score_ifeval_responses,
    score_prompt,
    score_responses_file,
)

NO_COMMA = {"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
TWO = {
    "key": 2,
    "prompt": "p2",
    "instruction_id_list": ["startend:quotation", "detectable_format:title"],
    "kwargs": [{}, {}],
}


def test_loose_variants_are_the_reference_eight():
    variants = loose_variants("Sure, *here*:\nbody\nbye")
    assert variants == [
        "Sure, *here*:\nbody\nbye", "body\nbye", "Sure, *here*:\nbody", "body",
        "Sure, here:\nbody\nbye", "body\nbye", "Sure, here:\nbody", "body",
    ]


def test_loose_forgives_a_chatty_first_line_but_strict_does_not():
    result = score_prompt(NO_COMMA, "Sure, here it is:\nNo commas in this line")
    assert result == {"strict": [False], "loose": [True]}


def test_loose_strips_markdown_asterisks():
    row = {"key": 3, "prompt": "p", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    assert score_prompt(row, '**"Quoted"**') == {"strict": [False], "loose": [True]}


def test_empty_response_follows_nothing():
    # no_comma would pass on "" but the reference requires a non-blank response
    assert score_prompt(NO_COMMA, "   ") == {"strict": [False], "loose": [False]}


def test_aggregate_hand_computed():
    results = [
        {"strict": [True], "loose": [True]},
        {"strict": [True, False], "loose": [True, True]},
        {"strict": [False, False], "loose": [False, True]},
    ]
    scores = aggregate(results)
    assert scores["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert scores["inst_level_strict_acc"] == pytest.approx(2 / 5)
    assert scores["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert scores["inst_level_loose_acc"] == pytest.approx(4 / 5)


def test_score_ifeval_responses_matches_by_prompt_text():
    responses = [{"prompt": "p2", "response": '"<<Title>> body"'},
                 {"prompt": "p1", "response": "a, b"}]
    summary = score_ifeval_responses([NO_COMMA, TWO], responses)
    assert summary["num_prompts"] == 2
    assert summary["prompt_level_strict_acc"] == 0.5
    assert summary["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert summary["per_instruction_strict"]["punctuation:no_comma"] == 0.0
    assert summary["results"][1] == {"key": 2, "strict": [True, True], "loose": [True, True]}


def test_missing_response_is_a_data_error():
    with pytest.raises(DataError, match="no response"):
        score_ifeval_responses([NO_COMMA], [{"prompt": "other", "response": "x"}])


def test_score_responses_file_reads_jsonl(tmp_path):
    inputs, responses = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inputs.write_text(json.dumps(NO_COMMA) + "\n")
    responses.write_text(json.dumps({"prompt": "p1", "response": "fine"}) + "\n")
    assert score_responses_file(responses, inputs)["prompt_level_strict_acc"] == 1.0
    responses.write_text("{broken\n")
    with pytest.raises(DataError, match="out.jsonl:1"):
        score_responses_file(responses, inputs)
    listed = tmp_path / "out.json"  # a JSON list reads as well (sftlab.data.io)
    listed.write_text(json.dumps([{"prompt": "p1", "response": "fine"}]))
    assert score_responses_file(listed, inputs)["prompt_level_strict_acc"] == 1.0


def test_every_prompt_scored_against_itself_is_sane(shared_data):
    """Sanity on the real 541 prompts: no crash, every score in [0, 1], and the prompt
    repeated verbatim always satisfies its own repeat_prompt instruction."""
    path = shared_data / "ifeval" / "input_data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    responses = [{"prompt": row["prompt"], "response": row["prompt"]} for row in rows]
    summary = score_ifeval_responses(rows, responses)
    assert summary["num_prompts"] == 541
    for metric in METRICS:
        assert 0.0 <= summary[metric] <= 1.0
    assert summary["prompt_level_strict_acc"] <= summary["prompt_level_loose_acc"]
    assert summary["inst_level_strict_acc"] <= summary["inst_level_loose_acc"]
    for row, result in zip(rows, summary["results"]):
        for instruction_id, kwargs, followed in zip(
            row["instruction_id_list"], row["kwargs"], result["strict"]
        ):
            if instruction_id == "combination:repeat_prompt" and row["prompt"].strip().lower(
            ).startswith(kwargs["prompt_to_repeat"].strip().lower()):
                assert followed


def test_task_adapter_pools_instructions_across_prompts(shared_data):
    from sftlab.eval.base import Sample
    from sftlab.eval.tasks_ifeval import IFEval

    task = IFEval()
    docs = task.docs(str(shared_data / "ifeval" / "input_data.jsonl"))
    assert len(docs) == 541 and docs[0]["id"] == "1000"
    assert task.prompt(docs[0])[0].content == docs[0]["prompt"]
    samples = []
    for doc, response in [(NO_COMMA, "no commas"), (TWO, '"<<T>> but not closed')]:
        extracted, scores = task.score({**doc, "id": str(doc["key"])}, response)
        samples.append(Sample("ifeval", str(doc["key"]), "", None, response, extracted, scores))
    assert samples[1].scores["inst_level_strict_acc"] == 0.5
    summary = task.aggregate(samples)
    # pooled: 2 of 3 instructions (not the mean of 1.0 and 0.5)
    assert summary["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert summary["prompt_level_strict_acc"] == 0.5
