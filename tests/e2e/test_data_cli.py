"""``sftlab data convert`` and ``sftlab data stats`` as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

from sftlab.cli import main


def sftlab(*args: str) -> subprocess.CompletedProcess:
    """The real command in a fresh process."""
    return subprocess.run([sys.executable, "-m", "sftlab", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_convert_alpaca_to_canonical_jsonl(shared_data, tmp_path):
    out = tmp_path / "alpaca.jsonl"
    done = sftlab("data", "convert", shared_data / "formats" / "alpaca_en_demo.json", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "read 999 records (alpaca) -> wrote 999 conversations (jsonl)" in done.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 999 and rows[0]["id"] == "alpaca_en_demo-0"
    assert rows[0]["messages"][0] == {"role": "user", "content": "Describe a process of making crepes."}


def test_convert_to_standard_output(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "convert", str(shared_data / "formats" / "alpaca_en_demo.json"), "-o", "-"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]  # the data only: the report is on stderr
    assert len(rows) == 999 and rows[0]["id"] == "alpaca_en_demo-0"
    assert "wrote 999 conversations (jsonl) to standard output" in err
    assert not list(tmp_path.iterdir())  # no file named "-"


def test_output_into_a_closed_pipe_is_no_traceback(shared_data):
    # `sftlab data stats FILE | head -1`: head has left before stats print
    process = subprocess.Popen([sys.executable, "-m", "sftlab", "data", "stats",
                                str(shared_data / "formats" / "alpaca_en_demo.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


def test_convert_oasst_best_path_to_sharegpt(shared_data, tmp_path, capsys):
    out = tmp_path / "best.json"
    code = main(["data", "convert", str(shared_data / "formats" / "oasst_en_100_tree.jsonl"),
                 "--oasst-best-path", "--to", "sharegpt", "-o", str(out)])
    assert code == 0
    assert "wrote 100 conversations (sharegpt)" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert len(rows) == 100 and rows[0]["conversations"][0]["from"] == "human"


def bad_file(tmp_path):
    lines = [
        {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "robot", "conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
        {"id": "users", "conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "?"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    return path


def test_convert_fail_prints_one_line_with_file_line_field(tmp_path):
    path = bad_file(tmp_path)
    done = sftlab("data", "convert", path, "-o", tmp_path / "out.jsonl")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {path}:2: field 'conversations[1].from': unknown speaker 'robot' "
        "(fix: use one of human, user, gpt, assistant, chatgpt, bing, bard, system)"]
    assert not (tmp_path / "out.jsonl").exists()


def test_convert_skip_prints_and_saves_counts_per_reason(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["data", "convert", str(bad_file(tmp_path)), "--on-error", "skip", "--to", "openai",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 4 records: empty assistant turn: 1, invalid json: 1, roles do not alternate: 1, " \
           "unknown role: 1" in printed
    report = json.loads((tmp_path / "out.json.skipped.json").read_text())
    assert report["skipped"] == {"unknown role": 1, "empty assistant turn": 1, "roles do not alternate": 1,
                                 "invalid json": 1}
    assert report["first_errors"][3].endswith("chat.jsonl:5: invalid JSON: Expecting property name enclosed "
                                              "in double quotes at column 2 (fix: each line must be one "
                                              "complete JSON object)")
    assert [row["id"] for row in json.loads(out.read_text())] == ["ok"]


def test_stats_json(shared_data, capsys):
    assert main(["data", "stats", str(shared_data / "formats" / "sharegpt_dummy_conversation.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["format"], stats["records"], stats["conversations"]) == ("sharegpt", 500, 500)
    assert stats["assistant_turns"] == {"1": 167, "2": 166, "3": 167}


def test_stats_with_tokenizer_table_and_plot(shared_data, tmp_path):
    plot = tmp_path / "lengths.png"
    done = sftlab("data", "stats", shared_data / "formats" / "sharegpt_dummy_conversation.json",
                  "--format", "sharegpt", "--tokenizer", "tiny", "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert "conversations         500" in done.stdout and "1: 167, 2: 166, 3: 167" in done.stdout
    assert "tokens / conversation mean" in done.stdout and "p99" in done.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_help_has_examples():
    done = sftlab("data", "stats", "--help")
    assert done.returncode == 0 and "example:" in done.stdout and "--tokenizer" in done.stdout


def test_a_warning_is_one_line_without_sftlab_source(tmp_path):
    call = {"type": "function", "function": {"name": "w", "arguments": "{}"}}
    row = {"messages": [{"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}],
           "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row) + "\n")
    done = sftlab("data", "show-mask", path, "--tokenizer", "tiny")
    assert done.returncode == 0, done.stderr
    assert "warning: the chat template does not know 'tools'" in done.stderr
    assert "warnings.warn" not in done.stderr and ".py:" not in done.stderr
