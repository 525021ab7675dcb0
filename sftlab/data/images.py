"""Images in conversations: the readers, lazy loading, validation, fingerprints and image tokens.

A visual record becomes one internal example, ``VisualConversation``: a ``Conversation``
whose text holds one ``<image>`` placeholder per image (in order) and the ordered list of
``ImageRef`` it refers to. Four row shapes are read (``read_visual``):

* **LLaVA** (``llava``): ``{"id", "image": "coco/1.jpg" (or a list), "conversations":
  [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}``
  (ShareGPT roles, read by the ShareGPT reader of ``sftlab.data.formats``).
* **OpenAI content parts** (``openai``): ``{"messages": [{"role": "user", "content": [
  {"type": "image_url", "image_url": {"url": "cat.png"}}, {"type": "text", "text": "What?"}]},
  ...]}``; the url is a file path, a ``file://`` URL or a base64 ``data:image/...`` URL. Each
  image part becomes a ``<image>`` placeholder where it stood.
* **``images`` column** (``images``, TRL / LLaMA-Factory): ``{"messages": [...], "images":
  ["a.png", "b.png"]}`` (or ``conversations`` with ShareGPT roles); the placeholders are
  ``<image>`` in the text or TRL's ``{"type": "image"}`` content parts, matched to the column
  in order.
* **MultiInstruct task rows** (``multiinstruct``, Xu et al. 2023: many image tasks unified
  as instruction templates over task inputs): ``{"id", "task": "vqa", "image": "img.png"
  (or a list), "inputs": {"question": "What colour?"}, "output": "Red."}`` (detected by the
  ``task`` and ``inputs`` keys). A task's instruction templates (``TASK_TEMPLATES``, extended
  by a JSON/YAML mapping or file of task -> list of templates, ``vision.templates``) have
  ``{field}`` slots filled from ``inputs`` (a list is joined with ", "): the user turn is
  one ``<image>`` per image, a newline and the filled template (a template may place
  ``<image>`` itself), the assistant turn is ``output``. ``expand="one"`` picks one
  template per row from a hash of the seed and the row (its ``id``, else its content: the
  same choice in any file order); ``expand="all"`` makes one example per template (ids
  ``<id>-<k>``). ``meta`` records the task and template index. A task with no templates,
  or a slot of any of the task's templates missing from ``inputs``, is a ``DataError``
  naming the file, line and field (``task``, ``inputs.<slot>``).

The number of placeholders must equal the number of images, else a ``DataError`` naming the
record and the field (reason ``image_count_mismatch``). Relative paths resolve against
``image_folder`` (LLaVA's ``--image_folder``), else the data file's folder. Remote URLs are
refused (nothing is downloaded).

Images load only when asked (``ImageRef.load``), with Pillow: a missing, unreadable or
corrupt file, or one above ``max_pixels``, is a ``DataError`` naming the image and the
record; the result is RGB. ``ImageRef.sha256`` is the sha256 of the file's bytes, for the
run's provenance. Nothing is unpickled: images are decoded by Pillow from their bytes.

Rendering (``render_visual``): each placeholder is written as the tokenizer's image token
(one added special token), the conversation is rendered and masked by
``sftlab.data.chat.render`` (prefix rendering, as for text), and each image token is then
expanded to ``tokens_per_image`` copies, never labelled. Truncation never cuts an image:
an example whose image tokens would not fit is dropped and counted (``truncated_image``).

>>> row = {"image": "cat.png", "conversations": [{"from": "human", "value": "<image>\\nWhat?"},
...                                               {"from": "gpt", "value": "A cat."}]}
>>> example = read_visual(row, base_dir="/data")
>>> example.images[0].path, example.conversation.messages[0].content
('/data/cat.png', '<image>\\nWhat?')
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal
from urllib.parse import unquote, urlparse

from sftlab.data.chat import MaskStrategy, TokenizeResult, ensure_chat_template, render
from sftlab.data.formats import FORMATS, ReadOptions, check_type, validate
from sftlab.errors import DataError
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

IMAGE_PLACEHOLDER = "<image>"
"""What marks an image's place in a conversation's text (LLaVA's, LLaMA-Factory's, TRL's)."""

MAX_PIXELS = 4096 * 4096
"""Images with more pixels than this are refused (``image_too_large``) before decoding."""

VisualFormat = Literal["llava", "openai", "images", "multiinstruct"]

TASK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "vqa": ("Answer the question about the image. {question}", "{question} Answer from what the image shows.",
            "Look at the image and answer briefly: {question}"),
    "caption": ("Describe the image in one sentence.", "Write a short caption for the image.",
                "What does the image show? Answer in one sentence."),
    "classification": ("Which of these describes the image: {options}?",
                       "Classify the image as one of: {options}.",
                       "Options: {options}. Which one fits the image?"),
    "visual_entailment": ("Does the image support the statement \"{hypothesis}\"? Answer yes, no or maybe.",
                          "Statement: {hypothesis}\nIs it true of the image (yes, no or maybe)?"),
}
"""Built-in MultiInstruct-style instruction templates per task (``{field}``: a key of the
row's ``inputs``); ``read_templates`` adds or replaces tasks."""


