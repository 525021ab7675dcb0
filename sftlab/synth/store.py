"""Append-only JSONL output with stable ids: a pipeline resumes after an interruption
without duplicating or losing a record.

On open, a torn last line (the process died mid-write) is cut off; every complete line's
id is remembered, and ``write`` ignores ids already present. Each line is flushed and
fsynced before ``write`` returns.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


def stable_id(*parts: Any) -> str:
    """A short id determined by what produced the record: ``stable_id("self-instruct", 3, "text")``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RecordStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self._load()
        self.ids = {record["id"] for record in self.records}
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # torn last line from an interrupted write
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                self.records.append(json.loads(line))

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def write(self, record: dict[str, Any]) -> bool:
        """Append ``record`` (must have an ``id``); False if that id is already stored."""
        if record["id"] in self.ids:
            return False
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        self.ids.add(record["id"])
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
