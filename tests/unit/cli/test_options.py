"""Arguments built from a config dataclass: flags, --config YAML, KEY=VALUE, precedence."""
import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from sftlab.cli.options import Flag, add_config_arguments, config_from_args, split_overrides
from sftlab.errors import ConfigError


@dataclass
class Sampling:
    temperature: float = 0.7
    """Softmax temperature."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""


@dataclass
class ToolConfig:
    model: str | None = None
    """Model to run."""
    tasks: list[str] = field(default_factory=lambda: ["a"])
    """Task names."""
    limit: int | None = None
    """Only the first N items."""
    mode: Literal["auto", "on", "off"] = "auto"
    """Chat mode."""
    quiet: bool = False
    """Print less."""
    seed: int = 1
    """Seed."""
    sampling: Sampling = field(default_factory=Sampling)


def parser_and_parse(argv):
    parser = argparse.ArgumentParser(prog="tool")
    add_config_arguments(parser, ToolConfig, flags={
        "model": Flag("model", nargs="?", metavar="MODEL"), "tasks": Flag("--tasks", required=True),
        "limit": "--limit", "mode": "--mode", "quiet": ("-q", "--quiet"),
        "sampling.temperature": "--temperature", "sampling.stop": Flag("--stop", append=True)})
    return parser, split_overrides(parser, argv)


def test_flags_have_types_choices_and_docstring_help():
    parser, args = parser_and_parse(["m", "--tasks", "x,y", "--limit", "3", "--mode", "on", "-q",
                                     "--temperature", "0", "--stop", "a,b", "--stop", "\n"])
    config = config_from_args(ToolConfig, args)
    assert config == ToolConfig(model="m", tasks=["x", "y"], limit=3, mode="on", quiet=True,
                                sampling=Sampling(temperature=0.0, stop=["a,b", "\n"]))
    text = parser.format_help()
    assert "Only the first N items." in text and "{auto,on,off}" in text
    assert "sampling.temperature: float = 0.7" in text and "Stop strings." in text  # the key listing
    # a required key's default never applies on the command line: the listing says so
    assert "tasks: list[str] (required)" in text and "['a']" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "maybe"])


def test_yaml_file_then_flags_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("tasks: [f]\nlimit: 5\nseed: 9\nmode: off\nsampling: {temperature: 0.1}\n")
    _, args = parser_and_parse(["--config", str(tmp_path / "c.yaml"), "--limit", "6", "seed=10"])
    config = config_from_args(ToolConfig, args)
    assert (config.tasks, config.limit, config.seed, config.mode) == (["f"], 6, 10, "off")
    assert config.sampling.temperature == 0.1 and config.model is None


def test_overrides_anywhere_and_an_override_in_the_positional_slot():
    _, args = parser_and_parse(["m", "seed=3", "--tasks", "t", "limit=2", "sampling.temperature=0.5"])
    config = config_from_args(ToolConfig, args)
    assert (config.model, config.seed, config.limit, config.sampling.temperature) == ("m", 3, 2, 0.5)
    _, args = parser_and_parse(["seed=4", "--tasks", "t"])  # no MODEL: seed=4 is not one
    assert config_from_args(ToolConfig, args).model is None
    assert config_from_args(ToolConfig, args).seed == 4


def test_required_key_and_unknown_words_are_errors():
    _, args = parser_and_parse(["m"])
    with pytest.raises(ConfigError, match="--tasks is required"):
        config_from_args(ToolConfig, args)
    _, args = parser_and_parse(["m", "tasks=t"])  # an override counts as given
    assert config_from_args(ToolConfig, args).tasks == ["t"]
    _, args = parser_and_parse(["m", "--tasks", "t", "sed=3"])
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        config_from_args(ToolConfig, args)
    parser = argparse.ArgumentParser(prog="tool")
    add_config_arguments(parser, ToolConfig, flags={"tasks": "--tasks"})
    with pytest.raises(ConfigError, match="not of the form"):
        config_from_args(ToolConfig, split_overrides(parser, ["stray", "--tasks", "t"]))
    with pytest.raises(SystemExit):
        split_overrides(parser, ["--tasks", "t", "--unknown"])


def test_real_commands_keep_their_flags():
    from sftlab.cli import build_parser

    parser = build_parser(everything=True)
    args = split_overrides(parser, ["eval", "--tasks", "ifeval", "--responses", "r.jsonl", "--chat-template",
                                    "off", "-o", "out", "limit=2"])
    from sftlab.eval.runner import EvalConfig

    config = config_from_args(EvalConfig, args)
    assert (config.model, config.tasks, config.responses, config.chat_template, config.output_dir,
            config.limit) == (None, ["ifeval"], "r.jsonl", "off", "out", 2)
    args = split_overrides(parser, ["chat", "tiny", "--max-new-tokens", "4"])
    from sftlab.cli.models import ChatConfig

    chat = config_from_args(ChatConfig, args)
    assert chat.sampling.max_new_tokens == 4 and chat.sampling.temperature == 0.7  # chat's own default
