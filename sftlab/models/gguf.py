"""GGUF export: a Llama- or Qwen2-style causal LM and its tokenizer in one file.

    write_gguf(model, tokenizer, "exported/run1/gguf/run1-f16.gguf", gguf_type="f16")

The file is written with the ``gguf`` package's ``GGUFWriter`` under llama.cpp's key and
tensor names, so llama.cpp, Ollama and transformers (``from_pretrained(dir, gguf_file=...)``)
read it. What goes in:

- hyperparameters as ``{arch}.block_count``, ``{arch}.attention.head_count`` ... (``arch``:
  ``llama`` or ``qwen2``, from the model's ``model_type``);
- tensors renamed by gguf's ``TensorNameMap`` (``model.layers.0.self_attn.q_proj.weight`` ->
  ``blk.0.attn_q.weight``). llama.cpp's Llama rotary embedding pairs neighbouring dimensions
  where transformers pairs the two halves of each head, so the rows of Llama's q and k
  projections are permuted per head (``permute_for_rope``); transformers' GGUF loader undoes
  exactly that. Qwen2 files keep transformers' order (llama.cpp uses NeoX rotary there);
- ``GGUF_TYPES``: ``f32`` (everything float32), ``f16`` (matrices float16), ``q8_0``
  (matrices in blocks of 32 int8 values with one float16 scale, ~8.5 bits a weight); norms
  and biases stay float32 in all three, as llama.cpp's converter keeps them;
- the tokenizer as a byte-level BPE (``tokenizer.ggml.model = gpt2``): tokens in id order,
  their types (special tokens CONTROL), merges, the pre-tokenizer's name, bos / eos / pad,
  the end-of-turn id (``eot``) and the chat template, so a runtime stops where training
  taught the model to stop.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np

from sftlab.data.chat import end_of_turn_markers
from sftlab.errors import ConfigError

GGUF_TYPES = ("f32", "f16", "q8_0")
# transformers model_type -> (gguf architecture, whether q/k rows take llama.cpp's rotary order)
ARCHITECTURES = {"llama": ("LLAMA", True), "qwen2": ("QWEN2", False)}
_Q8_BLOCK = 32  # values per q8_0 block: a matrix row must be a whole number of blocks
_PROBE = "Sftlab end-of-turn probe."


def read_gguf_model(path: str | Path, dtype=None):
    """A causal LM from a GGUF file, dequantized by transformers' GGUF reader (``dtype``: a
    torch dtype; None keeps the reader's own)."""
    from transformers import AutoModelForCausalLM, GgufConfig  # lazy: heavy

    path = Path(path)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                quantization_config=GgufConfig(gguf_file=path.name, dequantize=True))


def read_gguf_tokenizer(path: str | Path):
    """The tokenizer (and chat template) stored in a GGUF file."""
    from transformers import AutoTokenizer  # lazy: heavy

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def write_gguf(model, tokenizer, path: str | Path, *, gguf_type: str = "f16",
               name: str | None = None) -> Path:
    """Write ``model`` (a transformers causal LM) and ``tokenizer`` to the GGUF file ``path``.

    Written beside the target and renamed into place: a failure leaves no partial file.
    Raises ``ConfigError`` for an architecture, rotary scaling or tokenizer GGUF cannot
    describe here, before anything is written.
    """
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"gguf_type={gguf_type!r}: use one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch_key, permute = _architecture(config)
    arch = gguf.MODEL_ARCH[arch_key]
    vocab = tokenizer_vocab(tokenizer, config.vocab_size)
    tensors = list(_tensors(model, gguf.get_tensor_name_map(arch, config.num_hidden_layers), permute))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_name(name or path.stem)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        _add_hyperparameters(writer, config)
        _add_tokenizer(writer, tokenizer, vocab)
        for gguf_name, data in tensors:
            _add_tensor(writer, gguf_name, data, gguf_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _architecture(config) -> tuple[str, bool]:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports {', '.join(ARCHITECTURES)} models; this one is "
                          f"{model_type!r}. Export it as safetensors (without --gguf) instead")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"GGUF export writes plain rotary embeddings; this model uses rope_type="
                          f"{rope['rope_type']!r}. Export it as safetensors (without --gguf) instead")
    return ARCHITECTURES[model_type]


