"""``sftlab check``: what was trained is what is served.

A model reaches its users through several paths, and each renders a conversation on its
own: sftlab's training renderer (``sftlab.data.chat``), the chat template saved with the
model (what transformers, vLLM and TGI apply), the prompt sftlab's OpenAI server builds,
the template inside an exported GGUF file, and an Ollama Modelfile's Go template. When they
disagree the model silently sees at serving time text it was never trained on: it does not
stop (the end-of-turn token was not trained, or is not a stop token), it answers tool
calls as plain text, or reasoning comes back duplicated. ``check`` renders probe
conversations (system prompt and several turns, a weight-0 turn, a tool call, reasoning)
through every path and proves they agree:

=====================  ==================================================================
check                  passes when
=====================  ==================================================================
``saved template``     the saved chat template's token ids equal the training ids
``server prompt``      the server's prompt for each assistant turn is the training text up
                       to that turn, ending exactly where the turn's trained tokens start
``end of turn``        every trained turn ends with a labelled end-of-turn token
``stop tokens``        the server's stop ids (generation config, config, eos) hold that token
``reply parsing``      the server's reply parser gives back each trained turn's content,
                       tool calls and reasoning
``gguf``               a GGUF file's embedded template and end-of-turn / eos ids equal the
                       saved ones (only with ``gguf=``)
``ollama``             the Modelfile's Go template renders each prompt as the saved template
                       does, and its stops hold the end-of-turn token (only with
                       ``modelfile=``; the tool and reasoning probes are reported as not
                       covered: Ollama's families here render no tools)
=====================  ==================================================================

A failure names the path, the probe and the first differing token::

    FAIL  saved template  tool-call  token 31: training 412 '<tool_call>' vs saved 17 'user'

``sftlab check RUN`` exits non-zero when any check fails; training runs it on the saved
result and writes ``check.json`` in the run directory.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from sftlab.data.chat import render, serving_template, template_features
from sftlab.errors import SftlabError
from sftlab.infer.hf import prompt_to_ids
from sftlab.infer.parsing import parse_reply
from sftlab.types import IGNORE_INDEX, Conversation, Message, ToolCall

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def probe_conversations() -> list[tuple[str, Conversation]]:
    """``(name, conversation)`` of every probe: what each path must render alike."""
    return [
        ("multi-turn", Conversation([
            Message("system", "You answer in one short sentence."),
            Message("user", "Name a colour."), Message("assistant", "Blue."),
            Message("user", "And another one?"), Message("assistant", "Green.")])),
        ("weight-0", Conversation([
            Message("user", "Say hi."), Message("assistant", "Hello there, friend!", weight=0),
            Message("user", "Shorter."), Message("assistant", "Hi.")])),
        ("tool-call", Conversation([
            Message("user", "What is the weather in Paris?"),
            Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, id="call_1"),)),
            Message("tool", '{"temperature": 18}', tool_call_id="call_1", name="get_weather"),
            Message("assistant", "It is 18 degrees in Paris.")], tools=[WEATHER_TOOL])),
        ("reasoning", Conversation([
            Message("user", "What is 2 + 2?"),
            Message("assistant", "4.", reasoning="Two plus two makes four.")])),
    ]


@dataclass
class Finding:
    """One check on one probe. ``ok`` None: not applicable here (``detail`` says why)."""

    check: str
    probe: str
    ok: bool | None
    detail: str = ""

    def line(self) -> str:
        status = {True: "ok  ", False: "FAIL", None: "n/a "}[self.ok]
        return f"{status}  {self.check:<15} {self.probe:<11} {self.detail}".rstrip()


@dataclass
class CheckReport:
    """Every finding of one ``check``; ``ok`` when none failed."""

    source: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok is not False for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.ok is False]

    def add(self, check: str, probe: str, ok: bool | None, detail: str = "") -> None:
        self.findings.append(Finding(check, probe, ok, detail))

    def text(self) -> str:
        passed = sum(f.ok is True for f in self.findings)
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)} failures)"
        return "\n".join([f"sftlab check {self.source}: {verdict}, {passed} checks ok"]
                         + [f.line() for f in self.findings])

    def to_dict(self) -> dict:
        return {"source": self.source, "ok": self.ok, "findings": [asdict(f) for f in self.findings]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


# -- the paths -----------------------------------------------------------------------------


def check_tokenizers(trained, saved, *, stop_ids: Sequence[int], source: str = "model",
                     gguf: str | Path | None = None, modelfile: str | Path | None = None,
                     probes: list[tuple[str, Conversation]] | None = None) -> CheckReport:
    """Check ``trained`` (the tokenizer training rendered with) against ``saved`` (the one
    loaded back from the saved model), the server's ``stop_ids``, and optionally a GGUF
    file and an Ollama Modelfile."""
    report = CheckReport(source)
    with warnings.catch_warnings():  # the fallbacks are named in the report, not warned about
        warnings.simplefilter("ignore", UserWarning)
        _check_all(report, trained, saved, stop_ids, gguf, modelfile, probes or probe_conversations())
    return report


def _check_all(report: CheckReport, trained, saved, stop_ids, gguf, modelfile, probes) -> None:
    features = template_features(serving_template(trained))
    fallbacks = [name for name, native in (("hermes (tools)", features.tools),
                                           ("think_tags (reasoning)", features.reasoning)) if not native]
    report.add("template", "-", True, "the model's own chat template" + (
        f" with sftlab's {' and '.join(fallbacks)} fallback(s) before it" if fallbacks else ""))
    eot = end_of_turn(trained)
    if eot is None:
        report.add("end of turn", "-", False, "the chat template closes assistant turns with no single token: "
                   "generation cannot stop reliably; use a template with an end-of-turn token")
    else:
        name = trained.convert_ids_to_tokens(eot)
        report.add("stop tokens", "-", eot in set(stop_ids),
                   f"end of turn {eot} {name!r}; server stops at {sorted(set(stop_ids))}"
                   + ("" if eot in set(stop_ids) else ": add it to generation_config.json's eos_token_id"))
    for probe, conversation in probes:
        try:
            example = render(conversation, trained)
        except SftlabError as error:
            report.add("training", probe, False, f"the training renderer refuses the probe: {error}")
            continue
        _check_saved(report, probe, conversation, example.input_ids, saved)
        _check_server(report, probe, conversation, example, trained)
        runs = _trained_runs(example.labels)
        _check_end_of_turn(report, probe, example.input_ids, runs, eot, trained)
        _check_replies(report, probe, conversation, example.input_ids, runs, eot, trained)
    if gguf is not None:
        _check_gguf(report, Path(gguf), saved, eot)
    if modelfile is not None:
        _check_ollama(report, Path(modelfile), saved, eot)


def _check_saved(report: CheckReport, probe: str, conversation: Conversation, ids: list[int], saved) -> None:
    """transformers' own path: the saved template applied with ``tools=``, no sftlab code."""
    try:
        text = saved.apply_chat_template([m.to_dict() for m in conversation.messages], tools=conversation.tools,
                                         tokenize=False)
    except Exception as error:  # a template that raises on the probe (jinja's own errors)
        report.add("saved template", probe, False, f"the saved chat template fails: {error}")
        return
    other = saved(text, add_special_tokens=False)["input_ids"]
    report.add("saved template", probe, *_compare(ids, other, "saved", saved))