# ---------------------------------------------------------------------------------------
# Image references: where an image comes from, loaded only when asked
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """One image of a record: a file ``path`` or inline ``data`` (a decoded data URL).

    ``record`` says where the reference was read (``"llava.json[record 3]"``) and ``field``
    which field held it (``image``, ``messages[0].content[1]``), for error messages.
    """

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    record: str | None = None
    field: str | None = None

    def describe(self) -> str:
        """``/data/cat.png`` or ``<inline image, 1,234 bytes>``."""
        return self.path if self.path is not None else f"<inline image, {len(self.data or b''):,} bytes>"

    def read_bytes(self) -> bytes:
        """The image file's bytes (``DataError`` naming the image and record if unreadable)."""
        if self.data is not None:
            return self.data
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            raise self._error(f"image file {self.path} does not exist", "missing_image",
                              "check the path, or set the image folder the paths are relative to") from None
        except OSError as error:
            raise self._error(f"cannot read image file {self.path} ({error.strerror or error})",
                              "unreadable_image", "check the file's permissions") from None

    @property
    def sha256(self) -> str:
        """sha256 of the image's bytes: the provenance of the pixels a model was trained on."""
        return hashlib.sha256(self.read_bytes()).hexdigest()

    def load(self, max_pixels: int = MAX_PIXELS):
        """The image as an RGB ``PIL.Image.Image``, fully decoded (so corruption shows here).

        Raises ``DataError`` (reasons ``missing_image``, ``corrupt_image``,
        ``image_too_large``) naming the image and the record.
        """
        from PIL import Image  # lazy: only runs that read images need Pillow loaded

        raw = self.read_bytes()
        try:
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise self._error(f"image {self.describe()} is {width}x{height} pixels, above the limit of "
                                      f"{max_pixels:,}", "image_too_large", "resize it before training")
                image.load()
                return image.convert("RGB")
        except DataError:
            raise
        except Exception as error:  # Pillow raises many types for bad bytes (OSError, SyntaxError, ...)
            raise self._error(f"image {self.describe()} is not a readable image ({type(error).__name__}: "
                              f"{error})", "corrupt_image", "replace the file with a valid PNG/JPEG") from None

    def _error(self, message: str, reason: str, hint: str) -> DataError:
        where = f" (in {self.record})" if self.record else ""
        return DataError(message + where, field=self.field, hint=hint, reason=reason)


def image_ref(value: Any, *, base_dir: str | Path | None, field: str, record: str | None = None) -> ImageRef:
    """An image reference from a path, a ``file://`` URL or a base64 ``data:`` URL.

    >>> image_ref("file:///tmp/a%20b.png", base_dir=None, field="image").path
    '/tmp/a b.png'
    >>> image_ref("data:image/png;base64,aGVsbG8=", base_dir=None, field="image").data
    b'hello'
    """
    check_type(value, str, field)
    if value.startswith("data:"):
        head, _, payload = value.partition(",")
        if not head.endswith(";base64"):
            raise DataError("a data URL image must be base64 (data:image/png;base64,...)", field=field,
                            hint="encode the image bytes in base64", reason="bad_image_url")
        try:
            return ImageRef(data=base64.b64decode(payload, validate=True), record=record, field=field)
        except (binascii.Error, ValueError):
            raise DataError("the data URL's base64 payload does not decode", field=field,
                            hint="encode the image bytes in base64", reason="bad_image_url") from None
    scheme = urlparse(value).scheme
    if scheme in ("http", "https", "ftp", "s3", "gs"):
        raise DataError(f"remote image URL {value!r}: sftlab does not download images", field=field,
                        hint="download the image and give its path", reason="remote_image_url")
    path = Path(unquote(urlparse(value).path)) if scheme == "file" else Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return ImageRef(path=str(path), record=record, field=field)


