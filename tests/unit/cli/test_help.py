"""`sftlab <command> --help` documents everything: every option and every config key listed
has a description (the field's attribute docstring, for keys)."""
import argparse

import pytest

from sftlab.cli import COMMANDS, build_parser
from sftlab.config import field_docs


def commands(parser=None, path=()):
    """(path, parser) for every command and subcommand, walking the argparse tree."""
    parser = parser or build_parser(everything=True)
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def config_classes(parser) -> list[type]:
    """The config dataclasses whose keys the command's --help lists."""
    classes = [parser.get_default("config_class")]
    if parser.prog.endswith(" synth"):
        from sftlab.synth import PIPELINES

        classes += [PIPELINES.get(name)[0] for name in PIPELINES.names()]
    if parser.prog.endswith(" data mix"):
        from sftlab.data.mix import MixConfig

        classes.append(MixConfig)
    return [c for c in classes if c is not None]


ALL = list(commands())


def test_every_command_is_found():
    names = {" ".join(path) for path, _ in ALL}
    assert {"eval", "judge winrate", "judge alpaca-eval", "judge mt-bench", "generate", "chat", "serve",
            "export", "models", "train", "synth", "data mix", "data show-mask", "quickstart",
            "report"} <= names


def test_the_quick_listing_matches_the_commands():
    """`sftlab --help` shows COMMANDS' lines without importing the modules: the same lines."""
    top = dict(ALL)[()]
    registered = {choice.dest: choice.help for action in top._actions
                  if isinstance(action, argparse._SubParsersAction) for choice in action._choices_actions}
    assert registered == {name: help for name, (_, help) in COMMANDS.items()}
    quick = build_parser(["--help"])
    assert "synthesise instruction data" in quick.format_help()


@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "sftlab" for p, _ in ALL])
def test_every_option_has_a_description(path, parser):
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):  # each subcommand's one-line help
            missing += [choice.dest for choice in action._choices_actions if not (choice.help or "").strip()]
        elif action.help != argparse.SUPPRESS and not (action.help or "").strip():
            missing.append(action.option_strings or action.dest)
    assert not missing, f"sftlab {' '.join(path)}: options without help: {missing}"
    if path:
        assert (parser.description or "").strip(), f"sftlab {' '.join(path)} has no description"
    assert parser.format_help()  # formats (a stray % in a help text would raise here)


@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "sftlab" for p, _ in ALL])
def test_every_config_key_has_a_docstring(path, parser):
    undocumented = [f"{cls.__module__}.{cls.__name__}: {key}" for cls in config_classes(parser)
                    for key, doc in field_docs(cls).items() if not doc.doc]
    assert not undocumented, "fields without an attribute docstring:\n" + "\n".join(undocumented)


def test_eval_help_lists_every_task_and_required_keys_without_a_default():
    """Was `tasks: list[str] = ['gsm8k']` in the key listing beside `--tasks ... (required)`,
    and a hand-written task line without vqa and humaneval_chat."""
    from sftlab.eval.base import TASKS

    text = dict(ALL)[("eval",)].format_help()
    assert "tasks: list[str] (required)" in text and "['gsm8k']" not in text
    task_line = " ".join(text.split("\ntasks: ", 1)[1].split(". Data:", 1)[0].split())
    assert [name.split(" (")[0] for name in task_line.split(", ")] == TASKS.names()
    assert "bbh (27 subtasks)" in task_line and "mc_letters (log-likelihood)" in task_line
