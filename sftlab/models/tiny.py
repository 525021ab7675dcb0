"""``tiny``: a random Llama and a BPE tokenizer trained in-process, for dry runs and tests.

Nothing is downloaded: the tokenizer is trained with the ``tokenizers`` library on a small
built-in corpus (byte-level, so any text encodes), and the model is built from a config
with a fixed seed. The special tokens and the ChatML chat template match the embedded
default model (SmolLM2-135M-Instruct), so code paths are the same as for a real model.
"""
from __future__ import annotations

import functools
import random

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_WORDS = (
    "the a an of to and in is it you that he was for on are with as I his they be at one have "
    "this from or had by word but what some we can out other were all there when up use your how "
    "said each she which do their time if will way about many then them write would like so these "
    "her long make thing see him two has look more day could go come did number sound no most people "
    "my over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause much "
    "mean before move right boy old too same tell does set three want air well also play small end put "
    "home read hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world near build "
    "self earth father head stand own page should country found answer school grow study still learn "
    "plant cover food sun four between state keep eye never last let thought city tree cross farm "
    "hard start might story saw far sea draw left late run while press close night real life few north "
    "instruction input output response question user assistant system list sort count reverse letters "
    "numbers sum translate summarize explain classify positive negative yes no true false"
).split()


def _corpus(seed: int = 0, n_lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        line = " ".join(words)
        line = line[0].upper() + line[1:] + rng.choice([".", "?", "!", ":", ","])
        lines.append(line)
    lines += ["0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz",
              "{}[]()<>#*-+=/\\|@$%^&_~`'\";\n\t"]
    return lines


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512):
    """A ``PreTrainedTokenizerFast`` with ChatML special tokens and chat template.

    ids: ``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos), ``<pad>`` 3.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = 1024
    return tokenizer


def tiny_config(vocab_size: int = 512, **overrides):
    """A 2-layer, 64-wide Llama config (grouped-query attention, tied embeddings off)."""
    values = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_model(seed: int = 0, vocab_size: int = 512, **overrides):
    """A random ``LlamaForCausalLM`` in fp32, the same weights for the same seed."""
    config = tiny_config(vocab_size, **overrides)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # adapters record their base by this name, so `load_model(adapter_dir)` finds it again
    model.config._name_or_path = "tiny"
    return model.float()


def save_tiny(path, seed: int = 0) -> None:
    """Write the tiny model and tokenizer as an ordinary Hugging Face directory."""
    tiny_model(seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