# ---------------------------------------------------------------------------------------
# Readers: a row -> VisualConversation
# ---------------------------------------------------------------------------------------
@dataclass
class VisualConversation:
    """A conversation with images: ``images[k]`` is the image of the k-th ``<image>``
    placeholder in the messages' text (in message order)."""

    conversation: Conversation
    images: list[ImageRef]

    @property
    def id(self) -> str | None:
        return self.conversation.id


def count_placeholders(conversation: Conversation) -> int:
    """``<image>`` placeholders over all messages' content."""
    return sum(m.content.count(IMAGE_PLACEHOLDER) for m in conversation.messages)


def has_images(row: Any) -> bool:
    """True when a row carries images: an ``image`` or ``images`` field, or an image content
    part (``{"type": "image_url"}`` / ``{"type": "image"}``) in its ``messages`` (or a bare
    message list). Prompt readers and the server use it to send such rows to ``read_visual``.

    >>> has_images({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]}]})
    True
    >>> has_images({"messages": [{"role": "user", "content": "Hi"}]})
    False
    """
    if isinstance(row, dict) and (row.get("image") or row.get("images")):
        return True
    messages = row.get("messages") if isinstance(row, dict) else row
    return isinstance(messages, list) and any(
        isinstance(part, dict) and part.get("type") in ("image_url", "image")
        for message in messages if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"])


def detect_visual_format(row: Any) -> VisualFormat:
    """``multiinstruct`` (``task`` and ``inputs`` keys), ``images`` (an ``images`` column),
    ``llava`` (an ``image`` key, or ShareGPT ``conversations``: LLaVA's text-only rows have
    no image) or ``openai`` (content parts)."""
    if isinstance(row, dict) and "task" in row and "inputs" in row:
        return "multiinstruct"
    if isinstance(row, dict) and "images" in row:
        return "images"
    if isinstance(row, dict) and ("image" in row or "conversations" in row):
        return "llava"
    return "openai"


def read_visual(row: dict, *, base_dir: str | Path | None = None, format: VisualFormat | None = None,
                record: str | None = None, options: ReadOptions | None = None,
                templates: Any = None, seed: int = 0) -> VisualConversation:
    """One visual row (any of the four shapes, see the module docstring) -> ``VisualConversation``.

    ``record`` names the row in image errors (``"data.json:3"``); ``base_dir`` is where
    relative image paths live; ``templates`` and ``seed``: MultiInstruct rows (one seeded
    template; ``read_multiinstruct`` for all). Raises ``DataError`` for a bad row (field named).
    """
    options = options or ReadOptions()
    check_type(row, dict, "row")
    kind = format or detect_visual_format(row)
    if kind == "multiinstruct":
        return read_multiinstruct(row, read_templates(templates), base_dir=base_dir, record=record,
                                  options=options, seed=seed)[0]
    if kind == "llava":
        value = row.get("image")
        paths = value if isinstance(value, list) else [] if value is None else [value]
        fields = [f"image[{i}]" for i in range(len(paths))] if isinstance(value, list) else ["image"]
        images = [image_ref(p, base_dir=base_dir, field=f, record=record) for p, f in zip(paths, fields)]
        text_row = {key: v for key, v in row.items() if key != "image"}
        conversation = FORMATS.get("sharegpt")(text_row, options)[0]
        return _checked(conversation, images, "conversations", "image", options)
    if kind == "images":
        paths = check_type(row["images"], list, "images")
        column = [image_ref(p, base_dir=base_dir, field=f"images[{i}]", record=record) for i, p in enumerate(paths)]
        text_row = {key: v for key, v in row.items() if key != "images"}
        if "conversations" in text_row:
            conversation = FORMATS.get("sharegpt")(text_row, options)[0]
            return _checked(conversation, column, "conversations", "images", options)
        messages, inline = _image_parts(text_row.get("messages"), base_dir, record, column)
        conversation = _openai_conversation({**text_row, "messages": messages}, options)
        return _checked(conversation, inline, "messages", "images", options)
    messages, images = _image_parts(row.get("messages"), base_dir, record, None)
    conversation = _openai_conversation({**row, "messages": messages}, options)
    return _checked(conversation, images, "messages", "messages (image parts)", options)


def read_templates(source: str | Path | dict | None = None) -> dict[str, tuple[str, ...]]:
    """``TASK_TEMPLATES`` extended by ``source``: a mapping, or a JSON/YAML file of one, of
    task -> a template or a list of them (a task named there replaces the built-in one).
    Each slot must be a plain ``{name}``; a bad entry is a ``DataError`` naming the file
    and ``<task>[<k>]``.

    >>> read_templates({"ocr": "Read the text in the image."})["ocr"]
    ('Read the text in the image.',)
    """
    from sftlab.config import read_yaml  # JSON is YAML: one reader for both

    if source is None:
        return dict(TASK_TEMPLATES)
    file = None if isinstance(source, dict) else str(source)
    mapping = source if isinstance(source, dict) else read_yaml(source)
    if not isinstance(mapping, dict):
        raise DataError(f"templates must be a mapping of task -> list of templates, got {type(mapping).__name__}",
                        file=file, hint='{"vqa": ["Answer the question. {question}"]}', reason="bad_templates")
    merged = dict(TASK_TEMPLATES)
    for task, value in mapping.items():
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not entries or not all(isinstance(t, str) and t.strip() for t in entries):
            raise DataError(f"task {task!r}: expected a template or a non-empty list of templates (text)",
                            file=file, field=str(task), hint=f'{task}: ["Describe the image."]', reason="bad_templates")
        for k, template in enumerate(entries):
            template_slots(template, file=file, field=f"{task}[{k}]")
        merged[str(task)] = tuple(entries)
    return merged


def template_slots(template: str, *, file: str | None = None, field: str | None = None) -> list[str]:
    """The ``{name}`` slots of ``template`` in order (``{{``/``}}`` are literal braces);
    ``DataError`` for an unbalanced brace or a slot that is not a plain name.

    >>> template_slots("Q: {question} Options: {options}. {{not a slot}}")
    ['question', 'options']
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise DataError(f"template {template!r}: {error}", file=file, field=field,
                        hint="write a literal brace as {{ or }}", reason="bad_templates") from None
    for name in names:
        if not name.isidentifier():
            raise DataError(f"template {template!r}: slot {{{name}}} is not a plain name", file=file, field=field,
                            hint="name a key of the row's inputs, e.g. {question}", reason="bad_templates")
    return names


def read_multiinstruct(row: dict, templates: dict[str, tuple[str, ...]], *, expand: Literal["one", "all"] = "one",
                       seed: int = 0, base_dir: str | Path | None = None, record: str | None = None,
                       options: ReadOptions | None = None) -> list[VisualConversation]:
    """A MultiInstruct task row -> its visual conversation(s): one seeded template
    (``expand="one"``) or one per template (``"all"``, ids ``<id>-<k>``); see the module
    docstring. ``templates``: ``read_templates``'s mapping.

    >>> row = {"id": "q1", "task": "vqa", "image": "a.png", "inputs": {"question": "Colour?"}, "output": "Red."}
    >>> [e.conversation.messages[0].content for e in read_multiinstruct(row, TASK_TEMPLATES, expand="all")][0]
    '<image>\\nAnswer the question about the image. Colour?'
    """
    options = options or ReadOptions()
    task = check_type(row.get("task"), str, "task")
    if task not in templates:
        raise DataError(f"task {task!r} has no instruction templates (known: {', '.join(sorted(templates))})",
                        field="task", hint=f"add {task!r} to vision.templates (task -> list of templates)",
                        reason="unknown_task")
    inputs = check_type(row.get("inputs"), dict, "inputs")
    values = {name: _input_text(value, f"inputs.{name}") for name, value in inputs.items()}
    for template in templates[task]:  # every template, so the seed never decides whether a row is valid
        for slot in template_slots(template, field="task"):
            if slot not in values:
                raise DataError(f"template {template!r} of task {task!r} needs inputs.{slot}, which the row lacks",
                                field=f"inputs.{slot}", hint=f"give inputs.{slot}, or change the {task!r} templates",
                                reason="missing_template_field")
    output = row.get("output")
    if output is not None or options.require_assistant:
        check_type(output, str, "output")
    value = row.get("image")
    paths = value if isinstance(value, list) else [] if value is None else [value]
    fields = [f"image[{i}]" for i in range(len(paths))] if isinstance(value, list) else ["image"]
    images = [image_ref(p, base_dir=base_dir, field=f, record=record) for p, f in zip(paths, fields)]
    system = [Message("system", check_type(row["system"], str, "system"))] if row.get("system") else []
    answer = [Message("assistant", output)] if output is not None else []
    meta = {key: v for key, v in row.items() if key not in ("id", "task", "image", "inputs", "output", "system")}
    row_id = row.get("id")
    count = len(templates[task])
    examples = []
    for k in range(count) if expand == "all" else [_template_index(row, seed, count)]:
        instruction = string.Formatter().vformat(templates[task][k], (), values)
        if IMAGE_PLACEHOLDER not in instruction:
            instruction = IMAGE_PLACEHOLDER * len(images) + ("\n" if images else "") + instruction
        conversation = Conversation([*system, Message("user", instruction), *answer],
                                    id=None if row_id is None else f"{row_id}-{k}" if expand == "all" else str(row_id),
                                    meta={**meta, "task": task, "template": k})
        examples.append(_checked(conversation, images, "inputs", "image", options))
    return examples


def _input_text(value: Any, field: str) -> str:
    """A slot's text: strings as they are, numbers written out, a list joined with ", "."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected text, a number or a list of them, got {type(value).__name__}", field=field,
                    hint="write the input as text", reason="wrong type")


