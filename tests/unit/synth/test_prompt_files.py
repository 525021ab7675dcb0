"""One prompt file, one reading: `sftlab generate` and `sftlab synth` send the same prompts
under the same ids (both read it with sftlab.data.prompts.read_prompts)."""
import json

from sftlab.infer.base import Generation, SamplingConfig
from sftlab.infer.files import GenerateConfig, generate_file
from sftlab.synth import distill, evol

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
