"""Read instruction-data files into conversations, and write them back in any format.

    result = read_conversations("alpaca_en_demo.json")           # format auto-detected
    result.conversations   # list[Conversation], ids kept or "<file stem>-<index>"
    result.skipped         # Counter: reason -> bad records dropped (on_error="skip")
    write_conversations(result.conversations, "out.jsonl", "canonical")

Files: ``.json`` (a JSON array, or one object; a file of one object per line is read as JSONL),
``.jsonl``, and either gzipped (``.json.gz``, ``.jsonl.gz``). An error in a JSONL file names
the 1-based line; in a JSON array, the record index (0-based).
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sftlab.errors import ConfigError, DataError
from sftlab.data.formats import FORMATS, ReadOptions, detect_format, validate
from sftlab.types import Conversation

DETECT_ROWS = 8  # rows looked at to detect the format
KEEP_ERRORS = 20  # errors kept in ReadResult.errors (all are counted)


@dataclass
class Record:
    """One parsed row and where it came from: ``line`` (JSONL, 1-based) or ``index`` only."""

    value: Any
    index: int
    line: int | None = None


@dataclass
class ReadResult:
    conversations: list[Conversation]
    format: str
    records: int = 0
    skipped: Counter = field(default_factory=Counter)
    """reason -> number of bad records dropped (only with on_error="skip")."""
    dropped: Counter = field(default_factory=Counter)
    """reason -> parts of records dropped on purpose by an option (Open Assistant subtrees)."""
    errors: list[DataError] = field(default_factory=list)
    """The first ``KEEP_ERRORS`` errors behind ``skipped``, with file and line."""


def read_conversations(path: str | Path, format: str | None = None, on_error: str = "fail",
                       **options: Any) -> ReadResult:
    """Read a file into conversations; ``options`` are ``ReadOptions`` fields.

    ``on_error="fail"`` raises the first bad record's ``DataError`` (file, line, field,
    fix); ``"skip"`` drops bad records and counts them per reason in ``.skipped``.
    """
    path = Path(path)
    read_options = make_options(on_error, options)
    records = iter_records(path)
    head = list(itertools.islice(records, DETECT_ROWS))
    format = format or _detect(path, head)
    reader = FORMATS.get(format)
    result = ReadResult([], format)
    for record in itertools.chain(head, records):
        result.records += 1
        try:
            result.conversations += read_record(reader, record, read_options, path, result.dropped)
        except DataError as error:
            error = locate(error, path, record)
            if read_options.on_error == "fail":
                raise error from None
            result.skipped[error.reason] += 1
            if len(result.errors) < KEEP_ERRORS:
                result.errors.append(error)
    return result


def make_options(on_error: str, options: dict[str, Any]) -> ReadOptions:
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be 'fail' or 'skip', not '{on_error}'")
    known = {f.name for f in dataclasses.fields(ReadOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown read option(s) {unknown} (valid: {', '.join(sorted(known))})")
    return ReadOptions(on_error=on_error, **options)


def read_record(reader: Callable, record: Record, options: ReadOptions, path: Path,
                dropped: Counter) -> list[Conversation]:
    """Run the reader on one record: validate, set source, and give stable ids."""
    if isinstance(record.value, DataError):
        raise record.value
    conversations = reader(record.value, options)
    dropped.update(getattr(conversations, "dropped", {}))
    for number, conversation in enumerate(conversations):
        validate(conversation, require_assistant=options.require_assistant)
        conversation.source = conversation.source or path.name
        if conversation.id is None:
            conversation.id = default_id(path, record.index, number if len(conversations) > 1 else None)
    return list(conversations)


def default_id(path: Path, index: int, number: int | None = None) -> str:
    """The id of a record that has none: ``<file stem>-<record index>`` (0-based, blank
    lines not counted), plus ``-<number>`` for one of several conversations in a record.

    >>> default_id(Path("data/alpaca.jsonl.gz"), 3), default_id(Path("tree.jsonl"), 0, 2)
    ('alpaca-3', 'tree-0-2')
    """
    return f"{file_stem(path)}-{index}" + ("" if number is None else f"-{number}")


def locate(error: DataError, path: Path, record: Record) -> DataError:
    """The same error with the file and line (JSONL) or record index (JSON array) filled in."""
    where = {"line": record.line} if record.line is not None else {"index": record.index}
    return DataError(error.message, file=str(path), field=error.field, hint=error.hint,
                     reason=error.reason, **where)


def file_stem(path: Path) -> str:
    """``data/alpaca.jsonl.gz`` -> ``alpaca``."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _detect(path: Path, head: list[Record]) -> str:
    rows = [record.value for record in head if not isinstance(record.value, DataError)]
    try:
        return detect_format(rows)
    except DataError as error:
        raise DataError(error.message, file=str(path), hint=error.hint, reason=error.reason) from None


# --- reading files ----------------------------------------------------------------------

