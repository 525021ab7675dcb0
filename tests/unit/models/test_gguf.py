"""GGUF writing: Qwen2 (biases, tied head) and Llama round-trip through transformers' GGUF
loader; the tokenizer's metadata; clear errors for what GGUF export cannot describe."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from sftlab.errors import ConfigError
from sftlab.models.gguf import (end_of_turn_id, permute_for_rope, pre_tokenizer_name, stop_token_ids,
                                tokenizer_vocab, write_gguf)
from sftlab.models.tiny import tiny_model


def _field(path, key):
    return GGUFReader(str(path)).fields[key].contents()


def test_qwen2_with_biases_and_a_tied_head_round_trips_exactly(tmp_path, tiny_tokenizer):
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases, so a dropped or misplaced bias shows in the logits
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(std=0.5)
    path = write_gguf(model, tiny_tokenizer, tmp_path / "qwen.gguf", gguf_type="f32")
    assert _field(path, "general.architecture") == "qwen2"
    assert "output.weight" not in {t.name for t in GGUFReader(str(path)).tensors}  # tied: written once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and loaded.config.tie_word_embeddings
    ids = torch.tensor([tiny_tokenizer("Count the letters in 123 words!")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_rope_permutation_is_what_transformers_undoes():
    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    permuted = permute_for_rope(weight, heads=8)
    assert not np.array_equal(permuted, weight)
    assert permuted[1, 0] == weight[8, 0]  # row 2i+1 of a head <- row head_dim/2 + i
    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, 8, 8)
    assert np.array_equal(restored, weight)


def test_gguf_metadata_of_the_tiny_model(tmp_path, tiny_tokenizer):
    path = write_gguf(tiny_model(), tiny_tokenizer, tmp_path / "tiny.gguf", gguf_type="q8_0")
    assert _field(path, "tokenizer.ggml.model") == "gpt2" and _field(path, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(path, "tokenizer.ggml.eot_token_id") == 2 == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _field(path, "tokenizer.ggml.eos_token_id") == 2 and _field(path, "tokenizer.ggml.bos_token_id") == 1
    assert _field(path, "tokenizer.chat_template") == tiny_tokenizer.chat_template
    assert _field(path, "general.file_type") == 7  # MOSTLY_Q8_0
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_vocab_types_and_padding_rows(tiny_tokenizer):
    vocab = tokenizer_vocab(tiny_tokenizer, len(tiny_tokenizer) + 3)
    assert vocab[2] == ("<|im_end|>", TokenType.CONTROL)
    assert vocab[-1] == (f"[PAD{len(tiny_tokenizer) + 2}]", TokenType.UNUSED)
    assert sum(kind == TokenType.NORMAL for _, kind in vocab) == len(tiny_tokenizer) - 4
    with pytest.raises(ConfigError, match="resize the embeddings"):
        tokenizer_vocab(tiny_tokenizer, 100)


def test_stop_tokens_follow_the_chat_template():
    from sftlab.models.tiny import tiny_tokenizer  # fresh copies: the session fixture stays intact

    tokenizer = tiny_tokenizer()
    assert end_of_turn_id(tokenizer) == 2 and stop_token_ids(tokenizer) == [2]
    tokenizer.eos_token = "<|endoftext|>"  # id 0: turns still end with <|im_end|>
    assert stop_token_ids(tokenizer) == [2, 0]
    plain = tiny_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    assert end_of_turn_id(plain) is None and stop_token_ids(plain) == [2]


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                    dict(byte_level, use_regex=True)]}
    assert pre_tokenizer_name(smollm) == "smollm"
    with pytest.raises(ConfigError, match="gpt-2, smollm, qwen2"):
        pre_tokenizer_name({"type": "Whitespace"})


def test_unsupported_architecture_is_a_clear_error_and_writes_nothing(tmp_path, tiny_tokenizer):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(ConfigError, match="supports llama, qwen2 models; this one is 'gpt2'"):
        write_gguf(model, tiny_tokenizer, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="gguf_type='q4'"):
        write_gguf(tiny_model(), tiny_tokenizer, tmp_path / "x.gguf", gguf_type="q4")
