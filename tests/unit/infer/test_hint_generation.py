"""Generating with a HINT run: `generator_for(run)` loads it, each distinct instruction is
compiled once, and the greedy tokens equal a step-by-step decode through the training-time
forward (instruction and instance concatenated, the hypernetwork in the loop)."""
from __future__ import annotations

import pytest
import torch

from sftlab.config import build_config
from sftlab.errors import ConfigError, DataError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hint import HintGenerator
from sftlab.infer.backends import generator_for
from sftlab.models import hint as hint_module
from sftlab.models.tiny import tiny_model
from sftlab.train.config import MethodConfig
from sftlab.train.methods import prepare_model
from sftlab.types import Message

SMALL = ["hint.bottleneck=4", "hint.hyper_dim=16", "hint.prefix_tokens=2"]
PROMPTS = [[Message("system", "Sort the numbers."), Message("user", "3, 1, 2")],
           [Message("system", "Reverse the words."), Message("user", "red green blue")],
           [Message("system", "Sort the numbers."), Message("user", "9, 4")]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_tokenizer):
    """A saved HINT run whose hypernetwork changes the output (non-zero up and gates)."""
    config = build_config(MethodConfig, {"name": "hint"}, SMALL)
    torch.manual_seed(0)
    prepared = prepare_model(tiny_model(seed=0), config, tiny_tokenizer)
    with torch.no_grad():
        prepared.model.hypernetwork.up.bias.normal_(std=0.5)
        prepared.model.hypernetwork.gate.bias.fill_(2.0)
    run = tmp_path_factory.mktemp("hint-run")
    prepared.save(run / "adapter")
    return run, prepared.model.eval()


def reference_greedy(hint, tokenizer, prompt, steps: int) -> list[int]:
    """Greedy tokens through HintModel.forward on the whole growing row (no cache)."""
    ids = tokenizer.apply_chat_template([m.to_dict() for m in prompt], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(hint(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(token)
            if token == tokenizer.eos_token_id:
                break
    return out


def test_a_hint_run_generates_what_the_training_forward_predicts(run_dir, tiny_tokenizer, monkeypatch):
    run, trained = run_dir
    generator = generator_for(str(run), batch_size=4)
    assert isinstance(generator, HintGenerator)
    compiled = []
    real_compile = hint_module.compile_task
    monkeypatch.setattr("sftlab.infer.hint.compile_task",
                        lambda model, ids: compiled.append(ids) or real_compile(model, ids))
    results = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=6, temperature=0))
    assert len(compiled) == 2  # two distinct instructions, one compile each
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == reference_greedy(trained, tiny_tokenizer, prompt, 6)
    # and the instruction matters: without its modules the base model says something else
    bare = generator.text.generate([generator.split(generator.encode(PROMPTS[0], 6), 0)[1]],
                                   SamplingConfig(max_new_tokens=6, temperature=0))
    assert bare[0].token_ids != results[0].token_ids


def test_streamed_text_lands_on_the_right_prompt(run_dir):
    generator = generator_for(str(run_dir[0]))
    pieces: dict[int, str] = {}
    results = generator.generate(PROMPTS, SamplingConfig(max_new_tokens=5, temperature=0),
                                 on_text=lambda i, delta: pieces.__setitem__(i, pieces.get(i, "") + delta))
    assert [pieces.get(i, "") for i in range(3)] == [r.text for r in results]


def test_a_prompt_without_an_instruction_and_a_stray_adapter_are_clear_errors(run_dir, tiny_tokenizer):
    generator = generator_for(str(run_dir[0]))
    with pytest.raises(DataError, match="prompt 0 of the batch .* does not start with a system turn"):
        generator.generate(["plain text, no chat turns"], SamplingConfig(max_new_tokens=2))
    with pytest.raises(ConfigError, match="is a HINT run"):
        generator_for(str(run_dir[0]), adapter=str(run_dir[0] / "adapter"))


def test_the_runs_own_tokenizer_defines_the_prompts(run_dir, tiny_tokenizer, tmp_path):
    """A training run keeps its tokenizer at the run's top (beside adapter/): that one, with
    its chat template, is the one the instruction split was learnt on."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    tiny_tokenizer.model_max_length = 777  # a mark to recognise the run's copy by
    try:
        tiny_tokenizer.save_pretrained(run)
    finally:
        tiny_tokenizer.model_max_length = 1024
    assert generator_for(str(run)).tokenizer.model_max_length == 777


def test_sftlab_generate_names_the_line_of_a_prompt_without_an_instruction(run_dir, tmp_path):
    """A HINT run reads its instruction from the system turn: line 2 has none, so the run
    stops before generating anything, naming the file, the line and the row's id."""
    import json

    from sftlab.infer.files import GenerateConfig, generate_file

    rows = [{"id": "ok", "messages": [m.to_dict() for m in PROMPTS[0]]},
            {"id": "bare", "messages": [{"role": "user", "content": "3, 1, 2"}]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    generator = generator_for(str(run_dir[0]))
    config = GenerateConfig(model=str(run_dir[0]), input=str(tmp_path / "in.jsonl"),
                            output=str(tmp_path / "out.jsonl"), sampling=SamplingConfig(max_new_tokens=2))
    with pytest.raises(DataError, match=r"in\.jsonl:2: field 'messages': prompt 'bare': the prompt .* does not "
                                        r"start with a system turn .*\(fix: give every prompt a"):
        generate_file(generator, config, progress=False)
    assert not (tmp_path / "out.jsonl").exists()
