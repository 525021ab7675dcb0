"""`sftlab generate` end to end on a saved tiny model: outputs, settings file, resume, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from sftlab.cli import main
from sftlab.errors import ConfigError, DataError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.files import GenerateConfig, generate_file
from sftlab.infer.hf import HFGenerator

ROWS = [
    {"id": "a", "prompt": "The a of"},
    {"id": "b", "messages": [{"role": "user", "content": "Sort these numbers"}]},
    {"prompt": "count the letters"},
    {"id": "d", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    {"id": "e", "prompt": "x"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_generate_writes_rows_and_settings(tmp_path, tiny_model_dir, capsys):
    _write(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    code = main(["generate", str(tiny_model_dir), "--input", str(tmp_path / "in.jsonl"), "-o", str(out),
                 "--max-new-tokens", "6", "--batch-size", "2", "--no-progress"])
    assert code == 0
    rows = _read(out)
    # a row without an id is "<file stem>-<index>", as sftlab synth and read_conversations name it
    assert [r["id"] for r in rows] == ["a", "b", "in-2", "d", "e"]
    assert rows[1]["messages"] == ROWS[1]["messages"] and rows[0]["prompt"] == "The a of"
    assert all(r["completion_tokens"] == 6 and r["finish_reason"] == "length" for r in rows)
    settings = yaml.safe_load((tmp_path / "out.config.yaml").read_text())
    assert settings["sampling"]["max_new_tokens"] == 6 and settings["batch_size"] == 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["generated"] == 5 and summary["completion_tokens"] == 30


def test_resume_continues_without_duplicates(tmp_path, tiny_model, tiny_tokenizer):
    _write(tmp_path / "in.jsonl", ROWS)
    generator = HFGenerator(tiny_model, tiny_tokenizer, batch_size=2)
    config = GenerateConfig(model="tiny", input=str(tmp_path / "in.jsonl"),
                            output=str(tmp_path / "full.jsonl"), sampling=SamplingConfig(max_new_tokens=5))
    generate_file(generator, config, progress=False)
    full = (tmp_path / "full.jsonl").read_text()
    # an interrupted run: two complete rows and half of the third
    lines = full.splitlines(keepends=True)
    (tmp_path / "part.jsonl").write_text(lines[0] + lines[1] + lines[2][:10])
    config.output = str(tmp_path / "part.jsonl")
    done_before = generator.prompts_generated
    summary = generate_file(generator, config, progress=False)
    assert summary["skipped_existing"] == 2 and summary["generated"] == 3
    assert generator.prompts_generated - done_before == 3  # only the missing rows ran
    assert (tmp_path / "part.jsonl").read_text() == full
    # a third run has nothing left to do
    again = generate_file(generator, config, progress=False)
    assert again["generated"] == 0 and (tmp_path / "part.jsonl").read_text() == full


def test_resume_refuses_output_of_another_input(tmp_path, tiny_model, tiny_tokenizer):
    from sftlab.errors import DataError

    _write(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "out.jsonl").write_text(json.dumps({"id": "zzz", "output": "?"}) + "\n")
    config = GenerateConfig(model="tiny", input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"),
                            sampling=SamplingConfig(max_new_tokens=2))
    with pytest.raises(DataError, match="zzz"):
        generate_file(HFGenerator(tiny_model, tiny_tokenizer), config, progress=False)


def test_resume_refuses_changed_settings_and_keeps_the_saved_ones(tmp_path, tiny_model, tiny_tokenizer):
    _write(tmp_path / "in.jsonl", ROWS)
    generator = HFGenerator(tiny_model, tiny_tokenizer, batch_size=2)
    config = GenerateConfig(model="tiny", input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"),
                            sampling=SamplingConfig(max_new_tokens=4))
    generate_file(generator, config, progress=False)
    saved = (tmp_path / "out.config.yaml").read_text()
    config.sampling = SamplingConfig(max_new_tokens=8)
    with pytest.raises(ConfigError, match=r"sampling.max_new_tokens 4 -> 8"):
        generate_file(generator, config, progress=False)
    assert (tmp_path / "out.config.yaml").read_text() == saved  # still names what made the rows
    # the batch size does not change a completion: a rerun may change it
    config.sampling, config.batch_size = SamplingConfig(max_new_tokens=4), 1
    assert generate_file(generator, config, progress=False)["skipped_existing"] == len(ROWS)


# the messages are those of the one file reader (sftlab.data.io) and message parser (formats)
@pytest.mark.parametrize("line, message", [
    ('{"id": 1}', "no prompt"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "unknown role 'bot'"),
    ("{oops", "invalid JSON"),
])
def test_malformed_input_is_one_line_error(tmp_path, line, message):
    (tmp_path / "in.jsonl").write_text('{"prompt": "ok"}\n' + line + "\n")
    result = subprocess.run([sys.executable, "-m", "sftlab", "generate", "tiny", "--input",
                             str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"in.jsonl:2" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_alpaca_and_seed_task_rows_generate_with_the_chat_template(tmp_path, tiny_model, tiny_tokenizer):
    """Rows of any prompt format work, as in sftlab synth: the prompt is the conversation up
    to its last user turn, with the system turn and the Alpaca input kept."""
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "system": "Be brief."},
            {"id": "s1", "instruction": "Rewrite the text formally.", "is_classification": False,
             "instances": [{"input": "gonna be late", "output": ""}]}]
    _write(tmp_path / "in.jsonl", rows)
    seen = []
    generator = HFGenerator(tiny_model, tiny_tokenizer, batch_size=2)
    real_generate = generator.generate
    generator.generate = lambda prompts, sampling: seen.extend(prompts) or real_generate(prompts, sampling)
    config = GenerateConfig(model="tiny", input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"),
                            sampling=SamplingConfig(max_new_tokens=3))
    summary = generate_file(generator, config, progress=False)
    assert summary["generated"] == 2
    assert [r["id"] for r in _read(tmp_path / "out.jsonl")] == ["in-0", "s1"]
    assert [(m.role, m.content) for m in seen[0]] == [("system", "Be brief."), ("user", "Add the numbers.\n\n2 and 3")]
    assert [(m.role, m.content) for m in seen[1]] == [("user", "Rewrite the text formally.\n\ngonna be late")]


def test_a_prompt_too_long_stops_the_run_before_any_generation_naming_its_line(tmp_path, tiny_model, tiny_tokenizer):
    """Every prompt is encoded before the first is generated: row 4 (line 4) does not fit the
    context with max_new_tokens, so nothing is written and the error names file, line and id."""
    long_row = {"id": "long", "prompt": "word " * (tiny_model.config.max_position_embeddings - 3)}
    _write(tmp_path / "in.jsonl", ROWS[:3] + [long_row] + ROWS[3:])
    generator = HFGenerator(tiny_model, tiny_tokenizer, batch_size=2)
    config = GenerateConfig(model="tiny", input=str(tmp_path / "in.jsonl"),
                            output=str(tmp_path / "out.jsonl"), sampling=SamplingConfig(max_new_tokens=8))
    with pytest.raises(DataError, match=r"in\.jsonl:4: prompt 'long': the prompt has \d+ tokens; "
                                        r"with max_new_tokens=8 it exceeds the model's context"):
        generate_file(generator, config, progress=False)
    assert generator.prompts_generated == 0
    assert not (tmp_path / "out.jsonl").exists()
