"""Read instruction-data files into conversations, and write them back in any format.

    result = read_conversations("alpaca_en_demo.json")           # format auto-detected
    result.conversations   # list[Conversation], ids kept or "<file stem>-<index>"
    result.skipped         # Counter: reason -> bad records dropped (on_error="skip")
    write_conversations(result.conversations, "out.jsonl", "canonical")

Files: ``.json`` (a JSON array, or one object; a file of one object per line is read as JSONL),
``.jsonl``, and either gzipped (``.json.gz``, ``.jsonl.gz``). An error in a JSONL file names
the 1-based line; in a JSON array, the record index (0-based).

Every other place data lives goes through ``sftlab.data.sources`` and then the same readers
and error handling: CSV/TSV (errors name the 1-based line, the header being line 1) and
Parquet files, ``datasets`` directories, ``hf://owner/name`` hub ids, entries of
LLaMA-Factory's ``dataset_info.json``, and a ``columns`` mapping for any of them::

    read_conversations("qa.parquet", columns={"instruction": "question", "output": "answer"})
    read_conversations("alpaca_en_demo", dataset_info="data/dataset_info.json")
    read_conversations("hf://tatsu-lab/alpaca", split="train", revision="main")
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from sftlab.errors import ConfigError, DataError
from sftlab.data.formats import FORMATS, ReadOptions, detect_format, validate
from sftlab.data.sources import (DataSource, check_columns, csv_rows, dataset_rows, map_row, not_found,
                                 parquet_rows, resolve_source, sample_rows)
from sftlab.data.tools import format_hermes_calls, join_reasoning
from sftlab.types import Conversation

DETECT_ROWS = 8  # rows looked at to detect the format
KEEP_ERRORS = 20  # errors kept in ReadResult.errors (all are counted)
# json's C decoder recurses once per level; 20 000 levels fit the default 8 MB stack
MAX_JSON_DEPTH = 20_000
LINE_END = re.compile(r"\r\n|\r|\n")


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


def read_conversations(path: str | Path | DataSource, format: str | None = None, on_error: str = "fail", *,
                       columns: dict[str, str] | None = None, dataset_info: str | Path | None = None,
                       split: str | None = None, subset: str | None = None, revision: str | None = None,
                       **options: Any) -> ReadResult:
    """Read a data source into conversations; ``options`` are ``ReadOptions`` fields.

    ``path``: a file, a ``datasets`` directory, ``hf://owner/name``, or with ``dataset_info``
    an entry's name; ``columns``, ``split``, ``subset``, ``revision``: see
    ``sftlab.data.sources.resolve_source``. ``on_error="fail"`` raises the first bad
    record's ``DataError`` (file, line, field, fix); ``"skip"`` drops bad records and counts
    them per reason in ``.skipped``.
    """
    source = resolve_source(path, dataset_info=dataset_info, columns=columns, split=split, subset=subset,
                            revision=revision)
    if source.ranking:
        raise ConfigError(f"'{source.name}' is a ranking (preference) data set, not SFT conversations: "
                          "train it with a preference objective (sftlab.data.preference reads its rows)")
    read_options = make_options(on_error, options)
    records = iter_records(source)
    head = list(itertools.islice(records, DETECT_ROWS))
    if format is None and head and all(_preference_row(r.value) for r in head):
        raise DataError("the rows are preference pairs (chosen/rejected), not SFT conversations",
                        file=source.label, hint="train them with a preference objective: objective=dpo "
                        "(examples/dpo.yaml) or objective=reward", reason="preference pairs")
    undesirable = sum(_unpaired_tag(r.value) is False for r in head)
    if format is None and source.format is None and undesirable and all(_unpaired_tag(r.value) is not None for r in head):
        raise DataError(f"the rows are KTO's unpaired examples: {undesirable} of the first {len(head)} "
                        "are marked undesirable (label/kto_tag false), which SFT would train on",
                        file=source.label, reason="unpaired examples",
                        hint="train them with objective=kto (examples/kto.yaml); to read them as plain "
                        "conversations, undesirable answers included, give the format (data.format / --format)")
    format = format or source.format or _detect(source.label, head)
    reader = FORMATS.get(format)
    result = ReadResult([], format)
    seen: dict[str, str] = {}  # conversation id -> where it first appeared
    for record in itertools.chain(head, records):
        result.records += 1
        try:
            conversations = read_record(reader, record, read_options, source.path, result.dropped)
            check_unique_ids(conversations, record, seen)
            result.conversations += conversations
        except DataError as error:
            if not isinstance(record.value, DataError):  # the reader's field names -> the file's
                error = DataError(error.message, field=source.file_field(error.field), hint=error.hint,
                                  reason=error.reason)
            error = locate(error, source.label, record)
            if read_options.on_error == "fail":
                raise error from None
            result.skipped[error.reason] += 1
            if len(result.errors) < KEEP_ERRORS:
                result.errors.append(error)
    if not result.records:
        raise DataError("the file holds no records", file=source.label, hint="give at least one record",
                        reason="no records")
    return result


def check_unique_ids(conversations: list[Conversation], record: Record, first: dict[str, str]) -> None:
    """Raise on a conversation id seen before (ids key resumption, dedup and eval matching);
    ``first`` maps each id seen so far to where it was."""
    where = f"line {record.line}" if record.line is not None else f"record {record.index}"
    for conversation in conversations:
        key = str(conversation.id)
        if key in first:
            raise DataError(f"duplicate id '{key}' (first at {first[key]})", field="id",
                            hint="give every record its own id", reason="duplicate id")
    for conversation in conversations:
        first[str(conversation.id)] = where


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


def parse_records(path: str | Path, parse: Callable[[Any], Any], on_error: str = "fail") -> tuple[list, Counter]:
    """``parse(row)`` of every record of a JSON/JSONL file, and the reasons of those left
    out: a ``DataError`` from ``parse`` stops the read, named with the file and line
    (``locate``), or with ``on_error="skip"`` is counted as ``bad record: <reason>``."""
    path = Path(path)
    parsed, skipped = [], Counter()
    for record in read_objects(path):
        try:
            parsed.append(parse(record.value))
        except DataError as error:
            if on_error != "skip":
                raise locate(error, path, record) from None
            skipped[f"bad record: {error.reason}"] += 1
    return parsed, skipped


def locate(error: DataError, path: Path | str, record: Record) -> DataError:
    """The same error with the file and line (JSONL) or record index (JSON array) filled in."""
    where = {"line": record.line} if record.line is not None else {"index": record.index}
    return DataError(error.message, file=str(path), field=error.field, hint=error.hint,
                     reason=error.reason, **where)


def file_stem(path: Path) -> str:
    """``data/alpaca.jsonl.gz`` -> ``alpaca``."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow"):
        name = name.removesuffix(suffix)
    return name


