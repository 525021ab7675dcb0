"""Continuous batching: rows joining and leaving mid-flight decode exactly as they would alone."""
from __future__ import annotations

import pytest
import torch

from sftlab.infer.base import SamplingConfig
from sftlab.infer.continuous import KVBatch, generate_continuously, prefill, shared_prefix, supports_continuous
from sftlab.infer.hf import HFGenerator, filter_logits
from sftlab.models import split_model

# different lengths; prompts 0-2 share a 20-token prefix
PREFIX = list(range(10, 30))
PROMPTS = [PREFIX + [40, 41, 42], PREFIX + [50], PREFIX + [60, 61, 62, 63, 64, 65, 66], [7, 8, 9], [90] * 12]
STOP_AFTER = [3, 9, 5, 12, 7]   # rows finish at different steps, so others join mid-flight


def run(model, prompts, batch_size: int) -> list[list[int]]:
    out = [[] for _ in prompts]

    def on_token(index, token):
        out[index].append(token)
        return len(out[index]) >= STOP_AFTER[index]

    with torch.inference_mode():
        generate_continuously(model, prompts, batch_size, lambda logits, _: logits.argmax(-1).tolist(), on_token)
    return out


def hf_generate(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_rows_joining_and_leaving_match_hf_generate_alone(tiny_model, batch_size):
    expected = [hf_generate(tiny_model, p, n) for p, n in zip(PROMPTS, STOP_AFTER)]
    assert run(tiny_model, PROMPTS, batch_size) == expected


def test_cache_keeps_only_columns_a_row_uses(tiny_model):
    batch = KVBatch()
    with torch.inference_mode():
        for prompt in ([1, 2, 3, 4, 5, 6], [7, 8]):
            batch.add(prefill(tiny_model, prompt)[1])
        assert batch.lengths == [6, 2] and batch.width == 6
        batch.step(tiny_model, split_model(tiny_model), [3, 4])
        assert batch.lengths == [7, 3] and batch.width == 7
        batch.keep([1])                        # the long row leaves: 4 padding columns go
        assert batch.lengths == [3] and batch.width == 3
        assert batch.layers[0].keys.shape[0] == 1


def test_a_padded_row_steps_to_the_logits_it_has_alone(tiny_model):
    """Logits, not just argmax: a wrong position or a leaking pad column shows here."""
    prompts, tokens = ([1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8], [4, 4, 4, 4]), [3, 4, 5]
    with torch.inference_mode():
        together = KVBatch()
        for prompt in prompts:
            together.add(prefill(tiny_model, prompt)[1])
        for _ in range(2):
            batched = together.step(tiny_model, split_model(tiny_model), tokens)
        for row, prompt in enumerate(prompts):
            alone = KVBatch()
            alone.add(prefill(tiny_model, prompt)[1])
            for _ in range(2):
                single = alone.step(tiny_model, split_model(tiny_model), tokens[row:row + 1])
            torch.testing.assert_close(batched[row:row + 1], single, rtol=1e-5, atol=1e-5)


def test_shared_prefix_is_prefilled_once_with_the_same_logits(tiny_model):
    with torch.inference_mode():
        length, cache = shared_prefix(tiny_model, PROMPTS[:3])
        assert length == len(PREFIX) and cache.get_seq_length() == len(PREFIX)
        for prompt in PROMPTS[:3]:
            full, _ = prefill(tiny_model, prompt)
            reused, grown = prefill(tiny_model, prompt, (length, cache))
            torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)
            assert grown.get_seq_length() == len(prompt)
        assert cache.get_seq_length() == len(PREFIX)   # the shared cache is left as it was
        assert shared_prefix(tiny_model, PROMPTS) is None     # prompt 3 shares nothing
        assert shared_prefix(tiny_model, PROMPTS[:1]) is None
        # identical prompts: each keeps its last token to compute its first logits
        assert shared_prefix(tiny_model, [PROMPTS[2], PROMPTS[2]])[0] == len(PROMPTS[2]) - 1


def test_prompt_tuning_falls_back_to_hf_generate(tiny_model, tiny_tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    assert supports_continuous(tiny_model)
    tuned = get_peft_model(tiny_model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not supports_continuous(tuned)
    out = HFGenerator(tuned, tiny_tokenizer, batch_size=2).generate(["a b", "c"], SamplingConfig(max_new_tokens=5))
    assert [g.completion_tokens for g in out] == [5, 5]


def test_seeded_sampling_does_not_depend_on_batch_size(tiny_model, tiny_tokenizer):
    prompts = ["The a of", "x", "count the letters", "hi there", "one two three"]
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    texts = [[g.text for g in HFGenerator(tiny_model, tiny_tokenizer, batch_size=b).generate(prompts, sampling)]
             for b in (1, 2, 5)]
    assert texts[0] == texts[1] == texts[2]


def test_filter_logits_keeps_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # 0.5 + 0.3 reaches 0.8: the third token is dropped; 0.81 needs it
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.0)).tolist() == [[False, True, True, True]]  # not all -inf



def test_few_rows_linear_equals_f_linear():
    from sftlab.infer.continuous import _FewRowsLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    for shape in [(3, 1, 24), (8, 24), (2, 30, 24)]:   # the last one has too many rows: passed through
        x = torch.randn(shape)
        with _FewRowsLinear():
            out = layer(x)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-6)
        assert out.shape == (*shape[:-1], 40)


@pytest.mark.parametrize("key, value", [("max_new_tokens", 0), ("max_new_tokens", -5), ("temperature", -1.0),
                                        ("top_p", 2.0), ("top_k", -3), ("temperature", float("nan"))])
def test_out_of_range_sampling_is_refused_naming_the_key(key, value):
    from sftlab.errors import ConfigError

    with pytest.raises(ConfigError, match=f"sampling.{key} must be"):
        SamplingConfig(**{key: value})


def test_sampling_at_the_edges_is_accepted():
    SamplingConfig(max_new_tokens=1, temperature=0, top_p=0.0, top_k=0)
    SamplingConfig(temperature=2, top_p=1)  # an int is a number