def _check_server(report: CheckReport, probe: str, conversation: Conversation, example, trained) -> None:
    """For every assistant turn: the server's prompt (the conversation up to it, with the
    generation prompt) is the training ids up to where that turn is trained."""
    starts = [start for start, _ in _trained_runs(example.labels)]
    trained_turns = iter(starts)
    messages = conversation.messages
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prompt = prompt_to_ids(trained, Conversation(messages[:index], tools=conversation.tools))
        ok, detail = _compare(example.input_ids[:len(prompt)], prompt, "server", trained)
        if ok and message.weight:
            start = next(trained_turns, None)
            if start != len(prompt):
                ok, detail = False, (f"turn {index}: the server's prompt ends at token {len(prompt)} but training "
                                     f"starts the answer at token {start}")
        report.add("server prompt", probe, ok, detail if not ok else f"{index} turn(s) before the reply")


def _check_end_of_turn(report: CheckReport, probe: str, ids, runs, eot: int | None, tokenizer) -> None:
    if eot is None:
        return
    bad = [(start, end) for start, end in runs if ids[end - 1] != eot]
    if bad:
        start, end = bad[0]
        last = tokenizer.convert_ids_to_tokens(ids[end - 1])
        report.add("end of turn", probe, False, f"the trained turn at tokens {start}-{end} ends with {last!r}, "
                   f"not the end-of-turn token: the model would not learn to stop")
    else:
        report.add("end of turn", probe, True, f"{len(runs)} trained turn(s) end with it")


