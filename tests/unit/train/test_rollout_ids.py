"""GRPO and PPO train on the very tokens their rollouts sampled (``Generation.token_ids``),
not on the decoded text tokenized again, which can give other ids."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sftlab.config import build_config
from sftlab.infer import hf
from sftlab.infer.base import Generation, SamplingConfig
from sftlab.infer.hf import HFGenerator
from sftlab.models.tiny import tiny_model
from sftlab.train.config import TrainConfig
from sftlab.train.objectives import grpo, ppo
from sftlab.train.objectives.grpo import sample_completions
from sftlab.types import IGNORE_INDEX


class Scripted:
    """A generator returning fixed generations (the model's own ids, as HFGenerator reports)."""

    def __init__(self, generations, eos_ids):
        self.generations, self.eos_ids, self.model = generations, eos_ids, None

    def generate(self, prompts, sampling):
        return list(self.generations)


def _run(tokenizer):
    model = torch.nn.Linear(1, 1)
    return SimpleNamespace(prepared=SimpleNamespace(model=model), tokenizer=tokenizer,
                           state=SimpleNamespace(step=0), accelerator=SimpleNamespace(process_index=0))


def test_sampled_ids_are_kept_where_retokenizing_the_text_would_change_them(tiny_tokenizer):
    tok = tiny_tokenizer
    letters = tok.convert_tokens_to_ids(list("hello"))  # one token per letter, as sampled
    eos = tok.eos_token_id
    text = tok.decode(letters)
    assert tok(text, add_special_tokens=False)["input_ids"] != letters  # the round trip is not the identity
    generations = [Generation(text, 3, 6, "stop", letters + [eos]),       # stopped on its eos
                   Generation(text, 3, 5, "length", list(letters)),        # ran out of tokens
                   Generation(text, 3, 5, "stop")]                         # a backend without ids
    settings = SimpleNamespace(max_new_tokens=8, temperature=1.0, top_p=1.0)
    texts, ids, stopped = sample_completions(Scripted(generations, {eos}), _run(tok), [[1, 2, 3]] * 3,
                                             settings, seed=0)
    assert texts == [text] * 3 and stopped == [True, False, True]  # the text stays for the rewards
    assert ids[0] == letters + [eos] and ids[1] == letters
    assert ids[2] == tok(text, add_special_tokens=False)["input_ids"] + [eos]  # the fallback


@pytest.mark.parametrize("continuous", [True, False])
def test_hf_generations_carry_the_sampled_ids(tiny_tokenizer, monkeypatch, continuous):
    if not continuous:  # the model.generate fallback
        monkeypatch.setattr(hf, "supports_continuous", lambda model: False)
    generator = HFGenerator(tiny_model(seed=0), tiny_tokenizer, batch_size=2)
    prompts = [[1, 5, 9, 13], [1, 7], [1, 30, 31]]
    out = generator.generate(prompts, SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3))
    for generation in out:
        ids = generation.token_ids
        assert len(ids) == generation.completion_tokens > 0
        ended = ids[-1] in generator.eos_ids
        assert ended == (generation.finish_reason == "stop")
        assert tiny_tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True) == generation.text


def _record_generations(monkeypatch) -> list:
    seen: list = []
    real = HFGenerator.generate

    def generate(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.extend(out)
        return out

    monkeypatch.setattr(HFGenerator, "generate", generate)
    return seen


def _completion_ids(batches) -> list[list[int]]:
    rows = []
    for batch in batches:
        for labels, mask in zip(batch.tensors["labels"].tolist(), batch.tensors["attention_mask"].tolist()):
            rows.append([t for t, m in zip(labels, mask) if m and t != IGNORE_INDEX])
    return rows


def _prompts(tmp_path) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(4)))
    return str(path)


def _config(tmp_path, objective: str, section: dict) -> TrainConfig:
    return build_config(TrainConfig, {
        "objective": objective, "output_dir": str(tmp_path / "run"), "progress": False, "plot": False,
        "save_model": False, "seed": 0, "batch_size": 2, "max_steps": 2,
        "data": {"paths": [_prompts(tmp_path)], "max_length": 128}, objective: section,
        "optim": {"lr": 1e-2, "schedule": "constant"}})


def _spy(monkeypatch, cls, method: str) -> list:
    batches: list = []
    real = getattr(cls, method)

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        batches.append(out)
        return out

    monkeypatch.setattr(cls, method, spy)
    return batches


def _retokenized_differ(generations, tokenizer) -> bool:
    """Some completion's text tokenizes to other ids than were sampled (the case that matters)."""
    eos = tokenizer.eos_token_id
    return any(tokenizer(g.text, add_special_tokens=False)["input_ids"]
               != [t for t in g.token_ids if t != eos] for g in generations)


def _sampled(generations, eos: int) -> list[list[int]]:
    return [g.token_ids + ([eos] if g.finish_reason == "stop" and g.token_ids[-1] != eos else [])
            for g in generations]


def test_grpo_trains_on_the_generated_ids(tmp_path, tiny_tokenizer, monkeypatch):
    from sftlab.train.sft import train

    seen = _record_generations(monkeypatch)
    steps = _spy(monkeypatch, grpo.GRPOObjective, "make_step_data")
    config = _config(tmp_path, "grpo", {"max_new_tokens": 10, "num_generations": 2,
                                        "rewards": ["format"], "format_pattern": ".*"})
    train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    used = [ids for batches in steps for ids in _completion_ids(batches)]
    assert len(seen) == len(used) == 2 * 2 * 2  # 2 steps x 2 prompts x 2 generations
    assert _retokenized_differ(seen, tiny_tokenizer)
    assert used == _sampled(seen, tiny_tokenizer.eos_token_id)


def test_ppo_trains_on_the_generated_ids(tmp_path, tiny_tokenizer, monkeypatch):
    from sftlab.train.sft import train

    class Length:
        tokenizer = tiny_tokenizer

        def score(self, items):
            return [len(item.messages[-1].content) / 10 for item in items]

    monkeypatch.setattr(ppo, "load_reward_model", lambda *a, **k: Length())
    seen = _record_generations(monkeypatch)
    rollouts = _spy(monkeypatch, ppo.PPOObjective, "make_rollout")
    config = _config(tmp_path, "ppo", {"reward_model": "stand-in", "max_new_tokens": 10, "epochs": 1})
    train(config, model=tiny_model(seed=0), tokenizer=tiny_tokenizer)
    used = [ids for batches in rollouts for ids in _completion_ids(batches)]
    assert len(seen) == len(used) == 2 * 2
    assert _retokenized_differ(seen, tiny_tokenizer)
    assert used == _sampled(seen, tiny_tokenizer.eos_token_id)
