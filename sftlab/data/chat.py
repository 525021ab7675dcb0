"""Chat templates, rendering and loss masks.

A conversation becomes token ids plus labels in three steps:

1. ``ensure_chat_template``: the tokenizer's own Jinja chat template is used; a tokenizer
   without one gets a *named* template from ``CHAT_TEMPLATES`` and a visible warning.
2. ``render_spans``: the rendered text is cut into character spans, each marked trained or
   not. Spans come from **prefix rendering**: for assistant turn ``i`` we render
   ``messages[:i]`` with the generation prompt and ``messages[:i + 1]`` without it; the
   text between the two is exactly what the model must produce for that turn. Nothing
   searches the text for role markers, so any template that renders prefixes as prefixes
   works (a template that does not is reported, never guessed around).
3. ``tokenize_spans``: the *whole* text is tokenized once (``add_special_tokens=False``,
   because templates write their own BOS) and each token takes the label of the span its
   characters lie in. The ids are therefore exactly ``tokenizer(text)``: what the model
   sees in training is what it sees at inference. A span boundary inside a token (a
   template whose prompt ends mid-word) is warned about; ``segments_match`` checks that
   the boundaries are token boundaries.

``set_chat_template(tokenizer, "chatml")`` replaces a tokenizer's own template by a named one.

``apply_template`` is the one place a template is applied (training here, and inference
prompts). Tools and reasoning: a template whose Jinja source uses ``tools`` and
``tool_calls`` gets them as they are (``tools=``, ``message.tool_calls``, ``tool`` turns);
one that does not gets the named ``hermes`` fallback (``sftlab.data.tools.hermes_messages``:
the tool list in the system turn, calls as ``<tool_call>`` text, tool results as
``<tool_response>`` user turns), with a ``UserWarning`` naming it once per tokenizer. A
template that uses ``reasoning_content`` gets the field; otherwise the ``think_tags``
fallback writes ``<think>\\n{reasoning}\\n</think>\\n\\n{content}`` (also warned once).
The fallbacks are Jinja (``sftlab.data.template_fallbacks``) put before the model's own
template on the tokenizer (``serving_template``), so the template saved with a trained
model renders tools and reasoning exactly as training did; plain conversations render as
under the original template.

Mask decisions, stated once:

* ``all_assistant`` (default) trains every assistant turn; ``last_assistant`` only the
  last one; ``everything`` trains every token of the text (system, user, template markers
  included: plain language modelling on the rendered text).
* An assistant turn of loss weight 0 (``Message.weight``) is context: rendered, never
  trained (``last_assistant`` trains the last turn of weight 1). ``everything`` ignores
  weights. A conversation whose assistant turns all have weight 0 trains nothing:
  ``tokenize_conversations`` drops and counts it (``all_turns_weight_0``).
* System, user and tool turns are never trained (except under ``everything``).
* An assistant turn that calls tools is trained like any other (its call text and its
  end-of-turn token); ``train_tool_calls=False`` makes such turns context only, so only
  the answers are trained.
* Reasoning (``Message.reasoning``) follows a policy applied to the conversation *before*
  rendering (so every prefix renders the same way): ``keep`` renders and trains every
  turn's reasoning; ``last_turn`` keeps it only on the final assistant turn (earlier
  turns are rendered without it, as Qwen3 does); ``drop`` removes it everywhere. A
  template that itself decides where reasoning is shown (Qwen3's drops it before the last
  user turn) may not render prefixes as prefixes, e.g. under ``keep`` with multi-turn
  reasoning: such conversations are dropped and counted (``template_not_prefix_stable``),
  never masked by guesswork; ``last_turn`` matches Qwen3's own choice.
* The end-of-turn token of each trained turn (``<|im_end|>``, ``</s>``, ...) *is* trained,
  so the model learns to stop. The whitespace the template writes after it (ChatML's
  ``"\\n"``) is *not*: it is glue between turns, which the model never has to generate
  because generation stops at the end-of-turn token.
* Labels never come from ``input_ids == pad_id``: with ``pad == eos`` (SmolLM2) the eos
  stays trained.
* Truncation drops tokens from the end. An example left with no trained token is dropped
  and counted by ``tokenize_conversations``, never trained on silently.

Example (the tiny ChatML tokenizer, ``[[...]]`` marks trained text)::

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n[[Hello!<|im_end|>]]\\n
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence, get_args

from sftlab.data.template_fallbacks import has_fallbacks, with_fallbacks, without_fallbacks
from sftlab.data.tools import HERMES_FALLBACK, THINK_FALLBACK
from sftlab.errors import ConfigError, DataError
from sftlab.registry import Registry
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

MaskStrategy = Literal["all_assistant", "last_assistant", "everything"]
MASK_STRATEGIES: tuple[str, ...] = get_args(MaskStrategy)
ReasoningPolicy = Literal["keep", "last_turn", "drop"]
REASONING_POLICIES: tuple[str, ...] = get_args(ReasoningPolicy)

# End-of-turn markers of widespread templates. A trained turn must end with one of these
# (or the tokenizer's eos, or the named template's marker), else the model never learns
# to stop: that is reported as an error, not trained.
COMMON_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


# ---------------------------------------------------------------------------------------
# Named chat templates
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the marker that ends an assistant turn.

    ``end_of_turn`` is a literal string, or ``None`` for "the tokenizer's eos token".
    """

    name: str
    jinja: str
    end_of_turn: str | None
    description: str


