"""HINT (``sftlab.models.hint``, ``method.name: hint``) on the tiny Llama: the instruction
split, the zero-init invariant, one encoding per distinct instruction, training, saving,
compiling a task, and the loop's normalisation (4x1 = 2x2 = 1x4)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sftlab.config import build_config
from sftlab.data.chat import apply_template, tokenize_conversations
from sftlab.data.collate import collate_padded
from sftlab.errors import ConfigError, DataError
from sftlab.models.hint import (HintTask, InstructionSplit, apply_task, compile_task, load_hint)
from sftlab.models.tiny import tiny_model
from sftlab.train.config import MethodConfig, TrainConfig
from sftlab.train.loss import CausalLMLoss
from sftlab.train.methods import check_method_supported, prepare_model
from sftlab.types import Conversation, Message, Tokenized

REPO = Path(__file__).resolve().parents[3]
SMALL = ["hint.bottleneck=4", "hint.hyper_dim=16", "hint.prefix_tokens=2"]
TASKS = [("Sort the numbers from smallest to largest.", "3, 1, 2", "1, 2, 3"),
         ("Reverse the order of the words.", "red green blue", "blue green red"),
         ("Sort the numbers from smallest to largest.", "9, 4", "4, 9"),
         ("Write the text in capital letters.", "apple", "APPLE")]


def conversation(system: str, user: str, answer: str) -> Conversation:
    return Conversation([Message("system", system), Message("user", user),
                         Message("assistant", answer)])


def examples(tokenizer, rows=TASKS) -> list[Tokenized]:
    return tokenize_conversations([conversation(*row) for row in rows], tokenizer).examples


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float64 rounding."""
    return torch.allclose(a, b, rtol=0, atol=1e-12)


def hint(tokenizer, *overrides: str, dtype=torch.float64):
    config = build_config(MethodConfig, {"name": "hint"}, [*SMALL, *overrides])
    return prepare_model(tiny_model(seed=0).to(dtype), config, tokenizer)


def ids_of(tokenizer, *messages: Message, generation: bool = False) -> list[int]:
    text = apply_template(tokenizer, list(messages), add_generation_prompt=generation)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def train_steps(prepared, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    loss_module = CausalLMLoss(prepared.model)
    optimizer = torch.optim.AdamW(prepared.parameters, lr=lr)
    losses = []
    for _ in range(steps):
        total, count = loss_module(**batch)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(total / count))
    return losses


# -- the split -----------------------------------------------------------------------------

def test_the_split_is_learnt_from_the_chat_template(tiny_tokenizer):
    split = InstructionSplit.from_tokenizer(tiny_tokenizer)
    system = ids_of(tiny_tokenizer, Message("system", "Sort the numbers."))
    row = ids_of(tiny_tokenizer, Message("system", "Sort the numbers."), Message("user", "3, 1"))
    assert split.boundary(row) == len(system) and row[:len(system)] == system
    assert tiny_tokenizer.decode(split.header) == "<|im_start|>system\n"
    assert tiny_tokenizer.decode(split.end) == "<|im_end|>\n"
    assert split.boundary(ids_of(tiny_tokenizer, Message("user", "3, 1"))) is None


def test_a_row_without_a_system_turn_is_a_data_error(tiny_tokenizer):
    prepared = hint(tiny_tokenizer)
    row = collate_padded(tokenize_conversations(
        [Conversation([Message("user", "Hi"), Message("assistant", "Hello")])],
        tiny_tokenizer).examples, pad_id=0)
    with pytest.raises(DataError, match="system"):
        CausalLMLoss(prepared.model)(**row)


def test_hint_needs_the_tokenizer_and_unpacked_rows(tiny_tokenizer):
    config = build_config(MethodConfig, {"name": "hint"}, SMALL)
    with pytest.raises(ConfigError, match="tokenizer"):
        prepare_model(tiny_model(seed=0), config)
    with pytest.raises(ConfigError, match="packed"):
        check_method_supported(config, packed=True)
    with pytest.raises(ConfigError, match="hint.bottleneck"):
        build_config(MethodConfig, {"name": "hint"}, ["hint.bottleneck=0"])
    with pytest.raises(ConfigError, match="hint.after"):
        prepare_model(tiny_model(seed=0), build_config(MethodConfig, {"name": "hint"},
                      ["hint.after=[q_norm]"]), tiny_tokenizer)


# -- the invariant: a zero-init HINT delta leaves the base model's logits unchanged --------------

