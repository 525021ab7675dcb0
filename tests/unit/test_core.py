from dataclasses import dataclass, field
from typing import Literal

import pytest

from sftlab.config import build_config, dump_config, load_config
from sftlab.errors import ConfigError, DataError
from sftlab.registry import Registry
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized


@dataclass
class OptimSection:
    lr: float = 1e-4
    name: Literal["adamw", "sgd"] = "adamw"


@dataclass
class RunSection:
    optim: OptimSection = field(default_factory=OptimSection)
    steps: int = 10
    targets: list[str] = field(default_factory=lambda: ["q_proj"])
    note: str | None = None


def test_overrides_reach_nested_sections_with_types():
    config = build_config(RunSection, {"optim": {"lr": 3}}, ["steps=20", "targets=q_proj,v_proj"])
    assert config.optim.lr == 3.0 and isinstance(config.optim.lr, float)
    assert config.steps == 20
    assert config.targets == ["q_proj", "v_proj"]


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.rl'; did you mean 'optim.lr'"):
        build_config(RunSection, {}, ["optim.rl=1"])


def test_literal_value_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"'optim.name' is 'adamm'; did you mean 'adamw'.*allowed: adamw, sgd"):
        build_config(RunSection, {"optim": {"name": "adamm"}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="'steps' must be int"):
        build_config(RunSection, {"steps": "many"})


def test_yaml_roundtrip(tmp_path):
    config = build_config(RunSection, {}, ["optim.name=sgd", "note=hello"])
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(RunSection, tmp_path / "config.yaml") == config


def test_registry_suggests_close_name():
    methods = Registry("method")
    methods.register("lora")(object)
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        methods.get("lorra")


def test_data_error_names_file_line_field_and_fix():
    error = DataError("missing", file="x.jsonl", line=7, field="output", hint="add it")
    assert str(error) == "x.jsonl:7: field 'output': missing (fix: add it)"


def test_conversation_roundtrip_and_tokenized_counts():
    conv = Conversation([Message("user", "hi"), Message("assistant", "yo")], id="a", meta={"k": 1})
    assert Conversation.from_dict(conv.to_dict()) == conv
    assert conv.turns == 1
    example = Tokenized([1, 2, 3], [5, IGNORE_INDEX, 3])  # a label at position 0 never trains
    assert example.num_trained == 1
    with pytest.raises(ValueError):
        Tokenized([1, 2], [1])


def test_tiny_tokenizer_roundtrips_chat_text(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Ünïcode & 123?"}, {"role": "assistant", "content": "ok"}],
        tokenize=False)
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") == tiny_tokenizer.eos_token_id == 2


def test_cli_help_lists_commands():
    from sftlab.cli import build_parser

    assert "sftlab" in build_parser().format_help()


@dataclass
class SourceSection:
    path: str
    weight: float = 1.0


@dataclass
class MixSection:
    sources: list[SourceSection] = field(default_factory=list)


def test_list_of_sections_is_built_and_checked():
    config = build_config(MixSection, {"sources": [{"path": "a.json"}, {"path": "b.json", "weight": 2}]})
    assert config.sources == [SourceSection("a.json"), SourceSection("b.json", 2.0)]
    with pytest.raises(ConfigError, match=r"unknown key 'sources\[1\].wieght'; did you mean 'sources\[1\].weight'"):
        build_config(MixSection, {"sources": [{"path": "a"}, {"path": "b", "wieght": 2}]})


def test_float_written_without_a_dot_is_a_float():
    # YAML 1.1 reads `1e-3` as a string; the config still means a float
    assert build_config(OptimSection, {}, ["lr=1e-3"]).lr == 1e-3
    with pytest.raises(ConfigError, match="'lr' must be float"):
        build_config(OptimSection, {"lr": "fast"})


@dataclass
class DocumentedSection:
    """A section whose fields carry attribute docstrings, as every config's should."""

    rank: int = 16
    """Adapter rank:
    the width of the low-rank update."""
    mode: Literal["auto", "on", "off"] = "auto"
    """When to apply the ``chat`` template."""
    undocumented: bool = False


@dataclass
class DocumentedConfig:
    lora: DocumentedSection = field(default_factory=lambda: DocumentedSection(rank=8))
    """The adapter section."""
    precision: Literal["no", "bf16", "fp16"] = "no"
    """Mixed precision."""
    name: str = "x"
    """A free-form name."""
    sources: list[SourceSection] = field(default_factory=list)
    """Where the data comes from."""


def test_field_docs_carry_docstrings_types_choices_and_section_defaults():
    from sftlab.config import field_docs

    docs = field_docs(DocumentedConfig)
    assert list(docs) == ["lora.rank", "lora.mode", "lora.undocumented", "precision", "name", "sources",
                          "sources[].path", "sources[].weight"]
    rank = docs["lora.rank"]
    assert rank.doc == "Adapter rank: the width of the low-rank update."  # one paragraph
    assert rank.type == "int" and rank.default == 8  # the section's default_factory, not the class
    assert docs["lora.mode"].choices == ("auto", "on", "off") and docs["lora.mode"].doc == \
        "When to apply the `chat` template."
    assert docs["lora.undocumented"].doc == ""
    assert docs["sources"].type == "list[SourceSection]"
    assert docs["lora.mode"].signature() == "lora.mode: {auto,on,off} = 'auto'"
    assert docs["sources[].path"].signature() == "sources[].path: str (required)"


def test_format_field_docs_wraps_and_indents_for_an_epilog():
    from sftlab.config import format_field_docs

    text = format_field_docs(DocumentedConfig, width=40)
    lines = text.splitlines()
    assert lines[0].startswith("keys") and "  lora.rank: int = 8" in lines
    assert "      Adapter rank: the width of the" in lines  # wrapped at 40, indented 6
    assert all(len(line) <= 40 for line in lines if line.startswith("      "))


def test_yaml_booleans_read_back_as_the_strings_they_were(tmp_path):
    # YAML 1.1 reads `no`, `off`, `on`, `yes` as booleans; a string field means the word
    (tmp_path / "c.yaml").write_text("precision: no\nname: yes\nlora: {mode: off}\n")
    config = load_config(DocumentedConfig, tmp_path / "c.yaml")
    assert (config.precision, config.name, config.lora.mode) == ("no", "yes", "off")
    assert build_config(DocumentedConfig, {}, ["lora.mode=on", "name=no"]).lora.mode == "on"
    assert build_config(DocumentedConfig, {}, ["name=no"]).name == "no"
    with pytest.raises(ConfigError, match="'lora.rank' must be int"):
        build_config(DocumentedConfig, {}, ["lora.rank=yes"])  # a bool never becomes an int
    with pytest.raises(ConfigError, match="allowed: no, bf16, fp16"):
        build_config(DocumentedConfig, {}, ["precision=yes"])  # no word of the Literal: still an error


def test_a_partly_given_section_keeps_its_parents_defaults():
    config = build_config(DocumentedConfig, {"lora": {"mode": "on"}})
    assert config.lora == DocumentedSection(rank=8, mode="on")