def _template_index(row: dict, seed: int, count: int) -> int:
    """Which of ``count`` templates a row gets: a hash of the seed and the row's id (else its
    content), so the choice is fixed per row whatever the file order or process."""
    key = str(row["id"]) if row.get("id") is not None else json.dumps(row, sort_keys=True, default=str)
    return int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()[:16], 16) % count


def _openai_conversation(row: dict, options: ReadOptions) -> Conversation:
    return FORMATS.get("openai")(row, options)[0]


def _image_parts(messages: Any, base_dir, record, column: list[ImageRef] | None) -> tuple[list, list[ImageRef]]:
    """Messages with their image content parts replaced by ``<image>`` text parts, and the
    images in placeholder order. ``column``: the ``images`` column, which TRL's bare
    ``{"type": "image"}`` parts and text placeholders take from in order."""
    check_type(messages, list, "messages")
    images: list[ImageRef] = []
    taken = 0
    rewritten = []
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and column is not None:
            for _ in range(content.count(IMAGE_PLACEHOLDER)):
                images.append(column[taken] if taken < len(column) else None)
                taken += 1
        if not isinstance(content, list):
            rewritten.append(message)
            continue
        parts = []
        for p, part in enumerate(content):
            where = f"messages[{m}].content[{p}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                images.append(image_ref(url, base_dir=base_dir, field=f"{where}.image_url.url", record=record))
            elif kind == "image" and isinstance(part.get("image"), str):
                images.append(image_ref(part["image"], base_dir=base_dir, field=f"{where}.image", record=record))
            elif kind == "image":
                if column is None:
                    raise DataError("an image part without an image (and no 'images' column)", field=where,
                                    hint="give image_url.url, or the images in an 'images' column",
                                    reason="image_count_mismatch")
                images.append(column[taken] if taken < len(column) else None)
                taken += 1
            else:
                if kind == "text" and column is not None:
                    text = part.get("text", part.get("value", ""))
                    for _ in range(text.count(IMAGE_PLACEHOLDER) if isinstance(text, str) else 0):
                        images.append(column[taken] if taken < len(column) else None)
                        taken += 1
                parts.append(part)
                continue
            parts.append({"type": "text", "text": IMAGE_PLACEHOLDER})
        rewritten.append({**message, "content": parts})
    if column is not None and taken != len(column):
        raise DataError(f"{taken} image placeholders but {len(column)} images in the 'images' column",
                        field="images", hint="give one <image> (or {'type': 'image'} part) per image",
                        reason="image_count_mismatch")
    return rewritten, images


