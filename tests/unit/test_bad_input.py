"""The bad-input corpus: malformed files and values through the real CLI, in-process.

Every case runs ``sftlab.cli.main(argv)`` and checks the outcome a user sees: a non-zero
exit with one ``error:`` line (no traceback) that names the file, and the line or record and
the field where one applies; or, for input that is odd but fine (BOM, CRLF, ...), success.
Commands that load a model (train, generate, eval) must fail on bad input before loading it.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from sftlab.cli import main

CHAT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
ALPACA = {"instruction": "Say hi", "input": "", "output": "hi"}
PS_YAML = ("dataset: demo\ntemplates:\n  t1:\n    id: t1\n    name: plain\n"
           "    jinja: '{{text}} ||| {{label}}'\n")


@dataclass
class Case:
    """``build(tmp)`` writes the inputs and returns argv; ``expect`` are substrings of the
    error line (``{tmp}`` is replaced by the case folder), or None for a success."""

    id: str
    build: Callable[[Path], list[str]]
    expect: tuple[str, ...] | None
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()


def lines(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def put(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def convert(name: str, content: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["data", "convert", put(tmp, name, content), "-o", str(tmp / "out.jsonl"), *extra]


def stats(name: str, content: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["data", "stats", put(tmp, name, content), *extra]


def gzipped(text: str) -> bytes:
    return gzip.compress(text.encode())


def nested_tree(depth: int) -> str:
    """An Open Assistant tree ``depth`` messages deep (prompter and assistant alternating),
    as JSON text (``json.dumps`` itself would recurse)."""
    role = ["prompter", "assistant"]
    opening = "".join(f'{{"message_id": "m{level}", "role": "{role[level % 2]}", "text": "t", "replies": ['
                      for level in range(depth))
    return '{"message_tree_id": "deep", "prompt": ' + opening[:-len(', "replies": [')] + "}" \
        + "]}" * (depth - 1) + "}"


def superni(output) -> dict:
    return {"Definition": ["Answer."], "Positive Examples": [], "Negative Examples": [],
            "Instances": [{"id": "i0", "input": "2+2?", "output": ["4"]},
                          {"id": "i1", "input": "3+3?", "output": output}]}


# ---------------------------------------------------------------- data convert / stats

FILE_CASES = [
    Case("not-utf8", convert("a.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n'),
         ("a.jsonl", "UTF-8")),
    Case("not-utf8-line3", convert("a.jsonl", lines(ALPACA, ALPACA).encode() + b'{"instruction": "\xff"}\n'),
         ("a.jsonl:3", "UTF-8")),
    Case("not-utf8-json", convert("a.json", b'[{"instruction": "\xff\xfe", "output": "x"}]'), ("a.json", "UTF-8")),
    Case("utf16", convert("a.jsonl", lines(ALPACA).encode("utf-16")), ("a.jsonl",)),
    Case("bom-jsonl", convert("a.jsonl", b"\xef\xbb\xbf" + lines(ALPACA, ALPACA).encode()), None,
         ("wrote 2",)),
    Case("bom-json", convert("a.json", b"\xef\xbb\xbf" + json.dumps([ALPACA]).encode()), None, ("wrote 1",)),
    Case("bom-gz", convert("a.jsonl.gz", gzip.compress(b"\xef\xbb\xbf" + lines(ALPACA).encode())), None,
         ("wrote 1",)),
    Case("crlf-jsonl", convert("a.jsonl", lines(ALPACA, ALPACA).replace("\n", "\r\n")), None, ("wrote 2",)),
    Case("crlf-json", convert("a.json", json.dumps([ALPACA], indent=1).replace("\n", "\r\n")), None,
         ("wrote 1",)),
    Case("line-separator-in-string", convert("a.jsonl", lines({"instruction": "a\u2028b\u0085c", "output": "x"})
                                             .replace("\\u2028", "\u2028").replace("\\u0085", "\u0085")),
         None, ("wrote 1",)),
    Case("cr-only", convert("a.jsonl", lines(ALPACA, ALPACA).replace("\n", "\r")), None, ("wrote 2",)),
    Case("directory-input", lambda tmp: ["data", "convert", str(tmp), "-o", str(tmp / "o.jsonl")],
         ("{tmp}", "directory")),
    Case("directory-stats", lambda tmp: ["data", "stats", str(tmp)], ("{tmp}", "directory")),
    Case("missing-file", lambda tmp: ["data", "convert", str(tmp / "no.jsonl"), "-o", str(tmp / "o.jsonl")],
         ("no.jsonl", "not found")),
    Case("fake-gz", convert("a.jsonl.gz", lines(ALPACA)), ("a.jsonl.gz", "gzip")),
    Case("truncated-gz", convert("a.jsonl.gz", gzipped(lines(ALPACA, ALPACA) * 50)[:60]), ("a.jsonl.gz",)),
    Case("gz-not-utf8", convert("a.jsonl.gz", gzip.compress(b'{"instruction": "\xff"}\n')),
         ("a.jsonl.gz", "UTF-8")),
    Case("empty-file", convert("a.jsonl", ""), ("a.jsonl", "empty")),
    Case("empty-json", convert("a.json", ""), ("a.json", "empty")),
    Case("blank-lines-only", convert("a.jsonl", "\n\n  \n"), ("a.jsonl", "empty")),
    Case("empty-array", convert("a.json", "[]"), ("a.json", "empty")),
    Case("empty-gz", convert("a.jsonl.gz", gzipped("")), ("a.jsonl.gz", "empty")),
    Case("stats-empty", stats("a.jsonl", ""), ("a.jsonl", "empty")),
    Case("huge-line", convert("a.jsonl", lines({"instruction": "x" * 3_000_000, "output": "y"})), None,
         ("wrote 1",)),
    Case("huge-broken-line", convert("a.jsonl", '{"instruction": "' + "x" * 3_000_000 + "\n"),
         ("a.jsonl:1", "invalid JSON")),
    Case("broken-json-line2", convert("a.jsonl", lines(ALPACA, "{broken")), ("a.jsonl:2", "invalid JSON")),
    Case("broken-json-array", convert("a.json", '[{"instruction": "a", "output": "b"},\n {"x": }]'),
         ("a.json:2", "invalid JSON")),
    Case("json-scalar", convert("a.json", "42"), ("a.json", "array")),
    Case("json-string", convert("a.json", '"hello"'), ("a.json", "array")),
    Case("jsonl-number-row", convert("a.jsonl", lines(ALPACA, "7")), ("a.jsonl:2",)),
    Case("jsonl-null-row", convert("a.jsonl", lines(ALPACA, "null")), ("a.jsonl:2",)),
    Case("jsonl-list-row", convert("a.jsonl", lines(ALPACA, "[1, 2]")), ("a.jsonl:2",)),
    Case("array-of-numbers", convert("a.json", "[1, 2, 3]"), ("a.json",)),
    Case("unknown-format", convert("a.jsonl", lines({"foo": 1})), ("a.jsonl", "format")),
    Case("unknown-format-flag", convert("a.jsonl", lines(ALPACA), "--format", "nope"), ("nope",)),
    Case("wrong-format-flag", convert("a.jsonl", lines(ALPACA), "--format", "sharegpt"),
         ("a.jsonl:1", "conversations")),
    Case("alpaca-output-number", convert("a.jsonl", lines(ALPACA, {"instruction": "x", "output": 4})),
         ("a.jsonl:2", "output")),
    Case("alpaca-instruction-null", convert("a.jsonl", lines(ALPACA, {"instruction": None, "output": "x"})),
         ("a.jsonl:2", "instruction")),
    Case("alpaca-missing-output", convert("a.jsonl", lines(ALPACA, {"instruction": "x", "input": ""}),
                                          "--format", "alpaca"), ("a.jsonl:2", "output")),
    Case("alpaca-history-bad", convert("a.jsonl", lines(ALPACA, {**ALPACA, "history": "no"})),
         ("a.jsonl:2", "history")),
    Case("sharegpt-unknown-speaker", convert("a.jsonl", lines(CHAT, {"conversations": [
        {"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]})),
         ("a.jsonl:2", "conversations[1].from")),
    Case("sharegpt-value-number", convert("a.jsonl", lines(CHAT, {"conversations": [
        {"from": "human", "value": 1}, {"from": "gpt", "value": "b"}]})), ("a.jsonl:2", "conversations[0]")),
    Case("sharegpt-not-list", convert("a.jsonl", lines(CHAT, {"conversations": "hi"})),
         ("a.jsonl:2", "conversations")),
    Case("sharegpt-turn-not-object", convert("a.jsonl", lines(CHAT, {"conversations": ["hi", "there"]})),
         ("a.jsonl:2", "conversations[0]")),
    Case("sharegpt-empty-reply", convert("a.jsonl", lines(CHAT, {"conversations": [
        {"from": "human", "value": "a"}, {"from": "gpt", "value": ""}]})), ("a.jsonl:2",)),
    Case("sharegpt-no-assistant", convert("a.jsonl", lines(CHAT, {"conversations": [
        {"from": "human", "value": "a"}]})), ("a.jsonl:2",)),
    Case("openai-role-bad", convert("a.jsonl", lines({"messages": [{"role": "user", "content": "a"},
                                                                   {"role": "wizard", "content": "b"}]})),
         ("a.jsonl:1", "messages[1].role")),
    Case("openai-content-list", convert("a.jsonl", lines({"messages": [{"role": "user", "content": "a"},
                                                                       {"role": "assistant", "content": [1]}]})),
         ("a.jsonl:1", "messages[1].content")),
    Case("openai-messages-null", convert("a.jsonl", lines({"messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}]}, {"messages": None}), "--format", "openai"),
         ("a.jsonl:2", "messages")),
    Case("skip-counts", convert("a.jsonl", lines(ALPACA, {"instruction": "x", "output": 4}, "{bad"),
                                "--on-error", "skip"), None, ("skipped",)),
    Case("skip-all-bad", convert("a.jsonl", lines({"instruction": 1, "output": 4}, "{bad"),
                                 "--on-error", "skip", "--format", "alpaca"), None, ("skipped",)),
    Case("duplicate-ids", convert("a.jsonl", lines({**CHAT, "id": "x"}, {**CHAT, "id": "x"})),
         ("a.jsonl:2", "id", "x")),
    Case("duplicate-ids-json", convert("a.json", json.dumps([{**CHAT, "id": "x"}, CHAT, {**CHAT, "id": "x"}])),
         ("a.json[record 2]", "id")),
    Case("duplicate-ids-skip", convert("a.jsonl", lines({**CHAT, "id": "x"}, {**CHAT, "id": "x"}),
                                       "--on-error", "skip"), None, ("skipped 1",)),
    Case("numeric-ids-collide", convert("a.jsonl", lines({**CHAT, "id": 1}, {**CHAT, "id": "1"})),
         ("a.jsonl:2", "id")),
    Case("superni-output-number", convert("task.json", json.dumps(superni([4]))),
         ("task.json", "Instances[1]", "output")),
    Case("superni-output-scalar", convert("task.json", json.dumps(superni(7))),
         ("task.json", "Instances[1]", "output")),
    Case("superni-instances-not-list", convert("task.json", json.dumps({**superni([]), "Instances": 3}),
                                               "--format", "superni"), ("task.json", "Instances")),
    Case("superni-definition-number", convert("task.json", json.dumps({**superni(["8"]), "Definition": 5}),
                                              "--format", "superni"), ("task.json", "Definition")),
    Case("oasst-deep-tree", convert("t.jsonl", nested_tree(3000) + "\n"), None, ("wrote 1",)),
    Case("oasst-deep-tree-best", convert("t.jsonl", nested_tree(3000) + "\n", "--oasst-best-path"), None,
         ("wrote 1",)),
    Case("oasst-deep-json", convert("t.json", "[" + nested_tree(3000) + "]"), None, ("wrote 1",)),
    Case("oasst-bad-role-deep", convert("t.jsonl", lines({"message_tree_id": "x", "prompt": {
        "role": "prompter", "text": "a", "replies": [{"role": "bot", "text": "b"}]}})),
         ("t.jsonl:1", "prompt.replies[0].role")),
    Case("oasst-replies-not-list", convert("t.jsonl", lines({"message_tree_id": "x", "prompt": {
        "role": "prompter", "text": "a", "replies": "b"}})), ("t.jsonl:1", "replies")),
    Case("oasst-reply-not-object", convert("t.jsonl", lines({"message_tree_id": "x", "prompt": {
        "role": "prompter", "text": "a", "replies": [3]}})), ("t.jsonl:1", "prompt.replies[0]")),
    Case("oasst-text-number", convert("t.jsonl", lines({"message_tree_id": "x", "prompt": {
        "role": "prompter", "text": 3, "replies": []}})), ("t.jsonl:1", "prompt.text")),
    Case("oasst-flat-missing-parent", convert("m.jsonl", lines(
        {"message_id": "a", "parent_id": None, "role": "prompter", "text": "q", "message_tree_id": "a"},
        {"message_id": "b", "parent_id": "zzz", "role": "assistant", "text": "r", "message_tree_id": "a"}),
        "--format", "oasst"), ("m.jsonl:1", "prompt")),
    Case("oasst-flat-cycle", convert("m.jsonl", lines(
        {"message_id": "a", "parent_id": "b", "role": "prompter", "text": "q", "message_tree_id": "a"},
        {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "r", "message_tree_id": "a"})),
         ("m.jsonl", "format")),
    Case("deep-nesting-nonsense", convert("a.jsonl", "[" * 100_000 + "\n"), ("a.jsonl:1",)),
    Case("deep-nesting-json", convert("a.json", "[" * 100_000 + "]" * 100_000), ("a.json",)),
    Case("nan-literal", convert("a.jsonl", '{"instruction": NaN, "output": "x"}\n'), ("a.jsonl:1",)),
    Case("output-is-directory", lambda tmp: ["data", "convert", put(tmp, "a.jsonl", lines(ALPACA)),
                                             "-o", str(tmp)], ("{tmp}", "directory")),
    Case("output-parent-is-file", lambda tmp: ["data", "convert", put(tmp, "a.jsonl", lines(ALPACA)),
                                               "-o", str(tmp / "a.jsonl" / "out.jsonl")], ("out.jsonl",)),
    Case("output-unknown-format", convert("a.jsonl", lines(ALPACA), "--to", "yaml"), None),
    Case("alpaca-writer-bad", convert("a.jsonl", lines({"messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}), "--to", "alpaca"),
         ("a.jsonl:1",)),
    Case("stats-bad-row", stats("a.jsonl", lines(ALPACA, {"instruction": "x", "output": 4})),
         ("a.jsonl:2", "output")),
    Case("stats-not-utf8", stats("a.jsonl", b"\xff\xfe\n"), ("a.jsonl", "UTF-8")),
    Case("stats-fake-gz", stats("a.json.gz", "[]"), ("a.json.gz", "gzip")),
    Case("stats-unknown-tokenizer", stats("a.jsonl", lines(ALPACA), "--tokenizer", "nobody/no-such-model-xyz"),
         ("nobody/no-such-model-xyz",)),
    Case("stats-tokenizer-missing-dir", lambda tmp: ["data", "stats", put(tmp, "a.jsonl", lines(ALPACA)),
                                                     "--tokenizer", str(tmp / "nodir")], ("nodir",)),
    Case("stats-plot-dir", lambda tmp: ["data", "stats", put(tmp, "a.jsonl", lines(ALPACA)), "--tokenizer",
                                        "tiny", "--plot", str(tmp)], ("{tmp}", "directory")),
]

# the expected-output cases above with expect None but for --to yaml: argparse rejects it (exit 2)
ARGPARSE_ERRORS = {"output-unknown-format", "unknown-format-flag"}


# ---------------------------------------------------------------- apply-template

def apply_ps(jinja: str | None = None, rows=({"text": "a", "label": "b"},), yaml_text: str | None = None,
             name: str = "rows.jsonl", raw: str | None = None) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        text = yaml_text if yaml_text is not None else PS_YAML.replace("'{{text}} ||| {{label}}'",
                                                                       json.dumps(jinja) if jinja else
                                                                       "'{{text}} ||| {{label}}'")
        data = put(tmp, name, raw if raw is not None else lines(*rows))
        return ["data", "apply-template", data, "--promptsource", put(tmp, "templates.yaml", text),
                "-o", str(tmp / "out.jsonl")]
    return build


def apply_task(task: str, rows, *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["data", "apply-template", put(tmp, "rows.jsonl", lines(*rows)), "--task", task,
                        "-o", str(tmp / "out.jsonl"), *extra]


TEMPLATE_CASES = [
    Case("ps-ok", apply_ps(), None, ("wrote 1",)),
    Case("ps-power-bomb", apply_ps("{{ 9**(9**8) }} ||| x"), ("rows.jsonl:1", "plain", "too large")),
    Case("ps-power-bomb-line2", apply_ps("{{ (text|length)**(9**8) }} ||| x",
                                         rows=({"text": ""}, {"text": "aa"})), ("rows.jsonl:2", "plain")),
    Case("ps-string-repeat-bomb", apply_ps('{{ "ab" * 200000000 }} ||| x'), ("rows.jsonl", "plain")),
    Case("ps-string-repeat-float", apply_ps('{{ "ab" * 2e8 }} ||| x'), ("rows.jsonl", "plain")),
    Case("ps-list-repeat-bomb", apply_ps("{{ ([1] * 10**9)|length }} ||| x"), ("rows.jsonl", "plain")),
    Case("ps-loop-output-bomb", apply_ps("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %} ||| x"),
         ("rows.jsonl", "plain")),
    Case("ps-missing-field", apply_ps("{{ nofield }} ||| x"), ("rows.jsonl", "plain", "nofield")),
    Case("ps-missing-field-row2", apply_ps("{{ text }} ||| {{ label }}",
                                           rows=({"text": "a", "label": "b"}, {"text": "a"})),
         ("rows.jsonl", "plain", "label")),
    Case("ps-syntax-error", apply_ps("{{ text ||| x"), ("rows.jsonl:1", "plain", "does not parse")),
    Case("ps-unsafe-attr", apply_ps("{{ text.__class__.__mro__ }} ||| x"), ("rows.jsonl", "plain")),
    Case("ps-zero-division", apply_ps("{{ 1 / 0 }} ||| x"), ("rows.jsonl", "plain")),
    Case("ps-type-error", apply_ps("{{ text + 1 }} ||| x"), ("rows.jsonl", "plain")),
    Case("ps-yaml-syntax", apply_ps(yaml_text="dataset: x\ntemplates: [\n  bad: {"), ("templates.yaml", "line")),
    Case("ps-yaml-not-mapping", apply_ps(yaml_text="- 1\n- 2\n"), ("templates.yaml",)),
    Case("ps-yaml-no-templates", apply_ps(yaml_text="dataset: x\n"), ("templates.yaml", "templates")),
    Case("ps-yaml-jinja-number", apply_ps(yaml_text="dataset: x\ntemplates:\n  a: {name: n, jinja: 5}\n"),
         ("templates.yaml", "templates.a")),
    Case("ps-yaml-missing", lambda tmp: ["data", "apply-template", put(tmp, "r.jsonl", lines({"a": 1})),
                                         "--promptsource", str(tmp / "none.yaml"), "-o", str(tmp / "o.jsonl")],
         ("none.yaml", "not found")),
    Case("ps-yaml-directory", lambda tmp: ["data", "apply-template", put(tmp, "r.jsonl", lines({"a": 1})),
                                           "--promptsource", str(tmp), "-o", str(tmp / "o.jsonl")],
         ("{tmp}", "directory")),
    Case("ps-yaml-not-utf8", lambda tmp: ["data", "apply-template", put(tmp, "r.jsonl", lines({"a": 1})),
                                          "--promptsource", put(tmp, "t.yaml", b"dataset: \xff\n"),
                                          "-o", str(tmp / "o.jsonl")], ("t.yaml", "UTF-8")),
    Case("ps-rows-not-utf8", apply_ps(), None, ("wrote 1",)),
    Case("ps-rows-broken", apply_ps(raw=lines({"text": "a", "label": "b"}, "{bad")), ("rows.jsonl:2",)),
    Case("ps-rows-not-object", apply_ps(raw=lines({"text": "a", "label": "b"}, "[1]")), ("rows.jsonl:2",)),
    Case("ps-rows-empty", apply_ps(raw=""), ("rows.jsonl", "empty")),
    Case("ps-output-dir", lambda tmp: ["data", "apply-template", put(tmp, "r.jsonl", lines({"text": "a",
                                       "label": "b"})), "--promptsource", put(tmp, "t.yaml", PS_YAML),
                                       "-o", str(tmp)], ("{tmp}", "directory")),
    Case("task-unknown", apply_task("nope", [{"text": "a"}]), ("nope",)),
    Case("task-missing-field", apply_task("sentiment", [{"sentence": "good", "label": 1}, {"sentence": "bad"}]),
         ("rows.jsonl:2", "label")),
    Case("task-label-out-of-range", apply_task("sentiment", [{"sentence": "good", "label": 1},
                                                             {"sentence": "bad", "label": 9}]),
         ("rows.jsonl:2", "label")),
    Case("task-bad-templates", apply_task("sentiment", [{"sentence": "good", "label": 1}], "--templates", "zz"),
         ("zz",)),
    Case("task-negative-few-shot", apply_task("sentiment", [{"sentence": "good", "label": 1}], "--few-shot", "-1"),
         ("few",)),
    Case("task-row-not-object", apply_task("sentiment", [{"sentence": "good", "label": 1}, "5"]), ("rows.jsonl:2",)),
]
TEMPLATE_CASES = [case for case in TEMPLATE_CASES if case.id != "ps-rows-not-utf8"] + [
    Case("ps-rows-not-utf8", lambda tmp: ["data", "apply-template", put(tmp, "r.jsonl", b'{"text": "\xff"}\n'),
                                          "--promptsource", put(tmp, "t.yaml", PS_YAML), "-o", str(tmp / "o.jsonl")],
         ("r.jsonl", "UTF-8")),
]


# ---------------------------------------------------------------- train (config only)

def train(yaml_text: str = "", *overrides: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        data = put(tmp, "d.jsonl", lines(ALPACA))
        config = put(tmp, "c.yaml", yaml_text or f"data: {{paths: [{data}]}}\noutput_dir: {tmp / 'run'}\n")
        return ["train", config, *overrides]
    return build


TRAIN_CASES = [
    Case("train-yaml-syntax", train("optim:\n  lr: 1e-4\n bad: [\n"), ("c.yaml", "line")),
    Case("train-yaml-tab", train("optim:\n\tlr: 1\n"), ("c.yaml", "line")),
    Case("train-yaml-not-mapping", train("- a\n- b\n"), ("c.yaml", "mapping")),
    Case("train-yaml-not-utf8", lambda tmp: ["train", put(tmp, "c.yaml", b"seed: \xff\n")], ("c.yaml", "UTF-8")),
    Case("train-yaml-missing", lambda tmp: ["train", str(tmp / "none.yaml")], ("none.yaml", "not found")),
    Case("train-yaml-directory", lambda tmp: ["train", str(tmp)], ("{tmp}", "directory")),
    Case("train-yaml-duplicate-key", train("seed: 1\nseed: 2\n"), ("c.yaml", "seed")),
    Case("train-unknown-key", train("", "optim.rl=1"), ("optim.rl",)),
    Case("train-lr-negative", train("", "optim.lr=-1e-4"), ("optim.lr",)),
    Case("train-lr-nan", train("", "optim.lr=nan"), ("optim.lr",)),
    Case("train-lr-inf", train("", "optim.lr=inf"), ("optim.lr",)),
    Case("train-lr-string", train("", "optim.lr=fast"), ("optim.lr",)),
    Case("train-lr-yaml-nan", train("optim: {lr: .nan}\n"), ("optim.lr",)),
    Case("train-warmup-negative", train("", "optim.warmup_steps=-5"), ("optim.warmup_steps",)),
    Case("train-warmup-ratio-negative", train("", "optim.warmup_ratio=-0.1"), ("optim.warmup_ratio",)),
    Case("train-warmup-ratio-above-one", train("", "optim.warmup_ratio=1.5"), ("optim.warmup_ratio",)),
    Case("train-clip-negative", train("", "optim.max_grad_norm=-1"), ("optim.max_grad_norm",)),
    Case("train-clip-nan", train("", "optim.max_grad_norm=nan"), ("optim.max_grad_norm",)),
    Case("train-weight-decay-negative", train("", "optim.weight_decay=-0.1"), ("optim.weight_decay",)),
    Case("train-betas-out-of-range", train("", "optim.betas=[1.5,0.9]"), ("optim.betas",)),
    Case("train-betas-one-number", train("", "optim.betas=[0.9]"), ("optim.betas",)),
    Case("train-batch-zero", train("", "batch_size=0"), ("batch_size",)),
    Case("train-batch-negative", train("", "batch_size=-8"), ("batch_size",)),
    Case("train-batch-float", train("", "batch_size=2.5"), ("batch_size",)),
    Case("train-epochs-zero", train("", "epochs=0"), ("epochs",)),
    Case("train-epochs-negative", train("", "epochs=-1"), ("epochs",)),
    Case("train-grad-accum-zero", train("", "grad_accumulation=0"), ("grad_accumulation",)),
    Case("train-max-steps-negative", train("", "max_steps=-3"), ("max_steps",)),
    Case("train-max-length-zero", train("", "data.max_length=0"), ("data.max_length",)),
    Case("train-eval-split-above-one", train("", "data.eval_split=1.5"), ("data.eval_split",)),
    Case("train-eval-split-negative", train("", "data.eval_split=-0.2"), ("data.eval_split",)),
    Case("train-limit-zero", train("", "data.limit=0"), ("data.limit",)),
    Case("train-lora-rank-zero", train("", "method.name=lora", "method.lora.rank=0"), ("lora.rank",)),
    Case("train-lora-alpha-nan", train("", "method.name=lora", "method.lora.alpha=nan"), ("method.lora.alpha",)),
    Case("train-lora-dropout-above-one", train("", "method.name=lora", "method.lora.dropout=2"),
         ("method.lora.dropout",)),
    Case("train-method-unknown", train("", "method.name=magic"), ("method.name",)),
    Case("train-data-missing-file", lambda tmp: ["train", f"data.paths=[{tmp / 'none.jsonl'}]",
                                                 f"output_dir={tmp / 'run'}"], ("none.jsonl", "not found")),
    Case("train-data-bad-row", lambda tmp: ["train", f"data.paths=[{put(tmp, 'd.jsonl', lines(ALPACA, '{x'))}]",
                                            f"output_dir={tmp / 'run'}"], ("d.jsonl:2",)),
    Case("train-data-not-utf8", lambda tmp: ["train", "data.paths=[" + put(tmp, "d.jsonl", b'{"a": "\xff"}') + "]",
                                             f"output_dir={tmp / 'run'}"], ("d.jsonl", "UTF-8")),
    Case("train-output-dir-is-file", lambda tmp: ["train", f"data.paths=[{put(tmp, 'd.jsonl', lines(ALPACA))}]",
                                                  f"output_dir={tmp / 'd.jsonl'}"], ("output_dir", "d.jsonl")),
]


# ---------------------------------------------------------------- eval --responses

GSM = {"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}


def eval_responses(content: str | bytes, name: str = "r.jsonl", items: int = 2) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        put(tmp, "data/gsm8k/test.jsonl", lines(*[GSM] * items))
        return ["eval", "--tasks", "gsm8k", "--data-dir", str(tmp / "data"), "--responses",
                put(tmp, name, content), "-o", str(tmp / "out")]
    return build


def eval_ok_rows(*rows) -> str:
    return lines(*rows)


EVAL_CASES = [
    Case("responses-broken-json", eval_responses(lines({"response": "4"}, "{bad")), ("r.jsonl:2", "JSON")),
    Case("responses-broken-array", eval_responses('[{"response": "4"},', "r.json"), ("r.json", "JSON")),
    Case("responses-not-object", eval_responses(lines({"response": "4"}, "5")), ("r.jsonl:2",)),
    Case("responses-string-row", eval_responses(lines({"response": "4"}, '"4"')), ("r.jsonl:2",)),
    Case("responses-null-response", eval_responses(lines({"response": "4"}, {"response": None})),
         ("r.jsonl:2", "response")),
    Case("responses-number-response", eval_responses(lines({"response": "4"}, {"response": 4})),
         ("r.jsonl:2", "response")),
    Case("responses-missing", eval_responses(lines({"response": "4"}, {"answer": "4"})),
         ("r.jsonl:2", "response")),
    Case("responses-not-utf8", eval_responses(b'{"response": "\xff"}\n'), ("r.jsonl", "UTF-8")),
    Case("responses-empty", eval_responses(""), ("r.jsonl", "empty")),
    Case("responses-directory", lambda tmp: eval_responses("x")(tmp)[:-3] + [str(tmp), "-o", str(tmp / "o")],
         ("{tmp}", "directory")),
    Case("responses-duplicate-id", eval_responses(lines({"id": "gsm8k-0", "response": "4"},
                                                        {"id": "gsm8k-0", "response": "5"})),
         ("r.jsonl", "line 1 and line 2", "id")),
    Case("responses-duplicate-prompt", eval_responses(lines({"prompt": "p", "response": "4"},
                                                            {"prompt": "p", "response": "5"})),
         ("r.jsonl", "line 1 and line 2", "prompt")),
    Case("responses-too-few", eval_responses(lines({"response": "4"}), items=3), ("r.jsonl",)),
    Case("responses-extra-rows", eval_responses(lines(*[{"response": "4"}] * 5), items=2), ("r.jsonl",)),
    Case("responses-unmatched-id", eval_responses(lines({"id": "nope", "response": "4"},
                                                        {"id": "gsm8k-1", "response": "4"})), ("r.jsonl",)),
    Case("responses-missing-file", lambda tmp: eval_responses("x")(tmp)[:-3] + [str(tmp / "none.jsonl"), "-o",
                                                                                 str(tmp / "o")],
         ("none.jsonl", "not found")),
    Case("eval-data-broken", lambda tmp: ["eval", "--tasks", "gsm8k", "--data-dir",
                                          str(Path(put(tmp, "data/gsm8k/test.jsonl", lines(GSM, "{x"))).parents[1]),
                                          "--responses", put(tmp, "r.jsonl", lines({"response": "4"})),
                                          "-o", str(tmp / "o")], ("test.jsonl:2",)),
]


# ---------------------------------------------------------------- judge winrate

ANN = {"instruction": "Say hi", "output_1": "hi", "output_2": "hello", "preference": 2}


def winrate(content: str | bytes, name: str = "a.json") -> Callable[[Path], list[str]]:
    return lambda tmp: ["judge", "winrate", put(tmp, name, content)]


JUDGE_CASES = [
    Case("ann-ok", winrate(json.dumps([ANN, {**ANN, "instruction": "b", "preference": 1}])), None, ("a.json",)),
    Case("ann-broken-json", winrate('[{"output_1": "a",\n ]'), ("a.json:2", "JSON")),
    Case("ann-broken-jsonl", winrate(lines(ANN, "{bad"), "a.jsonl"), ("a.jsonl:2", "JSON")),
    Case("ann-not-object", winrate(json.dumps([ANN, 5])), ("a.json[record 1]",)),
    Case("ann-not-object-jsonl", winrate(lines(ANN, "[1]"), "a.jsonl"), ("a.jsonl:2",)),
    Case("ann-string-preference", winrate(json.dumps([ANN, {**ANN, "instruction": "b", "preference": "2"}])),
         ("a.json[record 1]", "preference")),
    Case("ann-preference-out-of-range", winrate(json.dumps([ANN, {**ANN, "instruction": "b", "preference": 7}])),
         ("a.json[record 1]", "preference")),
    Case("ann-preference-bool", winrate(json.dumps([ANN, {**ANN, "instruction": "b", "preference": True}])),
         ("a.json[record 1]", "preference")),
    Case("ann-null-preference", winrate(json.dumps([ANN, {**ANN, "instruction": "b", "preference": None}])),
         None, stderr=("a.json: 1 of 2 rows have no preference",)),
    Case("ann-all-null-preference", winrate(json.dumps([{**ANN, "preference": None}])), ("a.json", "preference")),
    Case("ann-missing-instruction", winrate(json.dumps([ANN, {k: v for k, v in ANN.items() if k != "instruction"}])),
         ("a.json[record 1]", "instruction")),
    Case("ann-missing-output-2", winrate(json.dumps([ANN, {"instruction": "b", "output_1": "x", "preference": 1}])),
         ("a.json[record 1]", "output_2")),
    Case("ann-duplicate-instruction", winrate(json.dumps([ANN, ANN])), ("a.json[record 1]", "instruction")),
    Case("ann-empty", winrate(""), ("a.json", "empty")),
    Case("ann-empty-list", winrate("[]"), ("a.json", "empty")),
    Case("ann-scalar", winrate("3"), ("a.json",)),
    Case("ann-not-utf8", winrate(b"[\xff]"), ("a.json", "UTF-8")),
    Case("ann-directory", lambda tmp: ["judge", "winrate", str(tmp)], ("{tmp}", "directory")),
    Case("ann-missing", lambda tmp: ["judge", "winrate", str(tmp / "none.json")], ("none.json", "not found")),
    Case("ann-extra-rows-second-file", lambda tmp: ["judge", "winrate", put(tmp, "a.json", json.dumps([ANN])),
                                                    put(tmp, "b.json", json.dumps([ANN, {**ANN, "instruction": "z"}]))],
         None, ("b.json",)),
]


# ---------------------------------------------------------------- data mix

def mix(yaml_text: str, **files: str | bytes) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        for name, content in files.items():
            put(tmp, name.replace("__", "."), content)
        return ["data", "mix", put(tmp, "mix.yaml", yaml_text.replace("TMP", str(tmp))), "-o", str(tmp / "m.jsonl")]
    return build


MIX_CASES = [
    Case("mix-yaml-syntax", mix("sources:\n  - {path: a\n  bad"), ("mix.yaml", "line")),
    Case("mix-yaml-not-mapping", mix("[1, 2]"), ("mix.yaml", "mapping")),
    Case("mix-unknown-key", mix("sourcez: []\n"), ("sourcez",)),
    Case("mix-no-sources", mix("sources: []\n"), ("sources",)),
    Case("mix-source-missing", mix("sources:\n  - {path: TMP/none.jsonl}\n"), ("none.jsonl", "not found")),
    Case("mix-source-bad-row", mix("sources:\n  - {path: TMP/a.jsonl}\n", a__jsonl=lines(ALPACA, "{x")),
         ("a.jsonl:2",)),
    Case("mix-source-not-utf8", mix("sources:\n  - {path: TMP/a.jsonl}\n", a__jsonl=b'{"a": "\xff"}\n'),
         ("a.jsonl", "UTF-8")),
    Case("mix-weight-negative", mix("sources:\n  - {path: TMP/a.jsonl, weight: -1}\n", a__jsonl=lines(ALPACA)),
         ("weight",)),
    Case("mix-weight-nan", mix("sources:\n  - {path: TMP/a.jsonl, weight: .nan}\n", a__jsonl=lines(ALPACA)),
         ("weight",)),
    Case("mix-threshold-above-one", mix("sources:\n  - {path: TMP/a.jsonl}\ndedup: {threshold: 3}\n",
                                        a__jsonl=lines(ALPACA)), ("threshold",)),
    Case("mix-eval-missing", mix("sources:\n  - {path: TMP/a.jsonl}\ndecontaminate: {evals: [{path: TMP/e.jsonl, "
                                 "field: q}]}\n", a__jsonl=lines(ALPACA)), ("e.jsonl", "not found")),
    Case("mix-eval-field-missing", mix("sources:\n  - {path: TMP/a.jsonl}\ndecontaminate: {evals: [{path: "
                                       "TMP/e.jsonl, field: q}]}\n", a__jsonl=lines(ALPACA), e__jsonl=lines({"x": 1})),
         ("e.jsonl", "q")),
    Case("mix-output-dir", lambda tmp: mix("sources:\n  - {path: TMP/a.jsonl}\n", a__jsonl=lines(ALPACA))(tmp)[:-1]
         + [str(tmp)], ("{tmp}", "directory")),
    Case("mix-promptsource-bomb", mix("sources:\n  - {path: TMP/r.jsonl, promptsource: TMP/t.yaml}\n",
                                      r__jsonl=lines({"text": "a"}),
                                      t__yaml=PS_YAML.replace("'{{text}} ||| {{label}}'", "'{{ 9**(9**8) }} ||| x'")),
         ("r.jsonl", "plain")),
]


# ---------------------------------------------------------------- generate prompt files

def generate(content: str | bytes, name: str = "p.jsonl") -> Callable[[Path], list[str]]:
    return lambda tmp: ["generate", "tiny", "-i", put(tmp, name, content), "-o", str(tmp / "g.jsonl")]


GENERATE_CASES = [
    Case("gen-broken-json", generate(lines({"prompt": "a"}, "{x")), ("p.jsonl:2",)),
    Case("gen-not-object", generate(lines({"prompt": "a"}, "5")), ("p.jsonl:2",)),
    Case("gen-no-prompt", generate(lines({"prompt": "a"}, {"foo": 1})), ("p.jsonl:2", "prompt")),
    Case("gen-prompt-number", generate(lines({"prompt": "a"}, {"prompt": 5})), ("p.jsonl:2", "prompt")),
    Case("gen-empty-prompt", generate(lines({"prompt": "a"}, {"prompt": ""})), ("p.jsonl:2",)),
    Case("gen-not-utf8", generate(b'{"prompt": "\xff"}\n'), ("p.jsonl", "UTF-8")),
    Case("gen-empty-file", generate(""), ("p.jsonl", "empty")),
    Case("gen-duplicate-id", generate(lines({"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"})),
         ("p.jsonl:2", "id")),
    Case("gen-directory", lambda tmp: ["generate", "tiny", "-i", str(tmp), "-o", str(tmp / "g.jsonl")],
         ("{tmp}", "directory")),
    Case("gen-fake-gz", generate("{}", "p.jsonl.gz"), ("p.jsonl.gz", "gzip")),
    Case("gen-output-is-directory", lambda tmp: ["generate", "tiny", "-i", put(tmp, "p.jsonl", lines({"prompt": "a"})),
                                                 "-o", str(tmp)], ("{tmp}", "directory")),
    Case("gen-output-under-a-file", lambda tmp: ["generate", "tiny", "-i", put(tmp, "p.jsonl", lines({"prompt": "a"})),
                                                 "-o", str(tmp / "p.jsonl" / "g.jsonl")], ("g.jsonl", "folder")),
    Case("gen-unknown-model", lambda tmp: ["generate", "nobody/no-such-model-xyz", "-i",
                                           put(tmp, "p.jsonl", lines({"prompt": "a"})), "-o", str(tmp / "g.jsonl")],
         ("nobody/no-such-model-xyz",)),
]

CASES = FILE_CASES + TEMPLATE_CASES + TRAIN_CASES + EVAL_CASES + JUDGE_CASES + MIX_CASES + GENERATE_CASES


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CASES) >= 120
    assert len({case.id for case in CASES}) == len(CASES)


def refuse_model_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    import sftlab.train.sft as sft

    monkeypatch.setattr(sft, "load_model", refuse_model_load)  # bad input fails before any model loads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    argv = case.build(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse rejects the arguments: a usage line, exit 2
        code = exit.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if case.id in ARGPARSE_ERRORS:
        assert code == 2 and "invalid choice" in err
        return
    if case.expect is None:
        assert code == 0, err
        for text in case.stdout:
            assert text in out
        for text in case.stderr:
            assert text in err
        return
    assert code != 0, f"accepted: {out}"
    # progress bars may come first (data mix); the error itself is the one last line
    error_lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1 and err.rstrip().endswith(error_lines[0]), err
    for text in case.expect:
        assert text.replace("{tmp}", str(tmp_path)) in error_lines[0], error_lines[0]
