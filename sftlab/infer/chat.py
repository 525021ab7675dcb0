"""``sftlab chat``: a terminal chat with streaming replies and multi-turn history.

    $ sftlab chat default
    you> Name three colours.
    assistant> Red, green and blue.
    you> /system Answer in French.
    you> /reset
    you> /exit

Commands: ``/reset`` forgets the conversation (keeps the system message), ``/system TEXT``
sets the system message and starts over, ``/image PATH`` attaches an image to the next
message (a vision model only; ``--image PATH`` does it for the first), ``/exit`` (or end
of input) quits. Input that
is not a terminal (a pipe, a file) works the same way, one message per line, which is
how the tests drive it.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import IO

from sftlab.data.images import IMAGE_PLACEHOLDER, MAX_PIXELS, ImageRef, VisualConversation, image_ref
from sftlab.errors import SftlabError
from sftlab.infer.base import SamplingConfig
from sftlab.infer.hf import ImagesNotSupported
from sftlab.types import Conversation, Message

HELP = "commands: /reset (clear history), /system TEXT (set system message), /image PATH, /exit"


def chat_loop(generator, sampling: SamplingConfig, *, input_stream: IO[str] | None = None,
              output: IO[str] | None = None, system: str | None = None,
              images: list[str] | None = None) -> list[Message]:
    """Read user lines, stream replies to ``output``; returns the final history.

    The generator must accept ``on_text`` (``HFGenerator`` does) to stream; any other
    ``Generator`` prints each reply whole. ``images`` (paths) go with the first message;
    they need a generator with ``accepts_images`` (``sftlab.infer.vision``), else
    ``ImagesNotSupported`` before anything is read. An image is opened when attached, so a
    bad one fails at once (``DataError``).
    """
    input_stream = input_stream or sys.stdin
    output = output or sys.stdout
    interactive = input_stream.isatty()
    history: list[Message] = []
    seen: list[ImageRef] = []  # the images of history's <image> placeholders, in order
    pending = [_attach(generator, path) for path in images or []]

    def say(text: str) -> None:
        output.write(text)
        output.flush()

    say(f"chatting with {generator.name}; {HELP}\n")
    while True:
        if interactive:
            say("you> ")
        line = input_stream.readline()
        if not line:  # end of input
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, argument = line.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history, seen = [], []
                say("(conversation cleared)\n")
            elif command == "/system":
                system = argument.strip() or None
                history, seen = [], []
                say(f"(system message {'set' if system else 'removed'}; conversation cleared)\n")
            elif command == "/image":
                try:
                    pending.append(_attach(generator, argument.strip()))
                    say(f"(image attached to your next message: {pending[-1].describe()})\n")
                except SftlabError as error:
                    say(f"error: {error}\n")
            else:
                say(f"unknown command {command}; {HELP}\n")
            continue
        history.append(Message("user", IMAGE_PLACEHOLDER * len(pending) + ("\n" if pending else "") + line))
        seen, pending = seen + pending, []
        prompt = ([Message("system", system)] if system else []) + history
        if seen:
            prompt = VisualConversation(Conversation(prompt), list(seen))
        say("assistant> ")
        reply = _stream_reply(generator, prompt, sampling, say)
        say("\n")
        history.append(Message("assistant", reply))
    return ([Message("system", system)] if system else []) + history


def _attach(generator, path: str) -> ImageRef:
    """An image for the next message, opened now (a bad one fails here, not mid-reply)."""
    if not getattr(generator, "accepts_images", False):
        raise ImagesNotSupported(f"model {generator.name} is text-only: it cannot take images; chat with a "
                                 "vision model directory (one with sftlab_vision.json)")
    ref = image_ref(path, base_dir=Path.cwd(), field="image")
    ref.load(getattr(generator, "max_pixels", MAX_PIXELS))
    return ref


def _stream_reply(generator, prompt, sampling: SamplingConfig, say) -> str:
    if "on_text" in inspect.signature(generator.generate).parameters:
        return generator.generate([prompt], sampling, on_text=lambda _, delta: say(delta))[0].text
    result = generator.generate([prompt], sampling)[0]  # a Generator that cannot stream
    say(result.text)
    return result.text