def _checked(conversation: Conversation, images: list[ImageRef], text_field: str,
             images_field: str, options: ReadOptions) -> VisualConversation:
    placeholders = count_placeholders(conversation)
    if placeholders != len(images):
        raise DataError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholders in '{text_field}' but "
                        f"{len(images)} images in '{images_field}'", field=text_field, hint=f"write one {IMAGE_PLACEHOLDER} per image where it belongs",
                        reason="image_count_mismatch")
    return VisualConversation(validate(conversation, require_assistant=options.require_assistant), images)


def read_visual_file(path: str | Path, *, image_folder: str | Path | None = None,
                     format: VisualFormat | None = None, on_error: Literal["fail", "skip"] = "fail",
                     templates: str | Path | dict | None = None, expand: Literal["one", "all"] = "one",
                     seed: int = 0) -> tuple[list[VisualConversation], Counter]:
    """Every visual record of a JSON/JSONL(.gz) file -> ``(examples, skipped per reason)``.

    Errors name the file and line (JSONL) or record index; ids default to
    ``<file stem>-<index>`` (``-<k>`` added per template with ``expand="all"``).
    ``templates``, ``expand``, ``seed``: MultiInstruct rows (``read_multiinstruct``).
    Images are not opened here (``check_images`` does that).
    """
    from sftlab.data.io import default_id, locate, read_objects  # io imports formats: keep this module light

    path = Path(path)
    base_dir = Path(image_folder) if image_folder is not None else path.parent
    examples, skipped = [], Counter()
    task_templates = None
    for record in read_objects(path):
        where = f"{path}:{record.line}" if record.line is not None else f"{path}[record {record.index}]"
        try:
            row = record.value
            if (format or detect_visual_format(row)) == "multiinstruct":
                task_templates = task_templates or read_templates(templates)  # once per file
                read = read_multiinstruct(row, task_templates, expand=expand, seed=seed, base_dir=base_dir,
                                          record=where)
            else:
                read = [read_visual(row, base_dir=base_dir, format=format, record=where)]
        except DataError as error:
            if error.reason == "bad_templates":  # the templates' fault, not this row's: never skipped
                raise
            if on_error == "fail":
                raise locate(error, path, record) from None
            skipped[error.reason] += 1
            continue
        for example in read:
            conversation = example.conversation
            conversation.source = path.name
            if conversation.id is None:
                number = conversation.meta["template"] if expand == "all" and "template" in conversation.meta else None
                conversation.id = default_id(path, record.index, number)
            examples.append(example)
    return examples, skipped


