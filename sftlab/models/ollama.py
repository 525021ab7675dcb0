"""Ollama Modelfile for an exported GGUF: the chat template in Go syntax, stops, system prompt.

    FROM ./run1-f16.gguf
    TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}
    {{ .Content }}<|im_end|>
    {{ end }}<|im_start|>assistant
    \"\"\"
    PARAMETER stop "<|im_end|>"
    SYSTEM \"\"\"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\"\"

Ollama renders prompts with Go's text/template, not Jinja, so the tokenizer's chat template
is not copied but matched to a family whose Go template is known (``FAMILIES``; ChatML is
what the default and tiny models use). The match is proven, not guessed: a probe
conversation (system prompt, two user turns, one assistant turn) rendered by the tokenizer's
Jinja template must equal the Go template rendered by ``render_go`` (the subset of Go
templates the families use), or the export fails naming the difference. Ollama adds the
SYSTEM text as the first message when a request has no system message, so a template's
built-in default system prompt (SmolLM2's) becomes SYSTEM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sftlab.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """A chat template family: its Ollama template and how its default system prompt shows."""

    name: str
    template: str
    default_system: str
    """A regex whose group 1 is the system prompt a render without one starts with."""


FAMILIES = [
    Family("chatml",
           "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
           "<|im_start|>assistant\n",
           r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n"),
]

PROBE = [{"role": "system", "content": "You answer in one short sentence."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "And another one?"}]


def modelfile(tokenizer, gguf_name: str, stop_tokens: list[str], system: str | None = None) -> str:
    """The Modelfile text for ``gguf_name`` (beside it); ``system`` overrides the template's
    own default system prompt. ``ConfigError`` when no family renders like the template."""
    family = match_family(tokenizer)
    system = system if system is not None else template_default_system(tokenizer, family)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{_quoted(family.template)}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    if system:
        lines.append(f'SYSTEM """{_quoted(system)}"""')
    return "\n".join(lines) + "\n"


def match_family(tokenizer) -> Family:
    """The family whose Go template renders the probe conversation exactly as the tokenizer's
    chat template does (with the generation prompt)."""
    if not tokenizer.chat_template:
        raise ConfigError("--ollama: the tokenizer has no chat template to translate; set one "
                          "(e.g. train with data.template) or export without --ollama")
    expected = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    renders = {family.name: render_go(family.template, PROBE) for family in FAMILIES}
    for family in FAMILIES:
        if renders[family.name] == expected:
            return family
    raise ConfigError(f"--ollama: the chat template renders the probe conversation as {expected!r}, "
                      f"which no known Ollama template family ({', '.join(renders)}) reproduces; "
                      f"export the GGUF without --ollama and write the Modelfile's TEMPLATE by hand")


def template_default_system(tokenizer, family: Family) -> str | None:
    """The system prompt the chat template inserts when a conversation has none, if any."""
    probe = [{"role": "user", "content": "Name a colour."}]
    text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    found = re.match(family.default_system, text, re.DOTALL)
    return found.group(1) if found else None


_ACTION = re.compile(r"{{(-)?\s*(.*?)\s*(-)?}}", re.DOTALL)


def render_go(template: str, messages: list[dict]) -> str:
    """Render the Go-template subset the families use, as Ollama does: text, ``{{ .Role }}``
    and ``{{ .Content }}`` inside ``{{ range .Messages }} ... {{ end }}``, and ``{{-`` /
    ``-}}`` trimming the whitespace beside an action.

    >>> render_go("{{- range .Messages }}[{{ .Role }}: {{ .Content }}]{{ end }}!",
    ...           [{"role": "user", "content": "hi"}])
    '[user: hi]!'
    """
    pieces, position = [], 0  # (text) and (action,) in order, trimming applied
    for match in _ACTION.finditer(template):
        text = template[position:match.start()]
        if match.group(1):
            text = text.rstrip()
        if pieces and pieces[-1] == ("trim",):
            pieces.pop()
            text = text.lstrip()
        pieces += [text, (match.group(2),)] + ([("trim",)] if match.group(3) else [])
        position = match.end()
    tail = template[position:]
    if pieces and pieces[-1] == ("trim",):
        pieces.pop()
        tail = tail.lstrip()
    pieces.append(tail)
    return _render(pieces, messages)


def _render(pieces: list, messages: list[dict]) -> str:
    out, index = [], 0
    while index < len(pieces):
        piece = pieces[index]
        if isinstance(piece, str):
            out.append(piece)
        elif piece[0] == "range .Messages":
            end = pieces.index(("end",), index)
            body = pieces[index + 1:end]
            out += [_render(body, [message]) for message in messages]
            index = end
        elif piece[0] in (".Role", ".Content"):
            out.append(messages[0][piece[0][1:].lower()])
        else:
            raise ValueError(f"render_go: unsupported action {{{{ {piece[0]} }}}}")
        index += 1
    return "".join(out)


_MODELFILE_LINE = re.compile(r'^(TEMPLATE|SYSTEM) """(.*?)"""|^PARAMETER stop "(.*?)"$', re.DOTALL | re.MULTILINE)


def read_modelfile(text: str) -> tuple[str | None, list[str], str | None]:
    """``(template, stop strings, system)`` of a Modelfile ``modelfile`` wrote (triple-quoted
    TEMPLATE and SYSTEM, one ``PARAMETER stop`` per line).

    >>> None
    
    """
    template = system = None
    stops = []
    for match in _MODELFILE_LINE.finditer(text):
        if match.group(3) is not None:
            stops.append(match.group(3))
        elif match.group(1) == "TEMPLATE":
            template = match.group(2)
        else:
            system = match.group(2)
    return template, stops, system


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ConfigError('--ollama: the template or system prompt contains """, which a Modelfile '
                          "cannot quote; export without --ollama and write the Modelfile by hand")
    return text