CHAT_TEMPLATES: Registry[ChatTemplate] = Registry("chat template")


def _register_template(name: str, jinja: str, end_of_turn: str | None, description: str) -> None:
    CHAT_TEMPLATES.register(name)(ChatTemplate(name, jinja, end_of_turn, description))


_register_template(
    "chatml",
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "<|im_end|>",
    "ChatML (SmolLM2, Qwen, ...): <|im_start|>role\\ncontent<|im_end|>\\n",
)

# Llama-2 chat: BOS before every user turn, the system prompt folded into the first user
# turn, eos after every answer. The generation prompt is the "[/INST]" already written.
_register_template(
    "llama2",
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system is not none %}"
    "{{ bos_token + '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}",
    None,
    "Llama-2 chat: <s>[INST] user [/INST] answer </s>",
)

_register_template(
    "zephyr",
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    None,
    "Zephyr: <|role|>\\ncontent</s>\\n",
)

_register_template(
    "alpaca",
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}",
    None,
    "Alpaca: ### Instruction:\\n...\\n\\n### Response:\\n...</s>",
)


def ensure_chat_template(tokenizer, fallback: str = "chatml") -> str:
    """Return the chat template ``tokenizer`` renders with, installing ``fallback`` if none.

    A tokenizer without a template (a base model's) gets the named template and a
    ``UserWarning`` naming it, so the choice is visible in every log.

    >>> tok.chat_template = None
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     template = ensure_chat_template(tok)
    >>> print(caught[0].message)
    tokenizer has no chat template; using the 'chatml' template (ChatML ...)
    >>> template == tok.chat_template
    True
    """
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: transformers renders "default"
        own = own.get("default") or next(iter(own.values()), None)
    if own:
        return own
    template = CHAT_TEMPLATES.get(fallback)
    warnings.warn(
        f"tokenizer has no chat template; using the '{template.name}' template "
        f"({template.description})",
        UserWarning,
        stacklevel=2,
    )
    return set_chat_template(tokenizer, template.name)


def set_chat_template(tokenizer, name: str) -> str:
    """Install the named template on ``tokenizer`` (replacing its own); returns the Jinja."""
    template = CHAT_TEMPLATES.get(name)
    tokenizer.chat_template = template.jinja
    # remember which named template was installed: its end-of-turn marker is needed later
    tokenizer._sftlab_template_name = template.name
    return template.jinja


# ---------------------------------------------------------------------------------------
# Rendering into trained / untrained character spans
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """Characters ``text[start:end]`` of a rendering; ``trained`` spans carry loss."""

    start: int
    end: int
    trained: bool


@dataclass
class Rendering:
    """The rendered text of a conversation and its spans (in order, covering the text)."""

    text: str
    spans: list[Span]

    def trained_text(self) -> list[str]:
        return [self.text[s.start:s.end] for s in self.spans if s.trained]


@dataclass(frozen=True)
class TemplateFeatures:
    """What a Jinja chat template renders by itself (read from its source)."""

    tools: bool
    """It uses ``tools`` and ``tool_calls``: tool lists, calls and tool turns render natively."""
    reasoning: bool
    """It uses ``reasoning_content``: an assistant turn's reasoning renders natively."""