def check_images(examples: Iterable[VisualConversation], max_pixels: int = MAX_PIXELS) -> dict[str, str]:
    """Open and decode every image once; returns ``{image: sha256}`` for provenance.

    The first bad image raises its ``DataError`` (naming the image and the record).
    """
    fingerprints = {}
    for example in examples:
        for ref in example.images:
            ref.load(max_pixels)
            fingerprints[ref.describe()] = ref.sha256
    return fingerprints


# ---------------------------------------------------------------------------------------
# Image tokens: render, expand, mask, truncate
# ---------------------------------------------------------------------------------------
@dataclass
class VisualTokenized(Tokenized):
    """A rendered visual example: each image occupies ``tokens_per_image`` consecutive
    positions of ``input_ids`` holding the image token id, never labelled; ``images[k]``
    fills the k-th run of image positions."""

    images: list[ImageRef] = field(default_factory=list)
    image_token_id: int | None = None
    """The id that marks image positions (the tokenizer's image token)."""


def image_token_id(tokenizer, image_token: str = IMAGE_PLACEHOLDER) -> int:
    """The id of ``image_token``, which must be one token of ``tokenizer``
    (``sftlab.models.vision.add_image_token`` adds it)."""
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id or \
            tokenizer(image_token, add_special_tokens=False)["input_ids"] != [token_id]:
        raise DataError(f"the tokenizer has no single token {image_token!r} for images",
                        hint="add it with sftlab.models.vision.add_image_token(tokenizer)",
                        reason="no_image_token")
    return token_id