def _detect(path: Path | str, head: list[Record]) -> str:
    rows = [record.value for record in head if not isinstance(record.value, DataError)]
    if not rows and head:  # not one readable row to go by: the first row's own error says why
        raise head[0].value
    try:
        return detect_format(rows)
    except DataError as error:
        raise DataError(error.message, file=str(path), hint=error.hint, reason=error.reason) from None


# --- reading files ----------------------------------------------------------------------

def iter_records(path: str | Path | DataSource) -> Iterator[Record]:
    """Parsed rows of a data source, columns mapped (``sftlab.data.sources``); a bad JSONL
    line or CSV row yields a ``DataError`` in place of its value. A bare path reads files
    (JSON, CSV, Parquet, Arrow); ``datasets`` directories and hub ids need a ``DataSource``.

    A UTF-8 byte-order mark is ignored and CRLF line ends are fine; bytes that are not
    UTF-8, a broken ``.gz``, a missing or empty file, or a mapped column that a table lacks
    raise a ``DataError``.
    """
    source = path if isinstance(path, DataSource) else resolve_source(path)
    if not isinstance(path, DataSource) and (source.kind == "hub" or source.path.is_dir()):
        # a bare path: directories and hub ids are data sets only where read_conversations
        # (or a caller's own DataSource) says so; elsewhere a directory stays an error
        return _json_file_records(Path(path))
    records = _json_file_records(source.path) if source.kind == "json" else _table_records(source)
    if source.num_samples is not None:
        records = iter(sample_rows(list(records), source))
    if source.columns or source.tags or source.kind == "csv":
        records = _mapped(records, source)
    return records


def _json_file_records(path: Path) -> Iterator[Record]:
    text = read_text(path)
    if not text.strip():
        raise DataError("the file is empty", file=str(path), hint="give a file with at least one record",
                        reason="empty file")
    if ".jsonl" in path.suffixes:
        return _jsonl_records(text, path)
    return _json_records(text, path)


def _table_records(source: DataSource) -> Iterator[Record]:
    """CSV/TSV (records know their line), Parquet and ``datasets`` rows (their index)."""
    if source.kind == "csv":
        text = read_text(source.path)
        if not text.strip():
            raise DataError("the file is empty", file=source.label, hint="give a header line and rows",
                            reason="empty file")
        delimiter = "\t" if ".tsv" in source.path.suffixes else ","
        header, rows = csv_rows(text, source.label, delimiter)
        check_columns(source, header)
        return (Record(value, index, line) for index, (line, value) in enumerate(rows))
    columns, values = parquet_rows(source.path) if source.kind == "parquet" else dataset_rows(source)
    check_columns(source, columns)
    return (Record(value, index) for index, value in enumerate(values))


