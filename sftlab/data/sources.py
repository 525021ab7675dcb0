"""Where instruction data lives -> one ``DataSource``; its rows -> the rows a reader expects.

A data argument (``data.paths``, ``sftlab data convert INPUT``, a mix source) is one string::

    data/alpaca.json  data/chat.jsonl.gz      JSON / JSON lines, optionally gzipped
    data/alpaca.csv   data/alpaca.tsv         one row per record, a header line of column names
    data/alpaca.parquet                        one row per record
    data/saved/                                a ``datasets`` directory (``save_to_disk``), or a
                                               folder of data files that ``datasets.load_dataset`` reads
    data/train.arrow                           an Arrow file (``datasets``' own), read by ``datasets``
    hf://tatsu-lab/alpaca                      a hub dataset, read by ``datasets.load_dataset``
                                               (with ``split``, ``subset`` and ``revision``)
    alpaca_en_demo                             with ``dataset_info=``: an entry of LLaMA-Factory's
                                               ``dataset_info.json`` (its file name, formatting,
                                               columns, tags, split, subset, folder, num_samples)

A hub id always carries ``hf://``: a local path that does not exist is "file not found",
never a network lookup. ``resolve_source`` turns the string (and the options) into a
``DataSource``; ``sftlab.data.io`` reads it, record by record, through the same readers
(``sftlab.data.formats``) and the same error handling (``on_error``) as a JSON file.

**Column mapping** renames a file's columns to the reader's field names before the reader
sees the row: ``columns={"instruction": "q", "output": "a"}`` reads ``{"q", "a"}`` rows as
alpaca. A dataset_info entry's ``columns`` (LLaMA-Factory's names: ``prompt``, ``query``,
``response``, ``messages``, ...) and ``tags`` (the keys and role names inside ShareGPT
messages) become the same mapping. An error names the file's own column
(``field 'q'``), not the reader's.

Row numbers in errors: JSONL and CSV give the 1-based line of the file (a CSV's header is
line 1, so the first record is line 2); JSON arrays, Parquet files and ``datasets`` give the
0-based record index. A CSV cell is text: an empty cell is an absent field, and the
``conversations``, ``messages`` and ``history`` cells (and ``chosen``/``rejected``/``prompt``/
``completion`` cells that hold a JSON list or object) are parsed as JSON. A null in a
Parquet or ``datasets`` row (how Arrow writes a key a row lacks) is an absent field too.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal

from sftlab.errors import ConfigError, DataError

HUB_PREFIX = "hf://"
INFO_FILE = "dataset_info.json"  # LLaMA-Factory's name for its data-set registry
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".arrow": "datasets"}
Kind = Literal["json", "csv", "parquet", "datasets", "hub"]

# LLaMA-Factory column names -> the reader field they fill, per ``formatting``
COMMON_COLUMNS = {"system": "system", "tools": "tools", "images": "images", "videos": "videos",
                  "audios": "audios", "chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}
LF_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
               **COMMON_COLUMNS},
    "sharegpt": {"messages": "conversations", **COMMON_COLUMNS},
    "openai": {"messages": "messages", **COMMON_COLUMNS},
}
# LLaMA-Factory tag -> (ShareGPT value it stands for, OpenAI value); role/content_tag are keys
LF_TAGS = {"role_tag": ("from", "role"), "content_tag": ("value", "content"),
           "user_tag": ("human", "user"), "assistant_tag": ("gpt", "assistant"),
           "observation_tag": ("observation", "tool"), "function_tag": ("function_call", "function_call"),
           "system_tag": ("system", "system")}
ENTRY_KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name",
              "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"}
MESSAGE_LISTS = {"conversations", "messages"}  # reader fields holding a list of messages
JSON_CELLS = {"conversations", "messages", "history"}  # CSV cells that are always JSON
MAYBE_JSON_CELLS = {"chosen", "rejected", "prompt", "completion"}  # text, or JSON messages


@dataclass
class DataSource:
    """One resolved data source.

    ``location``: the file or directory path, or the hub id (without ``hf://``).
    ``columns``: reader field -> the file's column (applied before the reader).
    ``tags``: ShareGPT message keys and role values, ``{"role_tag": "role", "user_tag": "user"}``
    (LLaMA-Factory's tag names). ``format``: the reader named by a dataset_info entry
    (``None``: detected). ``ranking``: preference pairs, not SFT conversations.
    """

    location: str
    kind: Kind
    format: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False
    split: str | None = None
    subset: str | None = None
    revision: str | None = None
    folder: str | None = None
    num_samples: int | None = None
    name: str | None = None
    """The dataset_info entry this came from."""

    @property
    def label(self) -> str:
        """How errors name the source: the file path, or ``hf://owner/name``."""
        return HUB_PREFIX + self.location if self.kind == "hub" else self.location

    @property
    def path(self) -> Path:
        """The path that names the records (ids ``<stem>-<index>``, ``Conversation.source``)."""
        return Path(self.location)

    def file_field(self, reader_field: str | None) -> str | None:
        """A reader's field name in the file's own names.

        >>> source = DataSource("kto.json", "json", columns={"conversations": "messages"},
        ...                     tags={"role_tag": "role"})
        >>> source.file_field("conversations[2].from"), source.file_field("output")
        ('messages[2].role', 'output')
        """
        match = re.match(r"([A-Za-z_]\w*)(.*)", reader_field or "")
        if not match:
            return reader_field
        head, rest = match.groups()
        if head in MESSAGE_LISTS | {"chosen", "rejected"}:
            for tag in ("role_tag", "content_tag"):
                if tag in self.tags:
                    rest = re.sub(rf"\.({'|'.join(LF_TAGS[tag])})\b", f".{self.tags[tag]}", rest)
        return self.columns.get(head, head) + rest


def resolve_source(spec: str | Path | DataSource, *, dataset_info: str | Path | None = None,
                   columns: dict[str, str] | None = None, split: str | None = None,
                   subset: str | None = None, revision: str | None = None) -> DataSource:
    """The ``DataSource`` a data argument names (see the module docstring for the forms).

    With ``dataset_info`` (a ``dataset_info.json`` or the folder holding one), ``spec`` is
    an entry's name; ``columns``, ``split``, ``subset`` and ``revision`` given here extend
    or override the entry's.

    >>> source = resolve_source("data/q.csv", columns={"instruction": "q"})
    >>> source.kind, source.columns
    ('csv', {'instruction': 'q'})
    >>> resolve_source("hf://tatsu-lab/alpaca", split="train").label
    'hf://tatsu-lab/alpaca'
    """
    if isinstance(spec, DataSource):
        return spec
    if dataset_info is not None:
        source = entry_source(str(spec), dataset_info)
    elif str(spec).startswith(HUB_PREFIX):
        source = DataSource(_hub_id(str(spec)), "hub")
    else:
        source = DataSource(str(spec), path_kind(Path(spec)))
    overrides = {key: value for key, value in
                 (("split", split), ("subset", subset), ("revision", revision)) if value is not None}
    return replace(source, columns={**source.columns, **check_columns_option(columns)}, **overrides)


def not_found(path: Path, hint: str = "check the path") -> DataError:
    """"file not found" for ``path``; a relative path's hint names the folder it was read from
    (a config run from elsewhere than where it was written resolves it there)."""
    if not path.is_absolute():
        hint = f"{hint}; relative paths are read from the current folder, {Path.cwd()}"
    return DataError("file not found", file=str(path), reason="file not found", hint=hint)


def path_kind(path: Path) -> Kind:
    """``json``, ``csv``, ``parquet`` by the suffix (a ``.gz`` looks at the one before), or
    ``datasets`` for a directory. A missing path with no suffix at all may be a hub id
    written without ``hf://``: it is "file not found", with a hint."""
    if path.is_dir():
        return "datasets"
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if not path.exists() and not path.suffix:
        raise not_found(path, "check the path (a hub dataset is written hf://owner/name)")
    return TABLE_SUFFIXES.get(suffixes[-1] if suffixes else "", "json")


def check_columns_option(columns: dict[str, str] | None) -> dict[str, str]:
    """A ``columns`` option: reader field -> file column, both strings."""
    columns = dict(columns or {})
    for key, value in columns.items():
        if not (isinstance(key, str) and isinstance(value, str) and key and value):
            raise ConfigError(f"columns maps a reader field to a file column, both names: got {key!r}: {value!r}")
    files = list(columns.values())
    repeated = sorted({name for name in files if files.count(name) > 1})
    if repeated:
        raise ConfigError(f"columns maps the file column(s) {repeated} to more than one field")
    return columns


def _hub_id(spec: str) -> str:
    repo = spec[len(HUB_PREFIX):].strip("/")
    if not repo:
        raise DataError("no dataset id after hf://", file=spec, hint="write hf://owner/name")
    return repo


# --- LLaMA-Factory's dataset_info.json ----------------------------------------------------

def read_dataset_info(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(file, {name: entry})`` of a ``dataset_info.json``, or of the one in folder ``path``."""
    path = Path(path)
    if path.is_dir():
        path = path / INFO_FILE
    if not path.is_file():
        raise DataError("dataset_info file not found", file=str(path), reason="file not found",
                        hint=f"give LLaMA-Factory's {INFO_FILE} or the folder that holds it")
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not a JSON file ({exc})", file=str(path), reason="invalid json",
                        hint="dataset_info.json is one JSON object: {name: {file_name, ...}}") from None
    if not isinstance(info, dict) or not all(isinstance(entry, dict) for entry in info.values()):
        raise DataError("expected a JSON object of {dataset name: {file_name, formatting, ...}}",
                        file=str(path), reason="wrong type", hint="see LLaMA-Factory's data/README.md")
    return path, info


def entry_source(name: str, dataset_info: str | Path) -> DataSource:
    """The ``DataSource`` of entry ``name``: its ``file_name`` is relative to the info
    file's folder; ``hf_hub_url`` makes it a hub source (``folder`` is its data dir).

    ModelScope / Modelers / script / cloud entries are refused by name: sftlab reads files
    and the Hugging Face hub only. Unknown keys are an error (a typo such as ``colums``
    would otherwise drop the mapping silently).
    """
    info_path, info = read_dataset_info(dataset_info)
    if name not in info:
        close = difflib.get_close_matches(name, list(info), n=1)
        raise DataError(f"no dataset '{name}' in it" + (f"; did you mean '{close[0]}'?" if close else ""),
                        file=str(info_path), field=name, reason="unknown dataset",
                        hint=f"use one of: {', '.join(info) or '(none: the file is empty)'}")
    entry = info[name]

    def fail(message: str, key: str, hint: str) -> DataError:
        return DataError(message, file=str(info_path), field=f"{name}.{key}", hint=hint, reason="bad dataset_info")

    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {unknown}", unknown[0], f"valid keys: {', '.join(sorted(ENTRY_KEYS))}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in LF_COLUMNS:
        raise fail(f"unsupported formatting {formatting!r}", "formatting",
                   f"use one of: {', '.join(LF_COLUMNS)}")
    if "hf_hub_url" in entry:
        location, kind = str(entry["hf_hub_url"]), "hub"
    elif "file_name" in entry:
        location = str(info_path.parent / str(entry["file_name"]))
        kind = path_kind(Path(location))
    else:
        given = [key for key in ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if key in entry]
        raise fail(f"sftlab cannot read {given[0] if given else 'an entry without file_name'}",
                   given[0] if given else "file_name", "give file_name (a local file or folder) or hf_hub_url")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise fail(f"num_samples must be a whole number >= 1, got {num_samples!r}", "num_samples",
                   "give the number of records to sample, or drop the key")
    return DataSource(
        location, kind, format=formatting, columns=_entry_columns(entry, formatting, fail),
        tags=_entry_tags(entry, formatting, fail), ranking=bool(entry.get("ranking", False)),
        split=_optional_str(entry, "split", fail), subset=_optional_str(entry, "subset", fail),
        folder=_optional_str(entry, "folder", fail), num_samples=num_samples, name=name)


def _entry_columns(entry: dict, formatting: str, fail) -> dict[str, str]:
    """LLaMA-Factory ``columns`` -> reader field -> file column (identity pairs left out)."""
    given = entry.get("columns", {})
    if not isinstance(given, dict):
        raise fail("columns must be an object {column name: file column}", "columns", "see data/README.md")
    names = LF_COLUMNS[formatting]
    columns = {}
    for key, column in given.items():
        if key not in names:
            raise fail(f"unknown column {key!r} for formatting {formatting!r}", f"columns.{key}",
                       f"use one of: {', '.join(names)}")
        if column is None:  # LLaMA-Factory: a column set to null is not read
            continue
        if not isinstance(column, str):
            raise fail(f"must name a column, got {column!r}", f"columns.{key}", "give the file's column name")
        if column != names[key]:
            columns[names[key]] = column
    return columns


def _entry_tags(entry: dict, formatting: str, fail) -> dict[str, str]:
    tags = entry.get("tags", {})
    if not isinstance(tags, dict):
        raise fail("tags must be an object {tag: value}", "tags", "see data/README.md")
    if tags and formatting == "alpaca":
        raise fail("tags apply to sharegpt (and openai) formatting only", "tags",
                   'add "formatting": "sharegpt" or drop the tags')
    for key, value in tags.items():
        if key not in LF_TAGS:
            raise fail(f"unknown tag {key!r}", f"tags.{key}", f"use one of: {', '.join(LF_TAGS)}")
        if not isinstance(value, str):
            raise fail(f"must be a string, got {value!r}", f"tags.{key}", "give the key or role name")
    side = 0 if formatting == "sharegpt" else 1
    return {key: value for key, value in tags.items() if value != LF_TAGS[key][side]}


def _optional_str(entry: dict, key: str, fail) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(f"must be a string, got {value!r}", key, f"give the {key} name")
    return value


# --- rows -> the rows a reader expects ------------------------------------------------

def map_row(row: Any, source: DataSource) -> Any:
    """``row`` with the source's columns renamed to reader fields, JSON cells of a CSV
    parsed, and message keys and roles renamed by ``tags``. A mapped column wins over a
    column that already has the reader's name.

    >>> map_row({"q": "2+2?", "a": "4"}, DataSource("x.csv", "csv", columns={"instruction": "q", "output": "a"}))
    {'instruction': '2+2?', 'output': '4'}
    """
    if not isinstance(row, dict):
        return row
    taken = set(source.columns.values())
    out = {key: value for key, value in row.items() if key not in taken and key not in source.columns}
    out.update({name: row[column] for name, column in source.columns.items() if column in row})
    if source.kind == "csv":
        out = {key: _cell(key, value) for key, value in out.items()}
    if source.tags:
        for key in (MESSAGE_LISTS | {"chosen", "rejected"}) & set(out):
            value = out[key]
            out[key] = [_message(item, source) for item in value] if isinstance(value, list) else \
                _message(value, source)
    return out


def _message(item: Any, source: DataSource) -> Any:
    """One message with ``tags`` keys and role names in the reader's terms."""
    if not isinstance(item, dict):
        return item
    side = 1 if source.format == "openai" else 0
    role_key, content_key = (source.tags.get(tag, LF_TAGS[tag][side]) for tag in ("role_tag", "content_tag"))
    roles = {value: LF_TAGS[tag][side] for tag, value in source.tags.items() if tag not in ("role_tag", "content_tag")}
    out = {key: value for key, value in item.items() if key not in (role_key, content_key)}
    if role_key in item:
        role = item[role_key]
        out[LF_TAGS["role_tag"][side]] = roles.get(role, role) if isinstance(role, str) else role
    if content_key in item:
        out[LF_TAGS["content_tag"][side]] = item[content_key]
    return out


def _cell(key: str, value: Any) -> Any:
    """A CSV cell as the reader wants it: JSON for message lists and history."""
    if not isinstance(value, str) or (key not in JSON_CELLS and key not in MAYBE_JSON_CELLS):
        return value
    text = value.strip()
    if key in MAYBE_JSON_CELLS and not text.startswith(("[", "{")):
        return value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        if key in MAYBE_JSON_CELLS:
            return value
        raise DataError(f"invalid JSON in the cell: {exc.msg} at column {exc.colno}", field=key,
                        hint=f"write '{key}' as a JSON list in the cell (CSV-quoted)", reason="invalid json") from None
    if key in MAYBE_JSON_CELLS and not (isinstance(parsed, dict) or
                                        (isinstance(parsed, list) and all(isinstance(x, dict) for x in parsed))):
        return value  # text that happens to be valid JSON, e.g. "[1, 2, 3]"
    return parsed


def check_columns(source: DataSource, available: list[str]) -> None:
    """A table's header lacks a mapped column: one error before any row is read."""
    missing = [(name, column) for name, column in source.columns.items() if column not in available]
    if missing:
        name, column = missing[0]
        raise DataError(f"column '{column}' (read as {name}) is not in the file", file=source.label,
                        field=column, reason="missing column",
                        hint=f"the columns are: {', '.join(available)}; fix the columns mapping")


def sample_rows(rows: list, source: DataSource, seed: int = 0) -> list:
    """A dataset_info entry's ``num_samples``: that many rows, chosen by ``seed``, in file
    order. LLaMA-Factory repeats rows when asked for more than there are; sftlab refuses
    (repeated rows would repeat conversation ids)."""
    if source.num_samples is None:
        return rows
    if source.num_samples > len(rows):
        raise DataError(f"num_samples is {source.num_samples} but there are {len(rows)} records",
                        file=source.label, field=f"{source.name}.num_samples", reason="bad dataset_info",
                        hint=f"ask for at most {len(rows)}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), source.num_samples))
    return [rows[index] for index in keep]


# --- tables: CSV, Parquet, datasets -----------------------------------------------------

def csv_rows(text: str, path: str, delimiter: str = ",") -> tuple[list[str], Iterator[tuple[int, Any]]]:
    """``(header, (line, row dict | DataError) ...)`` of CSV ``text``; ``line`` is the
    1-based line a record starts on (the header is line 1). Empty cells are left out."""
    # StringIO(newline=""): lines end at \n, \r or \r\n only, as csv expects (not at U+2028)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty", file=path, reason="empty file", hint="give a header line and rows")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated or not all(header):
        raise DataError(f"the header has {'repeated' if repeated else 'empty'} column names {repeated or ''}",
                        file=path, line=1, reason="bad header", hint="give every column one unique name")
    return header, _csv_body(reader, header, path)


def _csv_body(reader, header: list[str], path: str) -> Iterator[tuple[int, Any]]:
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, DataError(f"invalid CSV: {exc}", file=path, line=line, reason="invalid csv",
                                  hint="quote cells that hold the delimiter, quotes or line breaks")
            line = reader.line_num + 1
            continue
        if cells:  # a blank line is no record
            if len(cells) != len(header):
                yield line, DataError(f"{len(cells)} cells but the header has {len(header)} columns",
                                      file=path, line=line, reason="wrong cell count",
                                      hint="quote cells that hold the delimiter; give every row every column")
            else:
                yield line, {name: cell for name, cell in zip(header, cells) if cell != ""}
        line = reader.line_num + 1


def parquet_rows(path: Path) -> tuple[list[str], list[dict]]:
    """``(columns, rows)`` of a Parquet file; nulls are absent fields."""
    if not path.exists():
        raise not_found(path)
    import pyarrow.parquet  # lazy: pyarrow comes with `datasets`; only Parquet needs it here

    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"not a readable Parquet file ({exc})", file=str(path), reason="bad parquet",
                        hint="re-write it (pandas.DataFrame.to_parquet, datasets' to_parquet)") from None
    return table.column_names, [drop_nulls(row) for row in table.to_pylist()]


def dataset_rows(source: DataSource) -> tuple[list[str], Iterator[dict]]:
    """``(columns, rows)`` of a ``datasets`` directory or hub id, through ``datasets``
    itself: ``load_from_disk`` for a ``save_to_disk`` directory, else ``load_dataset``
    (a hub id, or a folder of data files) with ``split``, ``subset`` (its ``name``),
    ``revision`` and ``folder`` (its ``data_dir``); an ``.arrow`` file through the ``arrow``
    builder. Without a split: ``train``, or the only one."""
    import datasets  # lazy: heavy, and only these sources need it

    path = Path(source.location)
    try:
        if source.kind == "datasets" and _is_saved(path):
            loaded = datasets.load_from_disk(str(path))
        elif source.kind == "datasets" and path.is_file():  # an .arrow file
            loaded = datasets.load_dataset("arrow", data_files=str(path), split="train")
        else:
            loaded = datasets.load_dataset(source.location, name=source.subset, split=source.split,
                                           revision=source.revision, data_dir=source.folder)
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetsError) as exc:
        offline = " (offline: only cached datasets load)" if datasets.config.HF_HUB_OFFLINE else ""
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot load the dataset{offline}: {why}",
                        file=source.label, reason="cannot load dataset",
                        hint="give a save_to_disk directory, a folder of data files or hf://owner/name, "
                        "and check split, subset and revision") from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded = _pick_split(loaded, source)
    return list(loaded.column_names or []), (drop_nulls(row) for row in loaded)


def _is_saved(path: Path) -> bool:
    """``save_to_disk`` writes ``state.json`` (a Dataset) or ``dataset_dict.json``."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _pick_split(splits, source: DataSource):
    if source.split is not None:
        if source.split not in splits:
            raise DataError(f"no split '{source.split}'", file=source.label, reason="unknown split",
                            hint=f"use one of: {', '.join(splits)}")
        return splits[source.split]
    if "train" in splits or len(splits) == 1:
        return splits["train" if "train" in splits else next(iter(splits))]
    raise DataError(f"several splits ({', '.join(splits)}) and none chosen", file=source.label,
                    reason="unknown split", hint="choose one with split (data.split, --split)")


def drop_nulls(value: Any) -> Any:
    """Arrow rows with their null fields left out, at every depth (Arrow gives every row
    every key; a null means the row had none).

    >>> drop_nulls({"a": 1, "b": None, "c": [{"d": None, "e": 2}]})
    {'a': 1, 'c': [{'e': 2}]}
    """
    if isinstance(value, dict):
        return {key: drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value
