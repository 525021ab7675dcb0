"""The Modelfile's Go template renders what the tokenizer's Jinja template renders; a
template's built-in system prompt becomes SYSTEM; unknown templates are refused."""
from __future__ import annotations

import pytest

from sftlab.errors import ConfigError
from sftlab.models.ollama import FAMILIES, modelfile, render_go
from sftlab.models.tiny import tiny_tokenizer

# SmolLM2-Instruct's template shape: a default system prompt when the conversation has none
WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_go_trim_markers_and_range():
    template = "A  {{- range .Messages }} <{{ .Role }}>{{ .Content -}}  \n{{ end }}Z"
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert render_go(template, messages) == "A <user>x <assistant>yZ"
    with pytest.raises(ValueError, match="unsupported action"):
        render_go("{{ .Prompt }}", messages)


def test_default_system_prompt_becomes_system_and_renders_the_same():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = WITH_DEFAULT_SYSTEM
    text = modelfile(tokenizer, "m.gguf", ["<|im_end|>"])
    assert text.endswith('SYSTEM """You are a helpful assistant."""\n')
    user_only = [{"role": "user", "content": "Hi"}]
    # Ollama puts SYSTEM first when a request has no system message
    with_system = [{"role": "system", "content": "You are a helpful assistant."}] + user_only
    chatml = next(f for f in FAMILIES if f.name == "chatml")
    assert render_go(chatml.template, with_system) == tokenizer.apply_chat_template(
        user_only, tokenize=False, add_generation_prompt=True)
    assert 'SYSTEM """Be terse."""' in modelfile(tokenizer, "m.gguf", ["<|im_end|>"], system="Be terse.")


def test_a_template_no_family_reproduces_is_refused():
    tokenizer = tiny_tokenizer()
    # ChatML without the newline after the role: close, but not what Ollama's template renders
    tokenizer.chat_template = WITH_DEFAULT_SYSTEM.replace("message['role'] + '\n'", "message['role'] + ' '")
    with pytest.raises(ConfigError, match="no known Ollama template family"):
        modelfile(tokenizer, "m.gguf", ["<|im_end|>"])
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        modelfile(tokenizer, "m.gguf", [])
