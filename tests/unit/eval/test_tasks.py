"""Task specs on the real files: BBH's 27 subtasks and prompts, GSM8K 8-shot, MATH, MC."""
import json

import pytest

from sftlab.errors import DataError
from sftlab.eval.base import TASKS, data_path_for, read_task_rows
from sftlab.eval.tasks import BBH_SUBTASKS, Bbh, Gsm8k, Math, MultipleChoice, MultipleChoiceLetters, read_mc


def test_bbh_loads_all_27_subtasks_with_their_prompts(shared_data):
    task = Bbh()
    docs = task.docs(data_path_for(task, shared_data))
    assert len(BBH_SUBTASKS) == 27
    assert {d["subtask"] for d in docs} == set(BBH_SUBTASKS)
    assert len(docs) == 6511  # the BBH total
    for subtask in BBH_SUBTASKS:
        doc = next(d for d in docs if d["subtask"] == subtask)
        prompt = task.prompt(doc)
        assert "canary" not in prompt  # the header is cut
        assert prompt.count("Let's think step by step.") == 4  # 3 exemplars + the question
        assert prompt.endswith(f"Q: {doc['input']}\nA: Let's think step by step.\n")
    first = next(d for d in docs if d["subtask"] == "boolean_expressions")
    assert task.prompt(first).startswith("Evaluate the result of a random Boolean expression.")


def test_bbh_num_fewshot_keeps_that_many_exemplars(shared_data):
    """--num-fewshot N (and the runner's shrinking to fit a small context) changed the recorded
    count but not BBH's prompt, which kept its 3 exemplars."""
    task = Bbh(["boolean_expressions"])
    doc = task.docs(str(shared_data / "bbh"))[0]
    full = task.prompt(doc)
    for shots in (2, 1, 0):
        task.num_fewshot = shots
        prompt = task.prompt(doc)
        assert prompt.count("Let's think step by step.") == shots + 1
        assert prompt.startswith("Evaluate the result of a random Boolean expression.\n\nQ: ")
        assert prompt.endswith(f"\n\nQ: {doc['input']}\nA: Let's think step by step.\n")
        assert full.startswith(prompt[: prompt.rindex("\n\nQ: ")])
    task.num_fewshot = 3
    assert task.prompt(doc) == full


def test_bbh_exemplars_score_as_correct(shared_data):
    """The CoT exemplars themselves end in "So the answer is X.": scoring them must work."""
    task = Bbh(["date_understanding"])
    doc = task.docs(str(shared_data / "bbh"))[0]
    _, scores = task.score(doc, f"Some reasoning. So the answer is {doc['target']}.")
    assert scores == {"exact_match": 1.0, "exact_match_last": 1.0}
    _, scores = task.score(doc, "So the answer is (Z).")
    assert scores == {"exact_match": 0.0, "exact_match_last": 0.0}


def test_gsm8k_prompt_and_scoring(shared_data):
    task = Gsm8k()
    docs = task.docs(str(shared_data / "gsm8k/test.jsonl"))
    assert len(docs) == 1319 and docs[0]["target"] == "18"
    prompt = task.prompt(docs[0])
    assert prompt.count("\nA: ") == 8 and prompt.endswith(f"Q: {docs[0]['question']}\nA:")
    assert prompt.startswith("Q: There are 15 trees in the grove.")
    task.num_fewshot = 2
    assert task.prompt(docs[0]).count("\nA: ") == 2
    extracted, scores = task.score(docs[0], "She sells 9 eggs, 9 * 2 = 18. The answer is 18.\n")
    assert scores == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0, "exact_match_lenient": 1.0}
    _, scores = task.score(docs[0], "She makes 18 dollars, or 20")
    assert scores == {"exact_match_strict": 0.0, "exact_match_flexible": 0.0, "exact_match_lenient": 0.0}


def test_missing_data_is_a_clear_error():
    with pytest.raises(DataError, match="--data-dir"):
        Gsm8k().docs(None)