def render_visual(example: VisualConversation, tokenizer, *, tokens_per_image: int,
                  image_token: str = IMAGE_PLACEHOLDER, strategy: MaskStrategy = "all_assistant",
                  max_length: int | None = None) -> VisualTokenized:
    """Render, mask and expand one visual example.

    The image token is one token while the conversation is rendered and masked (so the
    masks are text masks), then each is repeated ``tokens_per_image`` times with label
    ``IGNORE_INDEX``. Raises ``DataError`` with reason ``image_count_mismatch`` when the
    rendered text does not hold one image token per image (a template that drops a turn),
    ``truncated_image`` when ``max_length`` would cut into an image's tokens.
    """
    token_id = image_token_id(tokenizer, image_token)
    conversation = example.conversation
    if image_token != IMAGE_PLACEHOLDER:
        conversation = dataclasses.replace(conversation, messages=[
            dataclasses.replace(m, content=m.content.replace(IMAGE_PLACEHOLDER, image_token))
            for m in conversation.messages])
    text_example = render(conversation, tokenizer, strategy=strategy)
    found = text_example.input_ids.count(token_id)
    if found != len(example.images):
        raise DataError(f"the rendered conversation holds {found} image tokens for {len(example.images)} images",
                        hint="use a chat template that renders every turn", reason="image_count_mismatch")
    input_ids, labels = [], []
    for token, label in zip(text_example.input_ids, text_example.labels):
        if token == token_id:
            input_ids += [token_id] * tokens_per_image
            labels += [IGNORE_INDEX] * tokens_per_image
        else:
            input_ids.append(token)
            labels.append(label)
    full = VisualTokenized(input_ids, labels, conversation.id, images=list(example.images), image_token_id=token_id)
    return full if max_length is None else truncate_visual(full, max_length, token_id)


def truncate_visual(example: VisualTokenized, max_length: int, image_token_id: int) -> VisualTokenized:
    """``example`` cut to ``max_length`` tokens from the end, unless that would remove any
    image token: then ``DataError`` (reason ``truncated_image``), because a partial image has
    fewer positions than its features (LLaVA's "image features and image tokens do not match")
    and a dropped one leaves an image without a place.

    >>> ex = VisualTokenized([1, 9, 9, 5, 6], [-100, -100, -100, 5, 6], images=[ImageRef("a.png")], image_token_id=9)
    >>> truncate_visual(ex, 4, 9).input_ids
    [1, 9, 9, 5]
    >>> truncate_visual(ex, 2, 9)
    Traceback (most recent call last):
    ...
    sftlab.errors.DataError: <data>: 5 tokens with images do not fit max_length=2, and truncation would cut an image's tokens (fix: raise data.max_length or shorten the conversation)
    """
    if len(example) <= max_length:
        return example
    if image_token_id in example.input_ids[max_length:]:
        raise DataError(f"{len(example)} tokens with images do not fit max_length={max_length}, and "
                        "truncation would cut an image's tokens", reason="truncated_image",
                        hint="raise data.max_length or shorten the conversation")
    return dataclasses.replace(example, input_ids=example.input_ids[:max_length],
                               labels=example.labels[:max_length])


def tokenize_visual(examples: Iterable[VisualConversation], tokenizer, *, tokens_per_image: int,
                    image_token: str = IMAGE_PLACEHOLDER, max_length: int | None = None,
                    strategy: MaskStrategy = "all_assistant") -> TokenizeResult:
    """``render_visual`` every example; drop and count (``TokenizeResult.dropped``) those that
    fail (``truncated_image``, ``image_count_mismatch``, the text reasons of ``render``) or
    train nothing (``no_trained_tokens``, ``truncated_all_labels``)."""
    ensure_chat_template(tokenizer)
    result = TokenizeResult(examples=[])
    for index, example in enumerate(examples):
        name = example.id if example.id is not None else f"#{index}"
        try:
            full = render_visual(example, tokenizer, tokens_per_image=tokens_per_image,
                                 image_token=image_token, strategy=strategy)
            tokenized = full if max_length is None else truncate_visual(
                full, max_length, image_token_id(tokenizer, image_token))
        except DataError as error:
            reason = error.reason
        else:
            if full.num_trained == 0:
                reason = "no_trained_tokens"
            elif tokenized.num_trained == 0:
                reason = "truncated_all_labels"
            else:
                result.truncated += len(tokenized) < len(full)
                result.examples.append(tokenized)
                continue
        result.dropped[reason] += 1
        result.dropped_ids.append((name, reason))
    return result
