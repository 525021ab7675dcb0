"""Errors that tell the user what went wrong, where, and what to do."""
from __future__ import annotations


class SftlabError(Exception):
    """Base class: a failure the user can fix. The CLI prints it in one line, no traceback."""


class ConfigError(SftlabError, ValueError):
    """A configuration key or value is wrong."""


class DataError(SftlabError, ValueError):
    """A record is malformed. Names the file, line (1-based) or record index, and field.

    >>> str(DataError("missing field", file="a.jsonl", line=3, field="output",
    ...               hint="add an 'output' string"))
    "a.jsonl:3: field 'output': missing field (fix: add an 'output' string)"
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.message, self.file, self.line, self.index = message, file, line, index
        self.field, self.hint = field, hint
        # a short stable key used to count skipped records per reason
        self.reason = reason or message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        elif self.index is not None:
            where += f"[record {self.index}]"
        text = f"{where}: "
        if self.field:
            text += f"field '{self.field}': "
        text += self.message
        if self.hint:
            text += f" (fix: {self.hint})"
        return text