def test_math_docs_and_equivalence(tmp_path):
    rows = [{"problem": "What is $1/2 + 1/4$?", "solution": "It is $\\boxed{\\frac{3}{4}}$.", "type": "Algebra"},
            {"problem": "2+2?", "solution": "x", "answer": "4"}]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = Math()
    docs = task.docs(str(path))
    assert [d["target"] for d in docs] == ["\\frac{3}{4}", "4"]
    assert task.prompt(docs[0]).count("Problem:") == 5
    assert task.score(docs[0], "so the sum is $\\boxed{0.75}$")[1]["exact_match_normalized"] == 1.0
    assert task.score(docs[0], "so the sum is $\\boxed{\\dfrac34}$")[1]["exact_match_normalized"] == 1.0
    assert task.score(docs[1], "The final answer is $5$.")[1]["exact_match_normalized"] == 0.0


def test_mc_reader_accepts_letters_indices_and_csv(tmp_path):
    jsonl = tmp_path / "mc.jsonl"
    jsonl.write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": "B"}) + "\n"
                     + json.dumps({"question": "1+1?", "choices": ["2", "3", "4"], "answer": 0}) + "\n")
    assert [d["gold"] for d in read_mc(jsonl)] == [1, 0]
    csv_file = tmp_path / "mc.csv"
    csv_file.write_text("question,A,B,C,D,answer\nSky?,red,blue,green,black,B\n")
    assert read_mc(csv_file)[0]["choices"] == ["red", "blue", "green", "black"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "E"}) + "\n")
    with pytest.raises(DataError, match="answer"):
        read_mc(bad)


def test_mc_prompts():
    doc = {"id": "0", "question": "Sky colour?", "choices": ["red", "blue"], "gold": 1}
    assert MultipleChoice().context(doc) == "Question: Sky colour?\nAnswer:"
    assert MultipleChoice().choices(doc) == [" red", " blue"]
    assert MultipleChoiceLetters().context(doc) == "Sky colour?\nA. red\nB. blue\nAnswer:"
    assert MultipleChoiceLetters().choices(doc) == [" A", " B"]


def test_registered_names():
    for name in ("gsm8k", "math", "bbh", "mc", "mc_letters"):
        assert name in TASKS


def test_task_files_are_read_by_the_one_reader(tmp_path):
    """``read_task_rows`` is ``sftlab.data.io.read_rows`` with a task hint: JSONL or a JSON
    list, and a bad line names its file and line."""
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    listed, lines = tmp_path / "test.json", tmp_path / "test.jsonl"
    listed.write_text(json.dumps(rows))
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_task_rows(listed) == read_task_rows(lines) == rows
    lines.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(DataError, match="test.jsonl:2: invalid JSON"):
        read_task_rows(lines)
    with pytest.raises(DataError, match="--data-dir"):
        read_task_rows(tmp_path / "missing.jsonl")


def test_bbh_file_must_be_one_task_object(tmp_path):
    (tmp_path / "cot-prompts").mkdir()
    (tmp_path / "cot-prompts" / "navigate.txt").write_text("canary\n-----\nQ: x\nA: y")
    (tmp_path / "navigate.json").write_text(json.dumps([{"input": "a", "target": "b"}]))
    with pytest.raises(DataError, match="not a BBH task file"):
        Bbh(["navigate"]).docs(str(tmp_path))
    (tmp_path / "navigate.json").write_text(json.dumps({"examples": [{"input": "a", "target": "b"}]}))
    assert Bbh(["navigate"]).docs(str(tmp_path))[0]["target"] == "b"


def test_mc_given_a_folder_says_so(tmp_path):
    """`--tasks mc --data-dir DIR` said "DIR: file not found" of a folder that exists."""
    with pytest.raises(DataError, match="is a folder") as info:
        MultipleChoice().docs(str(tmp_path))
    assert "mc=FILE.jsonl" in str(info.value)
