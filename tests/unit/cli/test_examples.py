"""Every `example:` / `examples:` line of every command's --help is checked: it parses, and
every file it reads exists (in the repository, ../shared/data, or as the output of another
example). The ones that run offline in seconds (tiny model, shared data) are run, in order."""
import argparse
import os
import re
import shlex
from pathlib import Path

import pytest

from sftlab.cli import build_parser, main
from sftlab.cli.options import split_overrides

from .test_help import commands

REPO = Path(__file__).resolve().parents[3]

# run as written, in this order (later ones read what earlier ones wrote)
RUN = [
    "sftlab data convert ../shared/data/formats/alpaca_en_demo.json -o data/alpaca.jsonl",
    "sftlab data stats data/alpaca.jsonl --json",
    "sftlab data show-mask ../shared/data/formats/alpaca_en_demo.json --tokenizer tiny -n 2",
    "sftlab data apply-template ../shared/data/gsm8k/test.jsonl --task gsm8k --few-shot 2 --templates held_out "
    "-o data/gsm8k-eval.jsonl",
    "sftlab data mix examples/mix_demo.yaml -o data/mix-600.jsonl --set total=600 dedup.threshold=0.7",
    "sftlab eval tiny --tasks gsm8k --limit 3 --data-dir ../shared/data -o out/tiny",
    "sftlab eval tiny --tasks ifeval --limit 3 --max-new-tokens 32 --data-dir ../shared/data -o out/tiny-ifeval",
    "sftlab eval --tasks ifeval --limit 3 --responses out/tiny-ifeval/samples.jsonl --data-dir ../shared/data",
    "sftlab eval --config examples/eval_tiny.yaml limit=1 seed=7",
    "sftlab report out/tiny out/tiny-ifeval -o out/report",
    "sftlab models",
]
# options and keys whose value is a file or folder the command writes
OUTPUT_OPTIONS = {"-o", "--output", "--output-dir", "--plot", "--cache-dir"}
OUTPUT_KEYS = {"output_dir", "output", "cache_dir"}


def example_lines(text: str) -> list[str]:
    """The command lines under `example:`/`examples:` headers (continuations joined)."""
    lines, inside = [], False
    for line in (text or "").replace("\\\n", " ").splitlines():
        if re.match(r"^\s*examples?:\s*$", line):
            inside = True
        elif inside and line.startswith(" ") and line.strip():
            lines.append(line.strip())
        elif inside and not line.startswith(" "):
            inside = False
    return [line for line in lines if "sftlab" in shlex.split(line, comments=True)
            or "-m sftlab" in line]


def sftlab_argv(line: str) -> list[str]:
    """The words after `sftlab` (or `-m sftlab` under a launcher), without `&`."""
    words = shlex.split(line, comments=True)
    start = max(i for i, w in enumerate(words) if w == "sftlab") + 1
    return [w for w in words[start:] if w != "&"]


EXAMPLES = sorted({(" ".join(path), line) for path, parser in commands()
                   for line in example_lines(f"{parser.description}\n\n{parser.epilog}")})


def written_paths() -> set[str]:
    """Every path some example writes (its -o value, its output_dir=...)."""
    out = set()
    for _, line in EXAMPLES:
        words = sftlab_argv(line)
        for i, word in enumerate(words):
            if word in OUTPUT_OPTIONS and i + 1 < len(words):
                out.add(words[i + 1])
            key, sep, value = word.partition("=")
            if sep and key.rsplit(".", 1)[-1] in OUTPUT_KEYS:
                out.add(value)
    return out


def read_paths(words: list[str]) -> list[str]:
    """Words that name a file the command reads: path-like, not an output, not a URL."""
    paths = []
    for i, word in enumerate(words):
        if word.startswith("-") or (i and words[i - 1] in OUTPUT_OPTIONS) or "://" in word:
            continue
        key, sep, value = word.partition("=")
        if sep and key.rsplit(".", 1)[-1] in OUTPUT_KEYS:
            continue
        for part in (value if sep else word).strip("[]").split(","):
            if "/" in part or re.search(r"\.(ya?ml|jsonl?|gz|txt)$", part):
                paths.append(part)
    return paths


def test_examples_are_found_and_the_run_list_is_current():
    commands_with_examples = {path for path, _ in EXAMPLES}
    assert {"eval", "train", "generate", "export", "data mix", "judge winrate"} <= commands_with_examples
    shown = {line for _, line in EXAMPLES}
    assert not [line for line in RUN if line not in shown], "RUN lists an example no --help shows"


@pytest.mark.parametrize("command, line", EXAMPLES, ids=[line for _, line in EXAMPLES])
def test_example_parses_and_names_existing_files(command, line, monkeypatch):
    monkeypatch.chdir(REPO)
    words = sftlab_argv(line)
    try:
        args = split_overrides(build_parser(words), words)
    except SystemExit as exc:
        pytest.fail(f"does not parse: {line} ({exc})")
    assert getattr(args, "handler", None), line
    written = written_paths()
    for path in read_paths(words):
        produced = any(path == w or path.startswith(w.rstrip("/") + "/") for w in written)
        assert (REPO / path).exists() or produced, f"{line}: {path} does not exist and no example writes it"


def test_offline_examples_run(tmp_path, monkeypatch):
    """Run in a scratch folder beside a link to ../shared, as from a checkout."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    monkeypatch.chdir(work)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for line in RUN:
        assert main(sftlab_argv(line)) == 0, line
    assert (work / "out/tiny-ifeval/samples.jsonl").is_file() and (work / "out/eval-tiny/settings.json").is_file()
