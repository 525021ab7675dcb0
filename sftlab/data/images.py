"""Images in conversations: the readers, lazy loading, validation, fingerprints and image tokens.

A visual record becomes one internal example, ``VisualConversation``: a ``Conversation``
whose text holds one ``<image>`` placeholder per image (in order) and the ordered list of
``ImageRef`` it refers to. Three row shapes are read (``read_visual``):

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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal
from urllib.parse import unquote, urlparse

from sftlab.data.chat import MaskStrategy, TokenizeResult, ensure_chat_template, render
from sftlab.data.formats import FORMATS, ReadOptions, check_type, validate
from sftlab.errors import DataError
from sftlab.types import IGNORE_INDEX, Conversation, Tokenized

IMAGE_PLACEHOLDER = "<image>"
"""What marks an image's place in a conversation's text (LLaVA's, LLaMA-Factory's, TRL's)."""

MAX_PIXELS = 4096 * 4096
"""Images with more pixels than this are refused (``image_too_large``) before decoding."""

VisualFormat = Literal["llava", "openai", "images"]


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
    """``images`` (an ``images`` column), ``llava`` (an ``image`` key, or ShareGPT
    ``conversations``: LLaVA's text-only rows have no image) or ``openai`` (content parts)."""
    if isinstance(row, dict) and "images" in row:
        return "images"
    if isinstance(row, dict) and ("image" in row or "conversations" in row):
        return "llava"
    return "openai"


def read_visual(row: dict, *, base_dir: str | Path | None = None, format: VisualFormat | None = None,
                record: str | None = None, options: ReadOptions | None = None) -> VisualConversation:
    """One visual row (any of the three shapes, see the module docstring) -> ``VisualConversation``.

    ``record`` names the row in image errors (``"data.json:3"``); ``base_dir`` is where
    relative image paths live. Raises ``DataError`` for a bad row (field named).
    """
    options = options or ReadOptions()
    check_type(row, dict, "row")
    kind = format or detect_visual_format(row)
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
                     ) -> tuple[list[VisualConversation], Counter]:
    """Every visual record of a JSON/JSONL(.gz) file -> ``(examples, skipped per reason)``.

    Errors name the file and line (JSONL) or record index; ids default to
    ``<file stem>-<index>``. Images are not opened here (``check_images`` does that).
    """
    from sftlab.data.io import default_id, locate, read_objects  # io imports formats: keep this module light

    path = Path(path)
    base_dir = Path(image_folder) if image_folder is not None else path.parent
    examples, skipped = [], Counter()
    for record in read_objects(path):
        where = f"{path}:{record.line}" if record.line is not None else f"{path}[record {record.index}]"
        try:
            example = read_visual(record.value, base_dir=base_dir, format=format, record=where)
        except DataError as error:
            if on_error == "fail":
                raise locate(error, path, record) from None
            skipped[error.reason] += 1
            continue
        example.conversation.source = path.name
        if example.conversation.id is None:
            example.conversation.id = default_id(path, record.index)
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