@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_a_zero_init_hint_delta_leaves_the_base_models_logits_unchanged(tiny_tokenizer, pooling):
    prepared = hint(tiny_tokenizer, f"hint.pooling={pooling}")
    model, split = prepared.model, prepared.model.split
    base = tiny_model(seed=0).double()
    batch = collate_padded(examples(tiny_tokenizer), pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for b, row in enumerate(batch["input_ids"]):
            length = int(batch["attention_mask"][b].sum())
            cut = split.boundary(row[:length].tolist())
            alone = base(input_ids=row[None, cut:length]).logits[0]   # the instance alone
            instruction = base(input_ids=row[None, :cut]).logits[0]
            # float64 to rounding (a padded batch and a lone row may take different matmul
            # kernels on some CPUs); any real delta would move the logits by ~1e-2
            assert same(logits[b, cut:length], alone)
            assert same(logits[b, :cut], instruction)
            explicit = model(input_ids=row[None, cut:length],
                             instruction_input_ids=row[None, :cut]).logits[0]
            assert same(explicit, alone)
    generated = model.generate_modules([batch["input_ids"][0, :cut].tolist()])[0]
    assert generated["up"].abs().max() == 0 and generated["gate"].abs().max() == 0
    assert generated["down"].abs().max() > 0 and generated["keys"].abs().max() > 0


def test_each_distinct_instruction_is_encoded_once_per_batch(tiny_tokenizer):
    model = hint(tiny_tokenizer).model
    seen = []
    encode = model.encode
    model.encode = lambda instructions: seen.append(len(instructions)) or encode(instructions)
    batch = collate_padded(examples(tiny_tokenizer), pad_id=0)  # 4 rows, 3 instructions
    CausalLMLoss(model)(**batch)
    assert seen == [3]


# -- training, saving, compiling -------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_training_lowers_the_loss_and_trains_only_the_hypernetwork(tiny_tokenizer, pooling):
    prepared = hint(tiny_tokenizer, f"hint.pooling={pooling}", dtype=torch.float32)
    base_before = {n: p.detach().clone() for n, p in prepared.model.base.named_parameters()}
    assert all(not p.requires_grad for p in prepared.model.base.parameters())
    assert {id(p) for p in prepared.parameters} == \
        {id(p) for p in prepared.model.hypernetwork.parameters()}
    batch = collate_padded(examples(tiny_tokenizer), pad_id=0)
    losses = train_steps(prepared, batch, steps=6)
    assert losses[-1] < losses[0] - 0.05, losses
    for name, param in prepared.model.base.named_parameters():
        assert torch.equal(param, base_before[name]), name
    # the modules now depend on the instruction
    first, second = (prepared.model.generate_modules([ids_of(tiny_tokenizer, Message("system", s))])[0]
                     for s in ("Sort the numbers.", "Reverse the words."))
    assert not torch.allclose(first["up"], second["up"])


def test_saved_hint_reloads_and_a_compiled_task_runs_without_the_hypernetwork(tiny_tokenizer, tmp_path):
    prepared = hint(tiny_tokenizer)
    train_steps(prepared, collate_padded(examples(tiny_tokenizer), pad_id=0), steps=3)
    saved = prepared.save(tmp_path / "adapter")
    config = json.loads((saved / "sftlab_adapter.json").read_text())
    assert config["format"] == "sftlab_hint" and config["bottleneck"] == 4
    assert config["split"]["header"] == list(prepared.model.split.header)

    instruction = ids_of(tiny_tokenizer, Message("system", TASKS[1][0]))
    instance = ids_of(tiny_tokenizer, Message("system", TASKS[1][0]), Message("user", "one two"),
                      generation=True)[len(instruction):]
    ids = torch.tensor([instance])
    with torch.no_grad():
        expected = prepared.model(input_ids=ids, instruction_input_ids=torch.tensor([instruction])).logits
        reloaded = load_hint(tiny_model(seed=0).double(), saved)
        assert torch.equal(reloaded(input_ids=ids, instruction_input_ids=torch.tensor([instruction])).logits,
                           expected)
        task = compile_task(reloaded, tokenizer=tiny_tokenizer, instruction=TASKS[1][0])
        assert task.instruction_tokens == len(instruction)
        task = HintTask.load(task.save(tmp_path / "task"))
        bare = tiny_model(seed=0).double()
        plain = bare(input_ids=ids).logits
        with apply_task(bare, task):
            compiled = bare(input_ids=ids).logits
            out = bare.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert torch.allclose(compiled, expected, atol=1e-10)
        assert not torch.allclose(plain, expected, atol=1e-6)   # the task's modules do something
        assert torch.equal(bare(input_ids=ids).logits, plain)   # and come off again
    assert out.shape == (1, len(instance) + 3)


# -- the loop: 4x1 = 2x2 = 1x4 (batch x accumulation) give the same update, float64 ---------------

def test_batch_and_accumulation_splits_give_the_same_update(tiny_tokenizer, tmp_path):
    from sftlab.train.sft import train

    rows = TASKS + [("Reverse the order of the words.", "x y", "y x"),
                    ("Write the text in capital letters.", "pear plum", "PEAR PLUM"),
                    ("Say the first word.", "stone cloud", "stone"),
                    ("Sort the numbers from smallest to largest.", "5, 2, 8", "2, 5, 8")]
    data = examples(tiny_tokenizer, rows)
    results = {}
    for batch_size, accumulation in ((4, 1), (2, 2), (1, 4)):
        config = build_config(TrainConfig, {
            "method": {"name": "hint"}, "max_steps": 2, "batch_size": batch_size,
            "grad_accumulation": accumulation, "output_dir": str(tmp_path / f"{batch_size}"),
            "optim": {"name": "sgd", "lr": 0.5, "max_grad_norm": 0.0, "schedule": "constant"},
            "progress": False, "plot": False, "save_model": False, "release_memory": False},
            [f"method.{o}" for o in SMALL])
        result = train(config, model=tiny_model(seed=0).double(), tokenizer=tiny_tokenizer,
                       train_examples=data)
        results[(batch_size, accumulation)] = (
            [row["loss"] for row in result.history if "loss" in row],
            {n: p.detach().clone() for n, p in result.prepared.model.hypernetwork.named_parameters()})
    (losses, params) = results[(4, 1)]
    assert params["up.weight"].abs().max() > 0  # the step did move the zero-init heads
    for key in ((2, 2), (1, 4)):
        other_losses, other = results[key]
        assert other_losses == pytest.approx(losses, rel=1e-12, abs=1e-12)
        for name, tensor in params.items():
            assert torch.allclose(other[name], tensor, rtol=1e-10, atol=1e-12), (key, name)


# -- the comparison script, on the tiny model ------------------------------------------------------

def test_the_hint_vs_concatenation_script_runs_on_the_tiny_model(tmp_path):
    spec = importlib.util.spec_from_file_location("hint_vs_concat", REPO / "scripts" / "hint_vs_concat.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.compare(model="tiny", steps=2, batch_size=4, eval_per_task=2, shots=1,
                            max_new_tokens=4, output_dir=tmp_path, hint_overrides=SMALL,
                            lora_rank=4)
    for method in ("hint", "concat"):
        for split in ("seen", "unseen"):
            row = report[method][split]
            assert row["n"] > 0 and 0 <= row["low"] <= row["accuracy"] <= row["high"] <= 1
    tokens = report["tokens"]
    assert tokens["prompt_with_instruction"] > tokens["prompt_instance_only"] > 0
    assert report["flops"]["ratio"] > 1


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    batch = collate_padded(examples(tiny_tokenizer), pad_id=0)
    grads = []
    for checkpointing in (False, True):
        base = tiny_model(seed=0).double()
        if checkpointing:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        config = build_config(MethodConfig, {"name": "hint"}, SMALL)
        torch.manual_seed(0)  # the same hypernetwork init both times
        prepared = prepare_model(base, config, tiny_tokenizer)
        prepared.model.train()
        with torch.no_grad():  # non-zero up and gates, so every head gets a gradient
            prepared.model.hypernetwork.up.bias.normal_(std=0.1)
            prepared.model.hypernetwork.gate.bias.fill_(0.5)
        total, count = CausalLMLoss(prepared.model)(**batch)
        (total / count).backward()
        grads.append({n: p.grad.clone() for n, p in prepared.model.hypernetwork.named_parameters()})
    assert grads[0]["encode.1.weight"].abs().max() > 0 and grads[0]["keys.weight"].abs().max() > 0
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, rtol=1e-9, atol=1e-12), name


def test_the_loop_saves_a_loadable_result_and_resumes_exactly(tiny_tokenizer, tmp_path):
    from sftlab.train.sft import train

    data = examples(tiny_tokenizer)

    def run(output: str, steps: int, resume: bool = False):
        config = build_config(TrainConfig, {
            "method": {"name": "hint"}, "max_steps": steps, "batch_size": 2,
            "output_dir": str(tmp_path / output), "save_every": 1, "resume": resume,
            "optim": {"lr": 1e-2, "schedule": "constant"}, "progress": False, "plot": False},
            [f"method.{o}" for o in SMALL])
        return train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer, train_examples=data)

    straight = run("straight", 3)
    run("resumed", 2)
    resumed = run("resumed", 3, resume=True)
    for (name, a), (_, b) in zip(straight.prepared.model.hypernetwork.named_parameters(),
                                 resumed.prepared.model.hypernetwork.named_parameters()):
        assert torch.equal(a, b), name
    assert json.loads((straight.saved_to / "sftlab_adapter.json").read_text())["format"] == "sftlab_hint"
    reloaded = load_hint(tiny_model(seed=0), straight.saved_to)
    ids = torch.tensor([data[1].input_ids])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, straight.prepared.model.eval()(input_ids=ids).logits)