def _mapped(records: Iterator[Record], source: DataSource) -> Iterator[Record]:
    """``records`` as the reader wants them; a row that cannot be mapped (a CSV cell of bad
    JSON) becomes its ``DataError``, in the file's column names."""
    for record in records:
        if isinstance(record.value, DataError):
            yield record
            continue
        try:
            yield Record(map_row(record.value, source), record.index, record.line)
        except DataError as error:
            error = DataError(error.message, field=source.file_field(error.field), hint=error.hint,
                              reason=error.reason)
            yield Record(locate(error, source.label, record), record.index, record.line)


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a JSON/JSONL(.gz) file, each a JSON object; the first bad line raises."""
    return [record.value for record in read_objects(Path(path))]


def read_objects(path: Path) -> list[Record]:
    """Every record of a JSON/JSONL(.gz) file, each a JSON object; the first bad one raises
    its ``DataError`` (file and line or record index)."""
    records = []
    for record in iter_records(path):
        if isinstance(record.value, DataError):
            raise record.value
        if not isinstance(record.value, dict):
            raise record_error(record, path, f"expected a JSON object, got {type(record.value).__name__}",
                               hint="each row must be one {...} object")
        records.append(record)
    if not records:
        raise DataError("the file holds no records", file=str(path), hint="give at least one row")
    return records


def at_row(error: DataError, path: Path, records: list[Record]) -> DataError:
    """``error``, raised on row ``error.index`` of ``records`` (read from ``path``), with
    that row's file line (JSONL) or record index filled in."""
    if error.file is not None:  # already names its file (a template file, say)
        return error
    if error.index is not None and 0 <= error.index < len(records):
        return locate(error, path, records[error.index])
    return DataError(error.message, file=str(path), field=error.field, hint=error.hint, reason=error.reason)


def record_error(record: Record, path: Path, message: str, *, field: str | None = None,
                 hint: str | None = None, reason: str | None = None) -> DataError:
    """A ``DataError`` at ``record``: its file line (JSONL) or record index (JSON array)."""
    return locate(DataError(message, field=field, hint=hint, reason=reason), path, record)


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (optionally gzipped; a leading byte-order mark is dropped)."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory, not a file", file=str(path), hint="give a file inside it",
                        reason="directory")
    if not path.exists():
        raise not_found(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"not a readable gzip file ({exc})", file=str(path),
                        hint="re-download or re-compress it, or drop the .gz suffix", reason="bad gzip") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte {exc.start}", file=str(path),
                        line=line, hint="re-encode the file as UTF-8", reason="not utf-8") from None


def _jsonl_records(text: str, path: Path) -> Iterator[Record]:
    index = 0
    # not str.splitlines: U+2028 and friends may sit raw inside a JSON string; a raw \r may not
    for number, line in enumerate(LINE_END.split(text), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except json.JSONDecodeError as exc:
            value = DataError(f"invalid JSON: {exc.msg} at column {exc.colno}", file=str(path), line=number,
                              hint="each line must be one complete JSON object", reason="invalid json")
        except RecursionError:
            value = DataError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", file=str(path), line=number,
                              hint="flatten the record", reason="too deep")
        yield Record(value, index, number)
        index += 1


def parse_json(text: str) -> Any:
    """``json.loads`` that reads nesting up to about ``MAX_JSON_DEPTH`` levels (an Open
    Assistant tree thousands of messages deep) and raises ``RecursionError`` past it."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, MAX_JSON_DEPTH))
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(limit)


def _json_records(text: str, path: Path) -> Iterator[Record]:
    """A JSON array (one record per item) or one object (one record, e.g. a Super-NI task);
    a ``.json`` file holding one object per line is read as JSONL."""
    try:
        rows = parse_json(text)
    except RecursionError:
        raise DataError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", file=str(path),
                        hint="flatten the records", reason="too deep") from None
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

    ``.json`` (optionally ``.gz``) gets one JSON array, anything else one object per line;
    ``-`` writes JSON lines to standard output. ``meta`` fields are written as top-level
    fields, except for canonical (its own ``meta``).
    """
    if format not in WRITERS:
        raise ConfigError(f"unknown output format '{format}' (choose from: {', '.join(WRITERS)})")
    rows = [_write_row(WRITERS[format], conversation) for conversation in conversations]
    if str(path) == "-":
        sys.stdout.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        sys.stdout.flush()
        return len(rows)
    path = Path(path)
    with open_output(path) as handle:
        if ".json" in path.suffixes and ".jsonl" not in path.suffixes:
            json.dump(rows, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)


