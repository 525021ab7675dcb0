"""One prompt file, one reading: `sftlab generate` and `sftlab synth` send the same prompts
under the same ids (both read it with sftlab.data.prompts.read_prompts)."""
import json

import pytest

from sftlab.cli import main
from sftlab.data.prompts import read_prompts
from sftlab.infer.base import Generation, SamplingConfig
from sftlab.infer.files import GenerateConfig, generate_file
from sftlab.synth import distill, evol, self_chat
from sftlab.synth.base import resume_ids
from sftlab.synth.store import stable_id

ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3"},                     # alpaca, no output
    {"id": "sys", "messages": [{"role": "system", "content": "Answer in French."},
                               {"role": "user", "content": "Name a colour."}]},
    {"id": "seed_task_9", "name": "formal", "instruction": "Rewrite the text formally.",
     "instances": [{"input": "gonna be late", "output": "I will be late."}], "is_classification": False},
    {"prompt": "Tell me a joke."},
]


class RecordingTeacher:
    model = "recording"

    def __init__(self):
        self.requests = []

    def complete(self, requests):
        self.requests += requests
        return [f"answer {len(self.requests) - len(requests) + k}" for k in range(len(requests))]


class RecordingGenerator:
    batch_size = 8

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, sampling):
        self.prompts += prompts
        return [Generation("out", 1, 1, "stop") for _ in prompts]


def _write(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _chat(prompt):
    """A generate prompt as (role, content) turns; raw text is one user turn for a chat model."""
    if isinstance(prompt, str):
        return [("user", prompt)]
    return [(m.role, m.content) for m in prompt]


def test_generate_and_distill_read_the_same_prompts_and_ids(tmp_path):
    path = _write(tmp_path)
    generator = RecordingGenerator()
    generate_file(generator, GenerateConfig(input=str(path), output=str(tmp_path / "gen.jsonl"),
                                            sampling=SamplingConfig(max_new_tokens=2)), progress=False)
    generated_ids = [json.loads(line)["id"] for line in (tmp_path / "gen.jsonl").read_text().splitlines()]

    teacher = RecordingTeacher()
    distill.run(distill.DistillConfig(prompts=str(path), output=str(tmp_path / "d.jsonl"), batch_size=2),
                teacher=teacher)
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]

    assert generated_ids == [r["meta"]["prompt_id"] for r in records] == ["prompts-0", "sys", "seed_task_9", "prompts-3"]
    sent = [[(m.role, m.content) for m in request.messages] for request in teacher.requests]
    assert sent == [_chat(prompt) for prompt in generator.prompts]
    # the Alpaca input, the system turn and the seed task's instance input all reach the model
    assert sent[0] == [("user", "Add the numbers.\n\n2 and 3")]
    assert sent[1] == [("system", "Answer in French."), ("user", "Name a colour.")]
    assert sent[2] == [("user", "Rewrite the text formally.\n\ngonna be late")]
    assert records[1]["messages"][0] == {"role": "system", "content": "Answer in French."}
    # a {"prompt": "text"} row stays raw text for generate (no chat template)
    assert generator.prompts[3] == "Tell me a joke."


def test_orca_system_prompt_does_not_replace_the_rows_own(tmp_path):
    teacher = RecordingTeacher()
    distill.run(distill.DistillConfig(prompts=str(_write(tmp_path)), output=str(tmp_path / "d.jsonl"),
                                      orca_system_prompts=True), teacher=teacher)
    systems = [request.messages[0].content for request in teacher.requests]
    assert systems[1] == "Answer in French."
    assert all(s in distill.ORCA_SYSTEM_PROMPTS for k, s in enumerate(systems) if k != 1)


def test_evol_evolves_the_last_user_turn_with_its_input(tmp_path):
    teacher = RecordingTeacher()
    evol.run(evol.EvolConfig(prompts=str(_write(tmp_path)), output=str(tmp_path / "e.jsonl"), rounds=1,
                             judge_equality=False), teacher=teacher)
    evolving = [request.messages[0].content for request in teacher.requests[:len(ROWS)]]
    assert "2 and 3" in evolving[0] and "gonna be late" in evolving[2]


class EchoTeacher:
    """Answers each request from its content alone, as a greedy or cached teacher does."""

    model = "echo"

    def __init__(self):
        self.requests = 0

    def complete(self, requests):
        self.requests += len(requests)
        return [f"Reply {stable_id([m.to_dict() for m in r.messages])[:8]}." for r in requests]


NO_IDS = [{"instruction": "Name a colour."}, {"instruction": "Name a fruit."}, {"prompt": "Say hi."},
          {"messages": [{"role": "user", "content": "Count to two."}]}, {"instruction": "Name a colour."},
          {"id": "own", "instruction": "Name a colour."}]
RESUMING = {  # pipeline module, config, records one prompt gives
    "distill": (distill, lambda p, o: distill.DistillConfig(prompts=p, output=o), 1),
    "distill-orca": (distill, lambda p, o: distill.DistillConfig(prompts=p, output=o, orca_system_prompts=True), 1),
    "self-chat": (self_chat, lambda p, o: self_chat.SelfChatConfig(prompts=p, output=o), 1),
    "evol-instruct": (evol, lambda p, o: evol.EvolConfig(prompts=p, output=o, rounds=2, judge_equality=False), 2),
}


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("name", list(RESUMING))
def test_rerun_after_prepending_renaming_or_reordering_answers_no_prompt_twice(tmp_path, name):
    """Rows without an id were keyed by <file stem>-<index>: a line added on top, or a renamed
    file, answered every prompt again."""
    module, make_config, per_prompt = RESUMING[name]
    output = str(tmp_path / "out.jsonl")
    first = module.run(make_config(_write_rows(tmp_path / "prompts.jsonl", NO_IDS), output), teacher=EchoTeacher())
    assert first.written == len(NO_IDS) * per_prompt  # the identical prompts stay separate rows

    moved = _write_rows(tmp_path / "renamed.jsonl", [{"instruction": "Name a tree."}] + NO_IDS)
    again = module.run(make_config(moved, output), teacher=EchoTeacher())
    assert again.written == per_prompt and again.total == (len(NO_IDS) + 1) * per_prompt
    shuffled = _write_rows(tmp_path / "shuffled.jsonl", ([{"instruction": "Name a tree."}] + NO_IDS)[::-1])
    assert module.run(make_config(shuffled, output), teacher=EchoTeacher()).written == 0

    records = [json.loads(line) for line in open(output)]
    assert len({r["id"] for r in records}) == len(records)
    if module is not evol:
        firsts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records]
        assert firsts.count("Name a colour.") == 3 and firsts.count("Name a tree.") == 1


def test_resume_ids_come_from_the_row_id_else_its_content(tmp_path):
    rows = read_prompts(_write_rows(tmp_path / "a.jsonl", NO_IDS))
    ids = resume_ids(rows, tmp_path / "a.jsonl")
    assert ids[5] == "own" and ids[4] == f"{ids[0]}-1" and len(set(ids)) == len(ids)
    renamed = tmp_path / "b.jsonl"
    _write_rows(renamed, [{"instruction": "Name a tree."}] + NO_IDS)
    assert resume_ids(read_prompts(renamed), renamed)[1:] == ids


def test_missing_prompt_file_names_the_key_that_sets_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "distill"]) == 2
    assert "instructions.jsonl: file not found (fix: set prompts=FILE" in capsys.readouterr().err
    assert main(["synth", "self-chat", "prompts=nope.jsonl"]) == 2
    assert "nope.jsonl: file not found (fix: prompts=nope.jsonl names it" in capsys.readouterr().err