def template_features(template: str) -> TemplateFeatures:
    """>>> template_features(CHAT_TEMPLATES.get("chatml").jinja)
    TemplateFeatures(tools=False, reasoning=False)
    """
    return TemplateFeatures(tools=bool(re.search(r"\btools\b", template)) and "tool_calls" in template,
                            reasoning="reasoning_content" in template)


def apply_template(tokenizer, messages: Sequence[Message], *, tools: list[dict] | None = None,
                   add_generation_prompt: bool) -> str:
    """The text of ``messages`` (and the ``tools`` they may call) in the tokenizer's chat template.

    Tools and reasoning go to the template as Hugging Face passes them (``tools=``,
    ``tool_calls``, ``reasoning_content``) when its source uses them, else through the named
    fallbacks ``hermes`` and ``think_tags`` (a ``UserWarning`` names each, once per tokenizer).

    >>> apply_template(tok, [Message("user", "Hi")], add_generation_prompt=True)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    features = template_features(serving_template(tokenizer))
    messages = list(messages)
    if (tools or any(m.tool_calls or m.role == "tool" for m in messages)) and not features.tools:
        _warn_fallback(tokenizer, tokenizer.chat_template, HERMES_FALLBACK,
                       "tool lists, calls and results are written as <tools>/<tool_call>/<tool_response> text")
    if any(m.reasoning is not None for m in messages) and not features.reasoning:
        _warn_fallback(tokenizer, tokenizer.chat_template, THINK_FALLBACK,
                       "reasoning is written into the content as <think>...</think>")
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template([m.to_dict() for m in messages], tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **extra)


def serving_template(tokenizer) -> str:
    """Install (once) and return the template sftlab renders with and saves: the tokenizer's
    own (``ensure_chat_template``) preceded by the Jinja of the fallbacks it needs
    (``sftlab.data.template_fallbacks``), so a saved model renders tools and reasoning as
    training did, wherever it is served. Returns the model's own template's source (what
    ``template_features`` reads)."""
    template = ensure_chat_template(tokenizer)
    own = without_fallbacks(template)
    features = template_features(own)
    if not has_fallbacks(template) and not (features.tools and features.reasoning):
        tokenizer.chat_template = with_fallbacks(own, tools=not features.tools, reasoning=not features.reasoning)
    return own


def _warn_fallback(tokenizer, template: str, name: str, what: str) -> None:
    warned = tokenizer.__dict__.setdefault("_sftlab_fallbacks_warned", set())
    if (name, template) in warned:
        return
    warned.add((name, template))
    feature = "tools" if name == HERMES_FALLBACK else "reasoning_content"
    warnings.warn(f"the chat template does not know '{feature}'; using the '{name}' fallback ({what})",
                  UserWarning, stacklevel=3)


def apply_reasoning_policy(conversation: Conversation, policy: ReasoningPolicy = "keep") -> Conversation:
    """``conversation`` with its reasoning kept (``keep``), kept only on the final assistant
    turn (``last_turn``) or removed (``drop``); the other fields unchanged."""
    if policy not in REASONING_POLICIES:
        raise ConfigError(f"unknown reasoning policy '{policy}' (choose from: {', '.join(REASONING_POLICIES)})")
    messages = conversation.messages
    if policy == "keep" or all(m.reasoning is None for m in messages):
        return conversation
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    kept = [m if (policy == "last_turn" and i == last) or m.reasoning is None
            else dataclasses.replace(m, reasoning=None) for i, m in enumerate(messages)]
    return dataclasses.replace(conversation, messages=kept)


def end_of_turn_markers(tokenizer) -> list[str]:
    """Strings that may end an assistant turn for this tokenizer, longest first.

    The named template's marker (if one was installed), the eos token, and the common
    markers the tokenizer knows as single tokens.
    """
    markers = set()
    name = getattr(tokenizer, "_sftlab_template_name", None)
    if name and CHAT_TEMPLATES.get(name).end_of_turn:
        markers.add(CHAT_TEMPLATES.get(name).end_of_turn)
    if tokenizer.eos_token:
        markers.add(tokenizer.eos_token)
    markers.update(m for m in COMMON_END_OF_TURN if _is_single_token(tokenizer, m))
    return sorted(markers, key=len, reverse=True)


def _is_single_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


def _trained_turn_span(text: str, start: int, end: int, markers: Sequence[str]) -> int | None:
    """End of the trained part of the assistant turn ``text[start:end]``.

    The turn is the answer, its end-of-turn marker, then template glue (whitespace). The
    trained part stops right after the marker; ``None`` if the turn has no marker.
    """
    stripped_end = start + len(text[start:end].rstrip())
    for marker in markers:
        if text.endswith(marker, start, stripped_end):
            return stripped_end
    return None


def _assistant_indices(conversation: Conversation, strategy: MaskStrategy, train_tool_calls: bool = True) -> list[int]:
    indices = [i for i, m in enumerate(conversation.messages)
               if m.role == "assistant" and m.weight and (train_tool_calls or not m.tool_calls)]
    return indices[-1:] if strategy == "last_assistant" else indices


def render_spans(conversation: Conversation, tokenizer, strategy: MaskStrategy = "all_assistant", *,
                 train_tool_calls: bool = True, reasoning: ReasoningPolicy = "keep") -> Rendering:
    """Render ``conversation`` with the tokenizer's chat template into marked spans.

    ``train_tool_calls=False`` leaves assistant turns that call tools untrained;
    ``reasoning`` is the reasoning policy (``apply_reasoning_policy``), applied first.

    Raises ``DataError`` (with ``reason``) when the template does not render prefixes as
    prefixes (``template_not_prefix_stable``), a trained turn has no end-of-turn marker
    (``no_end_of_turn``) or a trained assistant turn comes first (``starts_with_assistant``).

    >>> r = render_spans(Conversation([Message("user", "Hi"), Message("assistant", "Yo")]), tok)
    >>> r.trained_text()
    ['Yo<|im_end|>']
    """
    if strategy not in MASK_STRATEGIES:
        raise ConfigError(f"unknown mask strategy '{strategy}' (choose from: {', '.join(MASK_STRATEGIES)})")
    ensure_chat_template(tokenizer)
    conversation = apply_reasoning_policy(conversation, reasoning)
    messages, tools = conversation.messages, conversation.tools
    text = apply_template(tokenizer, messages, tools=tools, add_generation_prompt=False)
    if strategy == "everything":
        return Rendering(text, [Span(0, len(text), True)] if text else [])

    markers = end_of_turn_markers(tokenizer)
    spans: list[Span] = []
    cursor = 0
    for i in _assistant_indices(conversation, strategy, train_tool_calls):
        answer_start, answer_end = _answer_span(tokenizer, messages, i, text, markers, tools)
        if answer_start < cursor:  # a later prompt rewrote an earlier answer
            raise _not_prefix_stable(i)
        spans += [Span(cursor, answer_start, False), Span(answer_start, answer_end, True)]
        cursor = answer_end
    spans.append(Span(cursor, len(text), False))
    return Rendering(text, [s for s in spans if s.end > s.start])


def _answer_span(tokenizer, messages, i: int, text: str, markers: Sequence[str],
                 tools: list[dict] | None = None) -> tuple[int, int]:
    """Characters of ``text`` the model is trained on for assistant turn ``i``: from the end
    of the generation prompt to the end of the turn's end-of-turn marker."""
    if i == 0:
        # there is no prompt to render (templates refuse empty conversations)
        raise DataError("the conversation starts with an assistant turn, which has no prompt",
                        reason="starts_with_assistant",
                        hint="start with a user (or system) turn, or drop the leading assistant turn")
    prompt = apply_template(tokenizer, messages[:i], tools=tools, add_generation_prompt=True)
    upto = apply_template(tokenizer, messages[: i + 1], tools=tools, add_generation_prompt=False)
    if not (text.startswith(upto) and upto.startswith(prompt)):
        raise _not_prefix_stable(i)
    trained_end = _trained_turn_span(text, len(prompt), len(upto), markers)
    if trained_end is None:
        raise DataError(
            f"assistant turn {i} does not end with an end-of-turn token ({', '.join(markers)}), "
            "so the model would never learn to stop", reason="no_end_of_turn",
            hint="use a template that closes assistant turns with the eos token")
    return len(prompt), trained_end