def iter_records(path: Path) -> Iterator[Record]:
    """Parsed rows of a file; a bad JSONL line yields a ``DataError`` in place of its value."""
    if not path.exists():
        raise DataError("file not found", file=str(path), hint="check the path", reason="file not found")
    text = _read_text(path)
    if ".jsonl" in path.suffixes:
        return _jsonl_records(text, path)
    return _json_records(text, path)


def read_rows(path: str | Path) -> list[dict]:
    """Every parsed row of a JSON/JSONL(.gz) file; the first bad line raises its ``DataError``."""
    rows = []
    for record in iter_records(Path(path)):
        if isinstance(record.value, DataError):
            raise record.value
        rows.append(record.value)
    return rows


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def _jsonl_records(text: str, path: Path) -> Iterator[Record]:
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value = DataError(f"invalid JSON: {exc.msg} at column {exc.colno}", file=str(path), line=number,
                              hint="each line must be one complete JSON object", reason="invalid json")
        yield Record(value, index, number)
        index += 1


def _json_records(text: str, path: Path) -> Iterator[Record]:
    """A JSON array (one record per item) or one object (one record, e.g. a Super-NI task);
    a ``.json`` file holding one object per line is read as JSONL."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON lines under a .json name
            return _jsonl_records(text, path)
        # a broken JSON array cannot be read record by record: this fails even with skip
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(path), line=exc.lineno,
                        hint="fix the JSON syntax (a JSON array of objects, or one object per line)",
                        reason="invalid json") from None
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON array of records, got {type(rows).__name__}", file=str(path),
                        hint="wrap the records in [...] or write one object per line (.jsonl)",
                        reason="wrong type")
    return (Record(row, index) for index, row in enumerate(rows))


# --- writing ----------------------------------------------------------------------------

WRITERS: dict[str, Callable[[Conversation], dict]] = {}
"""name -> ``(Conversation) -> row dict``: canonical (alias jsonl), alpaca, sharegpt, openai."""


def writer(name: str, *aliases: str) -> Callable:
    def add(fn: Callable[[Conversation], dict]) -> Callable[[Conversation], dict]:
        for key in (name, *aliases):
            WRITERS[key] = fn
        return fn

    return add


def write_conversations(conversations: Iterable[Conversation], path: str | Path, format: str = "canonical") -> int:
    """Write ``conversations`` as ``format``; returns the number written.

    ``.json`` (optionally ``.gz``) gets one JSON array, anything else one object per line.
    ``meta`` fields are written as top-level fields, except for canonical (its own ``meta``).
    """
    if format not in WRITERS:
        raise ConfigError(f"unknown output format '{format}' (choose from: {', '.join(WRITERS)})")
    path = Path(path)
    rows = [WRITERS[format](conversation) for conversation in conversations]
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        if ".json" in path.suffixes and ".jsonl" not in path.suffixes:
            json.dump(rows, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)


def _with_meta(conversation: Conversation, row: dict) -> dict:
    """``row`` plus the id and the meta fields that do not collide with the format's own."""
    extra = {key: value for key, value in conversation.meta.items() if key not in row and key != "id"}
    head = {"id": conversation.id} if conversation.id is not None else {}
    return {**head, **row, **extra}


@writer("canonical", "jsonl")
def to_canonical(conversation: Conversation) -> dict:
    return conversation.to_dict()


@writer("alpaca")
def to_alpaca(conversation: Conversation) -> dict:
    """``{"instruction", "input": "", "output", "system"?, "history"?: [[user, assistant], ...]}``;
    the turns before the last exchange become ``history``."""
    messages = conversation.messages
    system = [m.content for m in messages[:1] if m.role == "system"]
    turns = messages[len(system):]
    if len(turns) < 2 or turns[-2].role != "user" or turns[-1].role != "assistant":
        raise DataError("alpaca needs a conversation that ends with a user and an assistant turn",
                        field="messages", hint="write it as sharegpt or openai instead", reason="not alpaca")
    row = {"instruction": turns[-2].content, "input": "", "output": turns[-1].content}
    if system:
        row["system"] = system[0]
    history = [[turns[k].content, turns[k + 1].content] for k in range(0, len(turns) - 2, 2)]
    if history:
        row["history"] = history
    return _with_meta(conversation, row)


SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


@writer("sharegpt")
def to_sharegpt(conversation: Conversation) -> dict:
    """``{"id", "conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``"""
    turns = [{"from": SHAREGPT_FROM[m.role], "value": m.content} for m in conversation.messages]
    return _with_meta(conversation, {"conversations": turns})


@writer("openai")
def to_openai(conversation: Conversation) -> dict:
    """``{"id", "messages": [{"role", "content"}]}`` (the OpenAI chat fine-tuning rows)."""
    return _with_meta(conversation, {"messages": [m.to_dict() for m in conversation.messages]})