def _check_replies(report: CheckReport, probe: str, conversation: Conversation, ids, runs, eot, tokenizer) -> None:
    """Each trained turn's text, as the model would generate it, parsed by the server."""
    turns = [m for m in conversation.messages if m.role == "assistant" and m.weight]
    for message, (start, end) in zip(turns, runs):
        body = ids[start:end - 1] if eot is not None and ids[end - 1] == eot else ids[start:end]
        text = tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        reply = parse_reply(text, tools=bool(conversation.tools), reasoning=True)
        got = ((reply.content or "").strip(), [(c.name, c.arguments) for c in reply.tool_calls],
               reply.reasoning or None)
        want = (message.content.strip(), [(c.name, c.arguments) for c in message.tool_calls],
                message.reasoning or None)
        if got != want:
            report.add("reply parsing", probe, False, f"the server parses the trained reply {text!r} as "
                       f"content={got[0]!r} tool_calls={got[1]} reasoning={got[2]!r}, not {want}")
            return
    if turns:
        report.add("reply parsing", probe, True, "content, tool calls and reasoning come back as trained")


def _check_gguf(report: CheckReport, path: Path, saved, eot: int | None) -> None:
    from gguf import GGUFReader  # lazy: only for a GGUF check

    if not path.is_file():
        report.add("gguf", path.name, False, f"{path} does not exist")
        return
    fields = GGUFReader(str(path)).fields

    def value(key: str):
        return fields[key].contents() if key in fields else None

    template = value("tokenizer.chat_template")
    if template != _template_text(saved):
        report.add("gguf", path.name, False, "the embedded chat template differs from the saved one"
                   + _first_difference(_template_text(saved) or "", template or ""))
    else:
        report.add("gguf", path.name, True, "embedded chat template equals the saved one")
    for key, want in (("tokenizer.ggml.eot_token_id", eot), ("tokenizer.ggml.eos_token_id", saved.eos_token_id)):
        if want is not None:
            got = value(key)
            report.add("gguf", path.name, got == want, f"{key.rsplit('.', 1)[1]} {got} (saved: {want})")


def _check_ollama(report: CheckReport, path: Path, saved, eot: int | None) -> None:
    from sftlab.models.ollama import read_modelfile, render_go

    if not path.is_file():
        report.add("ollama", path.name, False, f"{path} does not exist")
        return
    template, stops, system = read_modelfile(path.read_text(encoding="utf-8"))
    if eot is not None:
        token = saved.convert_ids_to_tokens(eot)
        report.add("ollama", "stops", token in stops, f"PARAMETER stop {stops} " +
                   ("holds" if token in stops else "lacks") + f" {token!r}")
    for probe, conversation in probe_conversations():
        if conversation.tools or any(m.reasoning for m in conversation.messages) or not template:
            report.add("ollama", probe, None, "not covered: the Modelfile's template renders no tools or reasoning")
            continue
        for index, message in enumerate(conversation.messages):
            if message.role != "assistant":
                continue
            dicts = [m.to_dict() for m in conversation.messages[:index]]
            want = saved.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
            served = dicts if dicts[0]["role"] == "system" or not system else [
                {"role": "system", "content": system}] + dicts  # Ollama adds SYSTEM when none is given
            got = render_go(template, [{"role": m["role"], "content": m["content"]} for m in served])
            if got != want:
                report.add("ollama", probe, False, f"prompt of turn {index}" + _first_difference(want, got))
                break
        else:
            report.add("ollama", probe, True, "Go template renders every prompt as the saved template")


# -- helpers -------------------------------------------------------------------------------


