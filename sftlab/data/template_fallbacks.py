"""The ``hermes`` and ``think_tags`` fallbacks as Jinja, so that they travel with the model.

A chat template that knows no tools (or no ``reasoning_content``) gets sftlab's named
fallbacks (``sftlab.data.tools.hermes_messages`` / ``think_messages`` say what they write).
Were they applied in Python only, the saved template would render a tool conversation
differently from training: transformers, vLLM and Ollama users would serve a model that
never sees its tools. So the fallbacks are also written in Jinja, as a preamble that
rewrites ``messages`` (and clears ``tools``) before the model's own template runs:
``with_fallbacks(template)`` is the template sftlab renders with and saves. For a
conversation without tools, tool turns or reasoning the preamble changes nothing, so a
plain conversation renders byte for byte as under the original template.
``sftlab check`` proves the equality on its probes; ``tests/unit/data/test_template_fallbacks.py``
on many conversations.

>>> from sftlab.data.chat import CHAT_TEMPLATES
>>> wrapped = with_fallbacks(CHAT_TEMPLATES.get("chatml").jinja)
>>> wrapped.startswith(FALLBACK_MARKER) and has_fallbacks(wrapped)
True
"""
from __future__ import annotations

from sftlab.data.tools import hermes_tools_prompt

FALLBACK_MARKER = "{#- sftlab fallbacks: hermes tools, think_tags reasoning -#}"
"""The first line of a wrapped template (a Jinja comment: it renders nothing)."""

# hermes_tools_prompt around a placeholder: the text before and after the tool lines
_BEFORE, _AFTER = hermes_tools_prompt([{"@": "@"}]).split('{"@": "@"}')


_END = "{%- set messages = sftlab.out %}"  # the preamble's last statement; the model's template follows


def _literal(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _preamble(tools: bool, reasoning: bool) -> str:
    """Jinja that rewrites ``messages`` as ``hermes_messages`` (``tools``) and
    ``think_messages`` (``reasoning``) do, and renders nothing."""
    lines = [FALLBACK_MARKER, "{%- set sftlab = namespace(out=[], previous_tool=false, text='') -%}"]
    lines.append("{%- set sftlab_rest = messages -%}")
    if tools:
        lines += [
            "{%- if tools -%}",
            "{%- set sftlab.text = '' -%}",
            "{%- for tool in tools -%}{%- set sftlab.text = sftlab.text ~ (tool | tojson) ~ "
            "('\\n' if not loop.last else '') -%}{%- endfor -%}",
            f"{{%- set sftlab_prompt = {_literal(_BEFORE)} ~ sftlab.text ~ {_literal(_AFTER)} -%}}",
            "{%- if messages and messages[0].role == 'system' -%}",
            "{%- set sftlab.out = [{'role': 'system', 'content': messages[0].content ~ '\\n\\n' ~ sftlab_prompt}] -%}",
            "{%- set sftlab_rest = messages[1:] -%}",
            "{%- else -%}{%- set sftlab.out = [{'role': 'system', 'content': sftlab_prompt}] -%}{%- endif -%}",
            "{%- endif -%}",
        ]
    lines.append("{%- for m in sftlab_rest -%}")
    if tools:
        lines += [
            "{%- if m.role == 'tool' -%}",
            "{%- set block = '<tool_response>\\n' ~ m.content ~ '\\n</tool_response>' -%}",
            "{%- if sftlab.previous_tool -%}",
            "{%- set sftlab.out = sftlab.out[:-1] + [{'role': 'user', 'content': sftlab.out[-1].content ~ '\\n' ~ block}] -%}",
            "{%- else -%}{%- set sftlab.out = sftlab.out + [{'role': 'user', 'content': block}] -%}{%- endif -%}",
            "{%- else -%}",
            "{%- set sftlab.text = m.content or '' -%}",
            "{%- if m.tool_calls -%}",
            "{%- for call in m.tool_calls -%}",
            "{%- set f = call.function if call.function is defined else call -%}",
            "{%- set arguments = f.arguments if f.arguments is string else (f.arguments | tojson) -%}",
            "{%- set sftlab.text = sftlab.text ~ ('\\n' if sftlab.text else '') ~ '<tool_call>\\n{\"name\": ' ~ "
            "(f.name | tojson) ~ ', \"arguments\": ' ~ arguments ~ '}\\n</tool_call>' -%}",
            "{%- endfor -%}",
            "{%- endif -%}",
        ]
    else:
        lines.append("{%- set sftlab.text = m.content or '' -%}")
    if reasoning:
        lines += [
            "{%- if m.reasoning_content is defined and m.reasoning_content is not none -%}",
            "{%- set sftlab.text = '<think>\\n' ~ m.reasoning_content ~ '\\n</think>\\n\\n' ~ sftlab.text -%}",
            "{%- endif -%}",
        ]
    changed = ["m.tool_calls"] if tools else []
    changed += ["(m.reasoning_content is defined and m.reasoning_content is not none)"] if reasoning else []
    lines += [
        f"{{%- if {' or '.join(changed)} -%}}",
        "{%- set sftlab.out = sftlab.out + [{'role': m.role, 'content': sftlab.text}] -%}",
        "{%- else -%}{%- set sftlab.out = sftlab.out + [m] -%}{%- endif -%}",
    ]
    if tools:
        lines.append("{%- endif -%}")
        lines.append("{%- set sftlab.previous_tool = m.role == 'tool' -%}")
    lines.append("{%- endfor -%}")
    if tools:
        lines.append("{%- set tools = none -%}")
    # no trailing dash: the model's template follows directly, its leading text untouched
    return "\n".join(lines) + "\n" + _END


def with_fallbacks(template: str, *, tools: bool = True, reasoning: bool = True) -> str:
    """``template`` preceded by the Jinja fallbacks it needs (``tools``: it renders no tools;
    ``reasoning``: no ``reasoning_content``); unchanged when it needs neither or already has them."""
    if has_fallbacks(template) or not (tools or reasoning):
        return template
    return _preamble(tools, reasoning) + template


def without_fallbacks(template: str) -> str:
    """The model's own template inside one ``with_fallbacks`` wrote (else ``template``)."""
    if not has_fallbacks(template):
        return template
    return template.split(_END, 1)[1]


def has_fallbacks(template: str | None) -> bool:
    """True for a template ``with_fallbacks`` wrote."""
    return bool(template) and template.startswith(FALLBACK_MARKER)