def _preference_row(value: Any) -> bool:
    """A preference pair with no SFT conversation of its own (TRL's prompt/chosen/rejected,
    LLaMA-Factory's ranking rows, whose ``conversations`` end on the user's turn); rows that
    also carry ``messages`` (UltraFeedback-style) read as the SFT conversation they hold."""
    return isinstance(value, dict) and {"chosen", "rejected"} <= value.keys() and "messages" not in value


def _unpaired_tag(value: Any) -> bool | None:
    """A KTO row's desirability (TRL's ``label``, LLaMA-Factory's ``kto_tag``: a boolean beside
    the conversation); None for a row without one."""
    if not isinstance(value, dict):
        return None
    tag = value.get("label", value.get("kto_tag"))
    return tag if isinstance(tag, bool) else None


def _write_row(write: Callable[[Conversation], dict], conversation: Conversation) -> dict:
    """``write(conversation)``; a conversation the format cannot hold raises a ``DataError``
    naming its source file and id (the record to fix or leave out)."""
    try:
        return write(conversation)
    except DataError as error:
        if error.file is None:
            error.file = conversation.source
            error.message = f"conversation {conversation.id!r}: {error.message}"
        raise


def open_output(path: Path) -> IO[str]:
    """``path`` opened for writing UTF-8 text (gzipped for ``.gz``), its folder created; a
    path that is a directory or cannot be created raises a ``DataError`` naming it."""
    if path.is_dir():
        raise DataError("the output is a directory", file=str(path), hint="give a file name inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else \
            open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot create the output file ({exc.strerror or exc})", file=str(path),
                        hint="check that its folder can be created and written") from None


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
    if conversation.tools or any(m.tool_calls or m.role == "tool" or m.reasoning is not None for m in messages):
        raise DataError("alpaca cannot hold tools, tool calls or reasoning", field="messages",
                        hint="write it as sharegpt, openai or jsonl instead", reason="not alpaca")
    _refuse_context_turns(conversation, "alpaca")
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


def _refuse_context_turns(conversation: Conversation, format: str) -> None:
    """A weight-0 assistant turn (context, never trained) has no place in ``format``: written
    without its weight it would be trained when read back."""
    if any(m.role == "assistant" and m.weight == 0 for m in conversation.messages):
        raise DataError(f"{format} cannot hold loss weights (a weight-0 assistant turn would be "
                        f"trained when read back)", field="messages",
                        hint="write it as openai or jsonl instead", reason=f"not {format}")


SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


@writer("sharegpt")
def to_sharegpt(conversation: Conversation) -> dict:
    """``{"id", "conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation",
    "value": ...}], "tools"?: "<JSON list of functions>"}`` (LLaMA-Factory's tool layout).

    An assistant turn that only calls tools is a ``function_call`` turn (the JSON of one
    ``{"name", "arguments"}``, or a list of several); one that also has text writes the text
    then its calls as ``<tool_call>`` blocks (read back by ``parse_hermes_tool_calls``).
    Reasoning is written as a leading ``<think>`` block. Call ids and tool names are not
    kept (the format has no place for them).
    """
    _refuse_context_turns(conversation, "sharegpt")
    turns = [_sharegpt_turn(m) for m in conversation.messages]
    row: dict = {"conversations": turns}
    if conversation.tools:
        row["tools"] = json.dumps([tool.get("function", tool) for tool in conversation.tools], ensure_ascii=False)
    return _with_meta(conversation, row)


def _sharegpt_turn(message) -> dict:
    if message.tool_calls and not message.content and message.reasoning is None:
        calls = [{"name": call.name, "arguments": call.arguments} for call in message.tool_calls]
        return {"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls,
                                                             ensure_ascii=False)}
    value = message.content
    if message.tool_calls:
        value = f"{value}\n{format_hermes_calls(message.tool_calls)}" if value else format_hermes_calls(message.tool_calls)
    return {"from": SHAREGPT_FROM[message.role], "value": join_reasoning(message.reasoning, value)}


@writer("openai")
def to_openai(conversation: Conversation) -> dict:
    """``{"id", "messages": [{"role", "content", ...}], "tools"?}`` (the OpenAI chat fine-tuning
    rows; ``tool_calls`` with arguments as JSON strings, as OpenAI's format has them,
    ``reasoning_content``, ``tool_call_id``)."""
    row: dict = {"messages": [_openai_message(m) for m in conversation.messages]}
    if conversation.tools:
        row["tools"] = conversation.tools
    return _with_meta(conversation, row)


def _openai_message(message) -> dict:
    row = message.to_dict()
    for call in row.get("tool_calls", ()):
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"], ensure_ascii=False)
    return row