def end_of_turn(tokenizer) -> int | None:
    """The end-of-turn token id of ``tokenizer``'s chat template (``sftlab.models.gguf``)."""
    from sftlab.models.gguf import end_of_turn_id

    return end_of_turn_id(tokenizer)


def _trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of labelled positions (one per trained turn)."""
    runs, start = [], None
    for t, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and t > 0 and start is None:
            start = t
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, t))
            start = None
    return runs


def _compare(ids: list[int], other: list[int], name: str, tokenizer) -> tuple[bool, str]:
    """``(equal, detail)``; the detail names the first differing token of the two paths."""
    if list(ids) == list(other):
        return True, f"{len(ids)} tokens identical"
    index = next((i for i, (a, b) in enumerate(zip(ids, other)) if a != b), min(len(ids), len(other)))

    def token(seq: list[int]) -> str:
        return f"{seq[index]} {tokenizer.convert_ids_to_tokens(seq[index])!r}" if index < len(seq) else "(end)"

    return False, f"token {index}: training {token(ids)} vs {name} {token(other)}"


def _first_difference(want: str, got: str) -> str:
    index = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return f" at character {index}: expected {want[index:index + 30]!r}, found {got[index:index + 30]!r}"


def _template_text(tokenizer) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template


# -- sources: a run, a model directory, a name ----------------------------------------------


def check(source: str | Path, *, gguf: str | Path | None = None, modelfile: str | Path | None = None) -> CheckReport:
    """Check a run directory, model or adapter directory, or ``default`` / ``tiny``.

    The "saved" tokenizer is loaded as the server and any user of the model load it; the
    "trained" one is the same with the chat template training recorded in the run's
    ``run.json`` (for a name, the saved one is written with ``save_pretrained`` and read back
    by ``AutoTokenizer``). An exported directory's ``gguf/`` file and
    ``Modelfile`` are found and checked when ``gguf`` / ``modelfile`` are not given.
    """
    import tempfile

    from sftlab.models import load_tokenizer, _auto_tokenizer

    saved = load_tokenizer(str(source))
    path = Path(str(source)).expanduser()
    if not path.is_dir():  # a name (tiny, default): as sftlab trains and saves it
        serving_template(saved)
        with tempfile.TemporaryDirectory() as tmp:
            saved.save_pretrained(tmp)
            saved = _auto_tokenizer(tmp)
    tokenizer = trained_tokenizer(path, saved)
    if path.is_dir():
        found = sorted(path.glob("gguf/*.gguf")) + sorted(path.glob("*.gguf"))
        gguf = gguf or (found[0] if found else None)
        for candidate in (path / "gguf" / "Modelfile", path / "Modelfile"):
            if modelfile is None and candidate.is_file():
                modelfile = candidate
    return check_tokenizers(tokenizer, saved, stop_ids=server_stop_ids(str(source), tokenizer),
                            source=str(source), gguf=gguf, modelfile=modelfile)


def trained_tokenizer(path: Path, saved):
    """The tokenizer as training rendered with it: ``saved`` with the chat template the run
    recorded in ``run.json`` (a run directory), else ``saved`` itself."""
    import copy

    run_json = next((p / "run.json" for p in (path, path.parent) if (p / "run.json").is_file()), None)
    recorded = json.loads(run_json.read_text(encoding="utf-8")).get("chat_template") if run_json else None
    trained = copy.deepcopy(saved)  # rendering may install the fallbacks: never on the saved one
    if recorded:
        trained.chat_template = recorded
    return trained


def server_stop_ids(source: str, tokenizer) -> list[int]:
    """The ids ``HFGenerator`` stops at for ``source``, read from its configs (no weights)."""
    from transformers import AutoConfig, GenerationConfig

    from sftlab.infer.hf import eos_ids_of
    from sftlab.models import resolve_model, split_adapter_run

    split = split_adapter_run(source)
    name = resolve_model(split[0] if split else source)
    if name == "tiny":
        from sftlab.models.tiny import tiny_config

        return sorted(eos_ids_of(tiny_config(), None, tokenizer))
    config = AutoConfig.from_pretrained(name)
    try:
        generation = GenerationConfig.from_pretrained(name)
    except OSError:  # no generation_config.json: the model config's eos only
        generation = None
    return sorted(eos_ids_of(config, generation, tokenizer))
