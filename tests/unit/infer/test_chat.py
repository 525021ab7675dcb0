"""The chat loop driven with scripted input: streaming, history, /reset, /system, /exit."""
from __future__ import annotations

import io
import sys

from sftlab.infer.base import SamplingConfig
from sftlab.infer.chat import chat_loop
from sftlab.infer.hf import HFGenerator
from sftlab.types import Message


class _Recording(HFGenerator):
    """The real generator, remembering every prompt it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = []

    def generate(self, prompts, sampling=None, on_text=None):
        self.prompts.extend(prompts)
        return super().generate(prompts, sampling, on_text=on_text)


def test_multi_turn_history_reset_and_system(tiny_model, tiny_tokenizer):
    generator = _Recording(tiny_model, tiny_tokenizer, batch_size=1)
    sampling = SamplingConfig(max_new_tokens=5)
    script = "hello\nhow are you\n/reset\n/system be brief\nagain\n/bogus\n/exit\nnever read\n"
    out = io.StringIO()
    history = chat_loop(generator, sampling, input_stream=io.StringIO(script), output=out)

    first, second, third = generator.prompts
    assert first == [Message("user", "hello")]
    reply1 = HFGenerator(tiny_model, tiny_tokenizer).generate([first], sampling)[0].text
    assert second == [Message("user", "hello"), Message("assistant", reply1), Message("user", "how are you")]
    assert third == [Message("system", "be brief"), Message("user", "again")]
    assert history[:2] == third and len(history) == 3
    text = out.getvalue()
    assert f"assistant> {reply1}\n" in text
    assert "conversation cleared" in text and "unknown command /bogus" in text


def test_streams_in_pieces(tiny_model, tiny_tokenizer):
    pieces = []

    class _Out(io.StringIO):
        def write(self, s):
            pieces.append(s)
            return super().write(s)

    chat_loop(HFGenerator(tiny_model, tiny_tokenizer), SamplingConfig(max_new_tokens=8),
              input_stream=io.StringIO("hi\n"), output=_Out())
    reply_pieces = pieces[pieces.index("assistant> ") + 1:-1]
    assert len(reply_pieces) > 1


def test_cli_chat_reads_a_pipe(tiny_model_dir, monkeypatch, capsys):
    from sftlab.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/system terse\nhi\n"))
    assert main(["chat", str(tiny_model_dir), "--temperature", "0", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and "system message set" in out