def _not_prefix_stable(i: int) -> DataError:
    return DataError(
        f"the chat template does not render turn {i} as a prefix of the conversation, "
        "so its loss mask cannot be derived", reason="template_not_prefix_stable",
        hint="use a prefix-stable template: sftlab.data.chat.set_chat_template(tokenizer, 'chatml')")


# ---------------------------------------------------------------------------------------
# Tokenizing spans into ids + labels
# ---------------------------------------------------------------------------------------
def tokenize_spans(rendering: Rendering, tokenizer) -> tuple[list[int], list[int], int]:
    """Tokenize the whole text once; each token takes its span's label.

    Returns ``(input_ids, labels, straddling)`` where ``straddling`` counts span
    boundaries that fall inside a token (0 for templates whose turn boundaries are special
    tokens or newlines). A straddling token is trained only if it starts inside a trained
    span. ``add_special_tokens=False``: templates write BOS themselves, and a tokenizer
    that also adds one would start every example with two.
    """
    if not getattr(tokenizer, "is_fast", True):
        raise ConfigError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer; loss masks need a fast "
                          "tokenizer's offsets (load it with AutoTokenizer, which prefers the fast one)")
    encoding = tokenizer(rendering.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    trained = [s for s in rendering.spans if s.trained]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for t, (start, _end) in enumerate(offsets):
        while span_index < len(trained) and trained[span_index].end <= start:
            span_index += 1
        if span_index < len(trained) and trained[span_index].start <= start < trained[span_index].end:
            labels[t] = input_ids[t]
    token_starts = {start for start, _ in offsets} | {len(rendering.text)}
    boundaries = {b for s in rendering.spans for b in (s.start, s.end)}
    straddling = len(boundaries - token_starts)
    return input_ids, labels, straddling


def segment_token_ids(rendering: Rendering, tokenizer) -> list[list[int]]:
    """Token ids of each span tokenized on its own (for checking; see ``segments_match``)."""
    return [tokenizer(rendering.text[s.start:s.end], add_special_tokens=False)["input_ids"]
            for s in rendering.spans]


def segments_match(rendering: Rendering, tokenizer) -> bool:
    """True if tokenizing span by span and concatenating equals tokenizing the whole text,
    i.e. the mask boundaries fall on token boundaries the tokenizer itself would choose."""
    whole = tokenizer(rendering.text, add_special_tokens=False)["input_ids"]
    return [t for ids in segment_token_ids(rendering, tokenizer) for t in ids] == list(whole)


def render(conversation: Conversation, tokenizer, *, strategy: MaskStrategy = "all_assistant",
           max_length: int | None = None, train_tool_calls: bool = True,
           reasoning: ReasoningPolicy = "keep") -> Tokenized:
    """Render one conversation into ``Tokenized(input_ids, labels, id)``.

    ``max_length`` truncates from the end; the result may then have no trained token:
    ``tokenize_conversations`` drops and counts such examples, use it for training data.

    >>> ex = render(Conversation([Message("user", "Hi"), Message("assistant", "Yo")]), tok)
    >>> tok.decode([t for t in ex.labels if t != -100])
    'Yo<|im_end|>'
    """
    rendering = render_spans(conversation, tokenizer, strategy, train_tool_calls=train_tool_calls,
                             reasoning=reasoning)
    input_ids, labels, straddling = tokenize_spans(rendering, tokenizer)
    if straddling:
        warnings.warn("a loss-mask boundary falls inside a token for this tokenizer/template; "
                      "such tokens are trained only if they start inside an assistant turn",
                      UserWarning, stacklevel=2)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return Tokenized(input_ids, labels, conversation.id)


# ---------------------------------------------------------------------------------------
# Whole data sets: drop and report, never train on nothing
# ---------------------------------------------------------------------------------------
@dataclass
class TokenizeResult:
    """Tokenized examples plus what was dropped or truncated, and why.

    ``dropped`` counts reasons (``no_trained_tokens``, ``truncated_all_labels``,
    ``all_turns_weight_0``, ``template_not_prefix_stable``, ``no_end_of_turn``,
    ``starts_with_assistant``);
    ``dropped_ids`` lists
    ``(id, reason)`` with ``id`` the conversation id or ``"#<index>"``.
    """

    examples: list[Tokenized]
    dropped: Counter = field(default_factory=Counter)
    dropped_ids: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0

    @property
    def total_tokens(self) -> int:
        return sum(len(e) for e in self.examples)

    @property
    def trained_tokens(self) -> int:
        return sum(e.num_trained for e in self.examples)

    def summary(self) -> str:
        """``kept 98 examples (3 truncated), dropped 2 (no_trained_tokens: 2); trained 1,234 / 5,678 tokens (21.7%)``"""
        dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.dropped.most_common())
        share = self.trained_tokens / self.total_tokens if self.total_tokens else 0.0
        return (f"kept {len(self.examples)} examples ({self.truncated} truncated), dropped {dropped}"
                + (f" ({reasons})" if reasons else "")
                + f"; trained {self.trained_tokens:,} / {self.total_tokens:,} tokens ({share:.1%})")


