"""Prompt files: the rows ``sftlab generate``, ``sftlab synth`` and eval send to a model.

    rows = read_prompts("instructions.jsonl")
    rows[0].id        # the row's "id", else "<file stem>-<index>" (as read_conversations names it)
    rows[0].messages  # [Message("system", "Be brief."), Message("user", "Add\\n\\n2 and 3")]
    rows[0].raw       # "Once upon a time" for a {"prompt": "text"} row, else None
    rows[0].row       # the row as read, for extra fields such as "answer"

A prompt file is any file ``sftlab.data.io`` reads (a JSON list or JSONL, gzipped or not).
Its rows may be of any format ``sftlab.data.formats`` reads, with or without the answer,
and each row's format is detected on its own, so one file may mix them::

    {"id": "q1", "prompt": "Once upon a time"}                              # raw text
    {"instruction": "Add the numbers.", "input": "2 and 3"}                 # alpaca
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi"}]}                       # openai
    {"instruction": "Rewrite the text formally.", "instances": [{"input": "gonna be late"}],
     "is_classification": false}                                            # self-instruct seed
    {"messages": [{"role": "user", "content": "<image>\nWhat shape?"}], "images": ["a.png"]}
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                               {"type": "text", "text": "What shape?"}]}]}

A row with images (the last two; also LLaVA's ``image`` + ``conversations``) is read by
``sftlab.data.images.read_visual``, image paths relative to the file's folder; its prompt
is a ``VisualConversation``, which only a vision model takes (a text-only one refuses it).

The prompt is the row's conversation up to and including its last user turn, rendered by
the format's own reader: the system turn and earlier turns are kept, an Alpaca ``input``
(or a seed task's first instance input) joins the instruction, and the answer is left out.
A ``prompt`` string also keeps its text in ``raw``: ``sftlab generate`` sends it as is,
without the chat template (a base model continues it), while chat pipelines use
``messages``, the same text as one user turn.

Ids: a row's own ``id`` (string or number); otherwise ``<file stem>-<record index>``
(0-based, blank lines not counted), the rule ``sftlab.data.io.read_conversations`` uses,
so a file read as prompts or as conversations names its rows alike. A record holding
several prompts (a Super-NI task) gets ``-<k>`` after that, or its instances' own ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.formats import DETECTORS, FORMATS, ReadOptions, detect_format, validate
from sftlab.data.images import IMAGE_PLACEHOLDER, VisualConversation, has_images, read_visual
from sftlab.data.io import Record, default_id, iter_records, locate
from sftlab.errors import DataError, SftlabError
from sftlab.types import Conversation, Message

PROMPT_OPTIONS = ReadOptions(require_assistant=False)

# The format detectors look for the answer field ("output", "response", "completion",
# "targets"), which a prompt row may lack: such a row is known by its prompt fields alone.
PROMPT_FIELDS = (
    ("dolly", ("instruction", "context")),
    ("self_instruct", ("instruction", "instances")),
    ("alpaca", ("instruction",)),
    ("prompt_completion", ("prompt",)),
    ("xp3", ("inputs",)),
)
NO_PROMPT_HINT = ('give each row "prompt": "text", "instruction" (+ "input"), or "messages": '
                  '[{"role": "user", "content": "..."}] (or any format `sftlab data` reads)')


@dataclass
class PromptRow:
    """One prompt of a prompt file."""

    id: str
    """The row's ``id``, else ``<file stem>-<record index>``."""
    messages: list[Message]
    """The conversation up to and including the last user turn (system turn kept)."""
    row: Any
    """The row as read from the file (extra fields such as ``answer`` or ``category``)."""
    raw: str | None = None
    """The text of a ``{"prompt": "text"}`` row, sent without a chat template; else None."""
    images: list | None = None
    """The images of a row with images (``sftlab.data.images``: an ``images`` or ``image``
    field, or image content parts), one per ``<image>`` of ``messages``; else None."""
    line: int | None = None
    """The row's line in a JSONL file (1-based); None in a JSON list."""
    index: int | None = None
    """The row's record index in its file (0-based)."""

    def located(self, error: SftlabError, path: str | Path) -> DataError:
        """``error`` (raised about this row's prompt by a generator: a ``DataError`` or a
        ``PromptTooLong``) as a ``DataError`` naming the file, the row's line or record index
        and its id."""
        if isinstance(error, DataError):
            return DataError(f"prompt '{self.id}': {error.message}", file=str(path), line=self.line,
                             index=self.index, field=error.field, hint=error.hint, reason=error.reason)
        return DataError(f"prompt '{self.id}': {error}", file=str(path), line=self.line, index=self.index)

    @property
    def text(self) -> str:
        """The last user turn: the instruction a pipeline answers, evolves or chats about."""
        return self.messages[-1].content

    @property
    def prompt(self):
        """What a generator gets: the ``raw`` text when there is one, a ``VisualConversation``
        when the row has images (only a vision generator takes it), else the messages."""
        if self.images:
            return VisualConversation(Conversation(self.messages, id=self.id), self.images)
        return self.raw if self.raw is not None else self.messages


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Every prompt of a prompt file, in file order; a bad row raises ``DataError`` with
    the file and line (JSONL) or record index (JSON list).

    >>> import json, os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.jsonl")
    >>> _ = open(p, "w").write(json.dumps({"instruction": "Add", "input": "2 and 3"}) + "\\n")
    >>> [(row.id, row.messages, row.raw) for row in read_prompts(p)]
    [('x-0', [Message(role='user', content='Add\\n\\n2 and 3')], None)]
    """
    path = Path(path)
    prompts, seen = [], {}
    for record in iter_records(path):
        try:
            rows = record_prompts(record, path)
            for row in rows:  # ids key the resumable output: one row per id
                if row.id in seen:
                    raise DataError(f"duplicate id '{row.id}' (first at {seen[row.id]})", field="id",
                                    hint="give every prompt its own id", reason="duplicate id")
                seen[row.id] = f"line {record.line}" if record.line is not None else f"record {record.index}"
        except DataError as error:
            raise locate(error, path, record) from None
        prompts += rows
    return prompts


def record_prompts(record: Record, path: Path) -> list[PromptRow]:
    """The prompts of one record: one per conversation its format reader returns."""
    if isinstance(record.value, DataError):  # a line that is not valid JSON
        raise record.value
    row = record.value
    if has_images(row):
        return [_visual_prompt(row, record, path)]
    format = prompt_format(row)
    conversations = FORMATS.get(format)(row, PROMPT_OPTIONS)
    several = len(conversations) > 1
    raw = row["prompt"] if format == "prompt_completion" and isinstance(row["prompt"], str) else None
    return [PromptRow(_prompt_id(conversation, path, record.index, number if several else None),
                      prompt_messages(conversation), row, raw, line=record.line, index=record.index)
            for number, conversation in enumerate(conversations)]


def prompt_format(row: Any) -> str:
    """The format of one prompt row: as detected in data files, else by its prompt fields.

    >>> prompt_format({"messages": [{"role": "user", "content": "Hi"}]}), prompt_format({"instruction": "Hi"})
    ('openai', 'alpaca')
    """
    if any(accepts(row) for accepts in DETECTORS.values()):
        return detect_format([row])
    for name, keys in PROMPT_FIELDS:
        if isinstance(row, dict) and all(key in row for key in keys):
            return name
    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
    raise DataError(f"no prompt in this row (keys: {keys})", hint=NO_PROMPT_HINT, reason="no prompt")


def prompt_messages(conversation: Conversation) -> list[Message]:
    """The conversation up to and including its last user turn, which must not be empty."""
    validate(conversation, require_assistant=False)
    users = [index for index, message in enumerate(conversation.messages) if message.role == "user"]
    if not users:
        raise DataError("no user turn to answer", field="messages", hint=NO_PROMPT_HINT, reason="no user turn")
    messages = conversation.messages[:users[-1] + 1]
    if not messages[-1].content.strip():
        raise DataError("empty prompt", hint="fill in the prompt or remove the row", reason="empty prompt")
    return messages


def _visual_prompt(row: dict, record: Record, path: Path) -> PromptRow:
    """A row with images, read by ``sftlab.data.images.read_visual`` (paths relative to the
    file's folder); the prompt keeps the images of the turns it keeps."""
    where = f"{path}:{record.line}" if record.line is not None else f"{path}[record {record.index}]"
    example = read_visual(row, base_dir=path.parent, record=where, options=PROMPT_OPTIONS)
    messages = prompt_messages(example.conversation)
    kept = sum(message.content.count(IMAGE_PLACEHOLDER) for message in messages)
    return PromptRow(_prompt_id(example.conversation, path, record.index, None), messages, row,
                     images=example.images[:kept], line=record.line, index=record.index)


def _prompt_id(conversation: Conversation, path: Path, index: int, number: int | None) -> str:
    if conversation.id is not None:
        return str(conversation.id)
    return default_id(path, index, number)