def _add_hyperparameters(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _tensors(model, names, permute: bool):
    """``(gguf name, float32 array)`` for every weight; the tied output head is not repeated."""
    config = model.config
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConfigError(f"GGUF export: the model's tensor {hf_name} has no GGUF name for "
                              f"{config.model_type}; export it as safetensors (without --gguf) instead")
        data = tensor.detach().float().cpu().numpy()
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            data = permute_for_rope(data, heads)
        yield gguf_name, data


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a Llama q or k projection [heads * head_dim, hidden] from
    transformers' rotary layout (per head: first half, second half) to llama.cpp's (per head:
    interleaved pairs): row ``h*d + 2i + j`` <- row ``h*d + j*d/2 + i``."""
    head_dim = weight.shape[0] // heads
    return (weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _add_tensor(writer, name: str, data: np.ndarray, gguf_type: str) -> None:
    qtype = gguf.GGMLQuantizationType
    if data.ndim < 2 or gguf_type == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif gguf_type == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype.Q8_0), raw_dtype=qtype.Q8_0)
    else:  # f16, and q8_0 rows that are no whole number of blocks (llama.cpp does the same)
        writer.add_tensor(name, data.astype(np.float16))


# -- tokenizer --------------------------------------------------------------------------

def tokenizer_vocab(tokenizer, vocab_size: int) -> list[tuple[str, int]]:
    """``(token, gguf TokenType)`` for ids ``0..vocab_size-1``: special tokens are CONTROL,
    other added tokens USER_DEFINED, rows the model has beyond the tokenizer UNUSED."""
    types = gguf.TokenType
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} "
                          f"embedding rows; resize the embeddings before exporting")
    added = {index: token.special for index, token in tokenizer.added_tokens_decoder.items()}
    vocab = []
    for index in range(vocab_size):
        if index not in by_id:
            vocab.append((f"[PAD{index}]", types.UNUSED))
        elif index in added:
            vocab.append((by_id[index], types.CONTROL if added[index] else types.USER_DEFINED))
        else:
            vocab.append((by_id[index], types.NORMAL))
    return vocab


def _add_tokenizer(writer, tokenizer, vocab: list[tuple[str, int]]) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE" or not _byte_level(backend):
        raise ConfigError(f"GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, "
                          f"SmolLM); this one is a {model.get('type')} tokenizer. Export without --gguf")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend.get("pre_tokenizer")))
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([int(kind) for _, kind in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for token, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                       ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        token_id = getattr(tokenizer, f"{token}_token_id", None)
        if token_id is not None:
            add(token_id)
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        writer.add_eot_token_id(end_of_turn)
    with_special, without = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_special) > len(without) and with_special[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _byte_level(backend: dict) -> bool:
    decoder = backend.get("decoder") or {}
    return "ByteLevel" in json.dumps(decoder) or "ByteLevel" in json.dumps(backend.get("pre_tokenizer"))


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before merging.

    ``ByteLevel`` with its own (GPT-2) regex -> ``gpt-2``; digits split one by one first
    (SmolLM) -> ``smollm``; Qwen2's split regex -> ``qwen2``.
    """
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # lazy: only for this case

        if (steps[0].get("pattern") or {}).get("Regex") == PRETOKENIZE_REGEX:
            return "qwen2"
    raise ConfigError(f"GGUF export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is "
                      f"none llama.cpp names here (gpt-2, smollm, qwen2); export without --gguf")


def end_of_turn_id(tokenizer) -> int | None:
    """The id of the token the chat template closes an assistant turn with (ChatML's
    ``<|im_end|>``), or None when the template ends turns with no single known token."""
    if not tokenizer.chat_template:
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "?"},
                                          {"role": "assistant", "content": _PROBE}], tokenize=False)
    after = text[text.index(_PROBE) + len(_PROBE):]
    for marker in end_of_turn_markers(tokenizer):
        if after.startswith(marker):
            return tokenizer.convert_tokens_to_ids(marker)
    return None


def stop_token_ids(tokenizer) -> list[int]:
    """The ids generation should stop at: the end-of-turn token, then eos (no repeats)."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))