def tokenize_conversations(conversations: Iterable[Conversation], tokenizer, *, max_length: int | None = None,
                           strategy: MaskStrategy = "all_assistant", progress: bool = False,
                           train_tool_calls: bool = True, reasoning: ReasoningPolicy = "keep") -> TokenizeResult:
    """Render every conversation; drop (and count) the ones that would train nothing.

    ``train_tool_calls`` and ``reasoning`` are as in ``render_spans``.

    >>> convs = [Conversation([Message("user", "Hi"), Message("assistant", "Hello there!")]),
    ...          Conversation([Message("user", "word " * 40), Message("assistant", "Yo")])]
    >>> print(tokenize_conversations(convs, tok, max_length=32).summary())
    kept 1 examples (0 truncated), dropped 1 (truncated_all_labels: 1); trained 7 / 21 tokens (33.3%)
    """
    ensure_chat_template(tokenizer)
    result = TokenizeResult(examples=[])
    items: Iterable[Conversation] = conversations
    if progress:
        from tqdm import tqdm

        items = tqdm(conversations, desc="tokenizing", unit="conv")
    for index, conversation in enumerate(items):
        name = conversation.id if conversation.id is not None else f"#{index}"
        reason = None
        try:
            if strategy != "everything" and _all_weight_0(conversation):
                raise DataError("every assistant turn has loss weight 0", reason="all_turns_weight_0")
            full = render(conversation, tokenizer, strategy=strategy, train_tool_calls=train_tool_calls,
                          reasoning=reasoning)
        except DataError as error:
            reason = error.reason
        else:
            example = full
            if max_length is not None and len(full) > max_length:
                example = Tokenized(full.input_ids[:max_length], full.labels[:max_length], full.id)
            if full.num_trained == 0:
                reason = "no_trained_tokens"
            elif example.num_trained == 0:
                reason = "truncated_all_labels"
            else:
                result.truncated += example is not full
                result.examples.append(example)
        if reason is not None:
            result.dropped[reason] += 1
            result.dropped_ids.append((name, reason))
    return result


