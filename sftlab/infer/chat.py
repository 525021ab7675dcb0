"""``sftlab chat``: a terminal chat with streaming replies and multi-turn history.

    $ sftlab chat default
    you> Name three colours.
    assistant> Red, green and blue.
    you> /system Answer in French.
    you> /reset
    you> /exit

Commands: ``/reset`` forgets the conversation (keeps the system message), ``/system TEXT``
sets the system message and starts over, ``/exit`` (or end of input) quits. Input that
is not a terminal (a pipe, a file) works the same way, one message per line, which is
how the tests drive it.
"""
from __future__ import annotations

import inspect
import sys
from typing import IO

from sftlab.infer.base import SamplingConfig
from sftlab.types import Message

HELP = "commands: /reset (clear history), /system TEXT (set system message), /exit"


def chat_loop(generator, sampling: SamplingConfig, *, input_stream: IO[str] | None = None,
              output: IO[str] | None = None, system: str | None = None) -> list[Message]:
    """Read user lines, stream replies to ``output``; returns the final history.

    The generator must accept ``on_text`` (``HFGenerator`` does) to stream; any other
    ``Generator`` prints each reply whole.
    """
    input_stream = input_stream or sys.stdin
    output = output or sys.stdout
    interactive = input_stream.isatty()
    history: list[Message] = []

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
                history = []
                say("(conversation cleared)\n")
            elif command == "/system":
                system = argument.strip() or None
                history = []
                say(f"(system message {'set' if system else 'removed'}; conversation cleared)\n")
            else:
                say(f"unknown command {command}; {HELP}\n")
            continue
        history.append(Message("user", line))
        prompt = ([Message("system", system)] if system else []) + history
        say("assistant> ")
        reply = _stream_reply(generator, prompt, sampling, say)
        say("\n")
        history.append(Message("assistant", reply))
    return ([Message("system", system)] if system else []) + history


def _stream_reply(generator, prompt: list[Message], sampling: SamplingConfig, say) -> str:
    if "on_text" in inspect.signature(generator.generate).parameters:
        return generator.generate([prompt], sampling, on_text=lambda _, delta: say(delta))[0].text
    result = generator.generate([prompt], sampling)[0]  # a Generator that cannot stream
    say(result.text)
    return result.text