def _all_weight_0(conversation: Conversation) -> bool:
    weights = [m.weight for m in conversation.messages if m.role == "assistant"]
    return bool(weights) and not any(weights)


# ---------------------------------------------------------------------------------------
# Showing masks
# ---------------------------------------------------------------------------------------
_GREEN, _RESET = "\x1b[42;30m", "\x1b[0m"


def _runs(example: Tokenized) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens grouped by trained / not trained."""
    runs: list[tuple[bool, list[int]]] = []
    for t, token in enumerate(example.input_ids):
        trained = t > 0 and example.labels[t] != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def format_mask(example: Tokenized, tokenizer, color: bool = False) -> str:
    """The example's text with trained tokens marked: ``[[...]]``, or green when ``color``.

    >>> ex = render(Conversation([Message("user", "Hi"), Message("assistant", "Yo")]), tok)
    >>> print(format_mask(ex, tok))
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    [[Yo<|im_end|>]]
    <BLANKLINE>
    """
    parts = []
    for trained, tokens in _runs(example):
        text = tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if trained:
            text = f"{_GREEN}{text}{_RESET}" if color else f"[[{text}]]"
        parts.append(text)
    return "".join(parts)


def mask_summary(examples: Tokenized | Sequence[Tokenized]) -> str:
    """``3 examples, 120 tokens, 37 trained (30.8%)`` (position 0 never counts as trained)."""
    if isinstance(examples, Tokenized):
        examples = [examples]
    total = sum(len(e) for e in examples)
    trained = sum(e.num_trained for e in examples)
    share = trained / total if total else 0.0
    plural = "s" if len(examples) != 1 else ""
    return f"{len(examples)} example{plural}, {total:,} tokens, {trained:,} trained ({share:.1%})"


def trained_segments(example: Tokenized, tokenizer) -> list[str]:
    """Each run of trained tokens, decoded: one entry per trained turn (answer + eot).

    >>> ex = render(Conversation([Message("user", "Hi"), Message("assistant", "Yo")]), tok)
    >>> trained_segments(ex, tok)
    ['Yo<|im_end|>']
    """
    return [tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for trained, tokens in _runs(example) if trained]
